// Command gometa reads and writes snapshot metadata with containerd's own
// snapshots/storage MetaStore, the store of the Go overlaybd snapshotter.
//
//	gometa write DB SPEC   apply the operations of SPEC (JSON) in one transaction;
//	                       prints {"ids": {key: id}} of the snapshots that exist after
//	gometa dump DB         prints every snapshot (id, kind, parent, labels, times, usage),
//	                       the ID sequence and the parents index as JSON
//	gometa check DB        bbolt's consistency check; exit 1 on any error
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/storage"
	bolt "go.etcd.io/bbolt"
)

type operation struct {
	Op     string            `json:"op"` // prepare, view, commit, remove, update
	Key    string            `json:"key"`
	Parent string            `json:"parent"`
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
	Paths  []string          `json:"paths"`
	Size   int64             `json:"size"`
	Inodes int64             `json:"inodes"`
}

type spec struct {
	Ops []operation `json:"ops"`
}

type snapshot struct {
	ID      string            `json:"id"`
	Kind    string            `json:"kind"`
	Parent  string            `json:"parent"`
	Labels  map[string]string `json:"labels"`
	Created string            `json:"created"`
	Updated string            `json:"updated"`
	Size    int64             `json:"size"`
	Inodes  int64             `json:"inodes"`
}

type parentLink struct {
	Parent uint64 `json:"parent"`
	Child  uint64 `json:"child"`
	Key    string `json:"key"`
}

type dump struct {
	Snapshots map[string]snapshot `json:"snapshots"`
	Sequence  uint64              `json:"sequence"`
	Parents   []parentLink        `json:"parents"`
}

func main() {
	if len(os.Args) < 3 {
		fail(fmt.Errorf("usage: gometa write DB SPEC | dump DB | check DB"))
	}
	var err error
	switch os.Args[1] {
	case "write":
		if len(os.Args) != 4 {
			fail(fmt.Errorf("usage: gometa write DB SPEC"))
		}
		err = write(os.Args[2], os.Args[3])
	case "dump":
		err = dumpDB(os.Args[2])
	case "check":
		err = check(os.Args[2])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gometa:", err)
	os.Exit(1)
}

func write(db, specPath string) error {
	data, err := os.ReadFile(specPath)
	if err != nil {
		return err
	}
	var s spec
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	ms, err := storage.NewMetaStore(db)
	if err != nil {
		return err
	}
	defer ms.Close()
	ctx, t, err := ms.TransactionContext(context.Background(), true)
	if err != nil {
		return err
	}
	for i, op := range s.Ops {
		if err := apply(ctx, op); err != nil {
			t.Rollback()
			return fmt.Errorf("operation %d (%s %q): %w", i, op.Op, op.Key, err)
		}
	}
	if err := t.Commit(); err != nil {
		return err
	}
	ids := map[string]string{}
	ctx, t, err = ms.TransactionContext(context.Background(), false)
	if err != nil {
		return err
	}
	defer t.Rollback()
	err = storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
		id, _, _, err := storage.GetInfo(ctx, info.Name)
		ids[info.Name] = id
		return err
	})
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]interface{}{"ids": ids})
}

func apply(ctx context.Context, op operation) error {
	switch op.Op {
	case "prepare", "view":
		kind := snapshots.KindActive
		if op.Op == "view" {
			kind = snapshots.KindView
		}
		_, err := storage.CreateSnapshot(ctx, kind, op.Key, op.Parent, snapshots.WithLabels(op.Labels))
		return err
	case "commit":
		usage := snapshots.Usage{Size: op.Size, Inodes: op.Inodes}
		_, err := storage.CommitActive(ctx, op.Key, op.Name, usage, snapshots.WithLabels(op.Labels))
		return err
	case "remove":
		_, _, err := storage.Remove(ctx, op.Key)
		return err
	case "update":
		_, err := storage.UpdateInfo(ctx, snapshots.Info{Name: op.Key, Labels: op.Labels}, op.Paths...)
		return err
	case "mounts":
		_, err := storage.GetSnapshot(ctx, op.Key)
		return err
	}
	return fmt.Errorf("unknown operation %q", op.Op)
}

func dumpDB(db string) error {
	out := dump{Snapshots: map[string]snapshot{}, Parents: []parentLink{}}
	ms, err := storage.NewMetaStore(db)
	if err != nil {
		return err
	}
	ctx, t, err := ms.TransactionContext(context.Background(), false)
	if err != nil {
		return err
	}
	err = storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
		id, _, usage, err := storage.GetInfo(ctx, info.Name)
		if err != nil {
			return err
		}
		if info.Kind == snapshots.KindActive || info.Kind == snapshots.KindView {
			if _, err := storage.GetSnapshot(ctx, info.Name); err != nil {
				return fmt.Errorf("GetSnapshot %q: %w", info.Name, err)
			}
		}
		labels := info.Labels
		if labels == nil {
			labels = map[string]string{}
		}
		out.Snapshots[info.Name] = snapshot{
			ID:      id,
			Kind:    info.Kind.String(),
			Parent:  info.Parent,
			Labels:  labels,
			Created: info.Created.UTC().Format(time.RFC3339Nano),
			Updated: info.Updated.UTC().Format(time.RFC3339Nano),
			Size:    usage.Size,
			Inodes:  usage.Inodes,
		}
		return nil
	})
	t.Rollback()
	ms.Close()
	if err != nil {
		return err
	}
	bdb, err := bolt.Open(db, 0600, &bolt.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer bdb.Close()
	err = bdb.View(func(tx *bolt.Tx) error {
		v1 := tx.Bucket([]byte("v1"))
		if v1 == nil {
			return nil
		}
		if b := v1.Bucket([]byte("snapshots")); b != nil {
			out.Sequence = b.Sequence()
		}
		if p := v1.Bucket([]byte("parents")); p != nil {
			return p.ForEach(func(k, v []byte) error {
				parent, n := binary.Uvarint(k)
				child, _ := binary.Uvarint(k[n+1:])
				out.Parents = append(out.Parents, parentLink{parent, child, string(v)})
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(out.Parents, func(i, j int) bool {
		a, b := out.Parents[i], out.Parents[j]
		return a.Parent < b.Parent || (a.Parent == b.Parent && a.Child < b.Child)
	})
	return json.NewEncoder(os.Stdout).Encode(out)
}

func check(db string) error {
	bdb, err := bolt.Open(db, 0600, &bolt.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer bdb.Close()
	failed := 0
	err = bdb.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			fmt.Fprintln(os.Stderr, "check:", err)
			failed++
		}
		return nil
	})
	if err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d errors", failed)
	}
	fmt.Println("ok")
	return nil
}
