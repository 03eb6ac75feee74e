// gobolt writes, dumps and checks bbolt files with go.etcd.io/bbolt itself,
// the oracle for obdsnap's pure-Python bbolt reader and writer.
//
//	gobolt write SPEC.json DB [--page-size N] [--fill F] [--churn N]
//	gobolt dump DB
//	gobolt check DB
//
// A tree is JSON: {"sequence": N, "values": {"<hex key>": "<hex value>"},
// "buckets": {"<hex key>": {...}}}; the top level is the root bucket.
// write puts each top-level bucket in a transaction of its own; --churn adds N
// transactions that create and delete a scratch bucket, leaving free pages.
package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

type tree struct {
	Sequence uint64            `json:"sequence"`
	Values   map[string]string `json:"values"`
	Buckets  map[string]*tree  `json:"buckets"`
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: gobolt write SPEC DB [--page-size N] [--fill F] [--churn N] | dump DB | check DB")
	}
	var err error
	switch os.Args[1] {
	case "write":
		err = write(os.Args[2], os.Args[3], os.Args[4:])
	case "dump":
		err = dump(os.Args[2])
	case "check":
		err = check(os.Args[2])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err.Error())
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "gobolt:", message)
	os.Exit(2)
}

func write(specPath, dbPath string, flags []string) error {
	pageSize, fill, churn := 0, bolt.DefaultFillPercent, 0
	for i := 0; i+1 < len(flags); i += 2 {
		var err error
		switch flags[i] {
		case "--page-size":
			pageSize, err = strconv.Atoi(flags[i+1])
		case "--fill":
			fill, err = strconv.ParseFloat(flags[i+1], 64)
		case "--churn":
			churn, err = strconv.Atoi(flags[i+1])
		default:
			err = fmt.Errorf("unknown flag %q", flags[i])
		}
		if err != nil {
			return err
		}
	}
	raw, err := os.ReadFile(specPath)
	if err != nil {
		return err
	}
	var root tree
	if err := json.Unmarshal(raw, &root); err != nil {
		return err
	}
	db, err := bolt.Open(dbPath, 0o600, &bolt.Options{PageSize: pageSize})
	if err != nil {
		return err
	}
	defer db.Close()
	for name, spec := range root.Buckets {
		err := db.Update(func(tx *bolt.Tx) error {
			key, err := hex.DecodeString(name)
			if err != nil {
				return err
			}
			b, err := tx.CreateBucket(key)
			if err != nil {
				return err
			}
			return fillBucket(b, spec, fill)
		})
		if err != nil {
			return err
		}
	}
	for i := 0; i < churn; i++ {
		err := db.Update(func(tx *bolt.Tx) error {
			scratch := []byte("\xffgobolt-scratch")
			if tx.Bucket(scratch) != nil {
				return tx.DeleteBucket(scratch)
			}
			b, err := tx.CreateBucket(scratch)
			if err != nil {
				return err
			}
			for j := 0; j < 200; j++ {
				if err := b.Put([]byte(fmt.Sprintf("k%06d", j)), make([]byte, 100)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func fillBucket(b *bolt.Bucket, spec *tree, fill float64) error {
	b.FillPercent = fill
	if err := b.SetSequence(spec.Sequence); err != nil {
		return err
	}
	for k, v := range spec.Values {
		key, err := hex.DecodeString(k)
		if err != nil {
			return err
		}
		value, err := hex.DecodeString(v)
		if err != nil {
			return err
		}
		if err := b.Put(key, value); err != nil {
			return err
		}
	}
	for name, child := range spec.Buckets {
		key, err := hex.DecodeString(name)
		if err != nil {
			return err
		}
		sub, err := b.CreateBucket(key)
		if err != nil {
			return err
		}
		if err := fillBucket(sub, child, fill); err != nil {
			return err
		}
	}
	return nil
}

func dump(dbPath string) error {
	db, err := bolt.Open(dbPath, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer db.Close()
	root := &tree{Values: map[string]string{}, Buckets: map[string]*tree{}}
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			child, err := dumpBucket(b)
			root.Buckets[hex.EncodeToString(name)] = child
			return err
		})
	})
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(root)
}

func dumpBucket(b *bolt.Bucket) (*tree, error) {
	t := &tree{Sequence: b.Sequence(), Values: map[string]string{}, Buckets: map[string]*tree{}}
	err := b.ForEach(func(k, v []byte) error {
		if v != nil {
			t.Values[hex.EncodeToString(k)] = hex.EncodeToString(v)
			return nil
		}
		child, err := dumpBucket(b.Bucket(k))
		t.Buckets[hex.EncodeToString(k)] = child
		return err
	})
	return t, err
}

func check(dbPath string) error {
	db, err := bolt.Open(dbPath, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer db.Close()
	failed := false
	err = db.View(func(tx *bolt.Tx) error {
		for problem := range tx.Check() {
			failed = true
			fmt.Println(problem)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if failed {
		os.Exit(1)
	}
	return nil
}
