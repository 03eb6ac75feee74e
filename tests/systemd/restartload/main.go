// Command restartload calls a snapshotter without pause, as containerd would,
// and reports every call that failed.
//
// N clients call Prepare, Stat and Remove in a loop through containerd's own
// proxy client (snapshots/proxy), dialled with the options containerd 1.6
// uses for a proxy plugin (services/server/server.go, proxyClients.getClient).
// It runs until SIGINT/SIGTERM (or -duration), lets every client finish the
// call it is in, and prints a JSON report on stdout.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/defaults"
	"github.com/containerd/containerd/pkg/dialer"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// bucketMs is the width of a timeline bucket.
const bucketMs = 250

type failure struct {
	Kind   string `json:"kind"`
	Key    string `json:"key"`
	Error  string `json:"error"`
	AtMs   int64  `json:"at_unix_ms"`
	TookMs int64  `json:"took_ms"`
}

type report struct {
	Clients       int              `json:"clients"`
	Connections   int              `json:"connections"`
	Calls         map[string]int64 `json:"calls"`
	Total         int64            `json:"total"`
	Failures      []failure        `json:"failures"`
	LongestCallMs float64          `json:"longest_call_ms"`
	LongestCall   string           `json:"longest_call"`
	// Timeline: calls that succeeded, by bucketMs-wide bucket of unix milliseconds.
	Timeline    map[int64]int64 `json:"timeline"`
	BucketMs    int64           `json:"bucket_ms"`
	StartedAtMs int64           `json:"started_at_unix_ms"`
	EndedAtMs   int64           `json:"ended_at_unix_ms"`
}

type recorder struct {
	mu     sync.Mutex
	report report
}

func (r *recorder) record(kind, key string, started time.Time, err error) {
	took := time.Since(started)
	now := time.Now().UnixMilli()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.report.Calls[kind]++
	r.report.Total++
	if err != nil {
		r.report.Failures = append(r.report.Failures, failure{kind, key, err.Error(), now, took.Milliseconds()})
		return
	}
	r.report.Timeline[now/bucketMs]++
	if ms := float64(took.Microseconds()) / 1000; ms > r.report.LongestCallMs {
		r.report.LongestCallMs = ms
		r.report.LongestCall = fmt.Sprintf("%s %s", kind, key)
	}
}

// dialLikeContainerd connects the way containerd 1.6 connects to a proxy plugin.
func dialLikeContainerd(address string) (*grpc.ClientConn, error) {
	backoffConfig := backoff.DefaultConfig
	backoffConfig.MaxDelay = 3 * time.Second
	options := []grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoffConfig}),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize)),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)),
	}
	return grpc.Dial(dialer.DialAddress(address), options...)
}

// client runs Prepare, Stat, Remove on keys of its own until stop is closed.
func client(id int, sn snapshots.Snapshotter, rec *recorder, callTimeout time.Duration, stop <-chan struct{}) {
	call := func(kind, key string, do func(ctx context.Context) error) {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		started := time.Now()
		rec.record(kind, key, started, do(ctx))
	}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		key := fmt.Sprintf("client%d-%d", id, i)
		call("Prepare", key, func(ctx context.Context) error {
			_, err := sn.Prepare(ctx, key, "")
			return err
		})
		call("Stat", key, func(ctx context.Context) error {
			info, err := sn.Stat(ctx, key)
			if err == nil && info.Name != key {
				err = fmt.Errorf("Stat answered %q", info.Name)
			}
			return err
		})
		call("Remove", key, func(ctx context.Context) error {
			return sn.Remove(ctx, key)
		})
	}
}

func main() {
	address := flag.String("address", "", "unix socket of the snapshotter")
	clients := flag.Int("clients", 16, "clients calling at once")
	connections := flag.Int("connections", 1, "gRPC connections the clients share (containerd: 1)")
	duration := flag.Duration("duration", 10*time.Minute, "stop after this long at the latest")
	callTimeout := flag.Duration("call-timeout", 2*time.Minute, "a call taking longer fails")
	flag.Parse()
	if *address == "" || *clients < 1 || *connections < 1 {
		fmt.Fprintln(os.Stderr, "usage: restartload -address SOCK [-clients N] [-connections N]")
		os.Exit(2)
	}
	proxies := make([]snapshots.Snapshotter, *connections)
	for i := range proxies {
		conn, err := dialLikeContainerd(*address)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer conn.Close()
		proxies[i] = proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "obdsnap")
	}

	rec := &recorder{report: report{
		Clients: *clients, Connections: *connections, Calls: map[string]int64{},
		Failures: []failure{}, Timeline: map[int64]int64{}, BucketMs: bucketMs,
		StartedAtMs: time.Now().UnixMilli(),
	}}
	stop := make(chan struct{})
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case <-signals:
		case <-time.After(*duration):
		}
		close(stop)
	}()
	var wg sync.WaitGroup
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			client(id, proxies[id%len(proxies)], rec, *callTimeout, stop)
		}(i)
	}
	wg.Wait()
	rec.report.EndedAtMs = time.Now().UnixMilli()
	out, err := json.MarshalIndent(rec.report, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}
