package main

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/snapshots"
)

// maxErrorSamples bounds the error messages kept per worker and per report.
const maxErrorSamples = 5

// sweepTimeout bounds the cleanup after a measurement, which also runs
// after SIGINT, when the run's own context is already cancelled.
const sweepTimeout = 5 * time.Minute

// options are the measurement parameters shared by every run.
type options struct {
	name      string // snapshotter name in requests, as containerd sends its plugin name
	namespace string
	duration  time.Duration
	warmup    time.Duration
	opTimeout time.Duration
	depth     int
	keys      int
	keep      bool
}

// measurement is one scenario at one concurrency against one snapshotter.
type measurement struct {
	opts   *options
	sn     snapshots.Snapshotter
	prefix string // every key created starts with it
	fix    fixtures
}

// report is the outcome of a measurement, printed as one JSON line.
type report struct {
	Server      string  `json:"server,omitempty"` // compare mode: A or B
	Label       string  `json:"label,omitempty"`  // compare mode: --label-a/--label-b
	Round       int     `json:"round,omitempty"`
	Scenario    string  `json:"scenario"`
	Concurrency int     `json:"concurrency"`
	OpsPerS     float64 `json:"ops_per_s"`
	summary             // count, errors and latencies over all calls
	DurationS   float64 `json:"duration_s"` // measured time: warmup excluded, in-flight calls included

	PerOp        map[string]summary `json:"per_op"`
	WarmupErrors int                `json:"warmup_errors,omitempty"`
	ErrorSamples []string           `json:"error_samples,omitempty"` // warmup's included

	Keys        int     `json:"keys,omitempty"`
	Depth       int     `json:"depth,omitempty"`
	SetupS      float64 `json:"setup_s"`
	CleanupS    float64 `json:"cleanup_s"`
	Removed     int     `json:"removed"`
	Interrupted bool    `json:"interrupted,omitempty"`
	Prefix      string  `json:"prefix"`
	Address     string  `json:"address"`
	Error       string  `json:"error,omitempty"`
}

// newPrefix makes the key prefix of one measurement; pid and time keep
// runs against a shared server (--address) apart, and the sweep only ever
// touches keys with its own prefix.
func newPrefix(sc scenario, conc int) string {
	return fmt.Sprintf("bench-%d-%s-%s-c%d-", os.Getpid(), strconv.FormatInt(time.Now().UnixNano(), 36), sc.name, conc)
}

// measure sets up, runs conc workers of sc for warmup+duration, and removes
// everything it created. The returned report is filled as far as the run
// got, also when err is not nil.
func measure(ctx context.Context, opts *options, t *target, sc scenario, conc int) (*report, error) {
	m := &measurement{opts: opts, sn: t.sn, prefix: newPrefix(sc, conc)}
	rep := &report{Scenario: sc.name, Concurrency: conc, Prefix: m.prefix, Address: t.address, PerOp: map[string]summary{}}
	if sc.fixture == storeFixture {
		rep.Keys = opts.keys
	}
	if sc.name == "chain" {
		rep.Depth = opts.depth
	}

	began := time.Now()
	err := m.setup(ctx, sc)
	rep.SetupS = time.Since(began).Seconds()
	if err == nil {
		// Write back what earlier runs and the setup left dirty, so that
		// flushing it does not land in this measurement.
		syscall.Sync()
		m.run(ctx, sc, conc, rep)
		if rep.Count == 0 && !rep.Interrupted {
			// Only possible if every call outlasted the window or failed.
			err = fmt.Errorf("no call succeeded in the measured %v (%d errors, %d during warmup)",
				opts.duration, rep.Errors, rep.WarmupErrors)
		}
	} else {
		err = fmt.Errorf("setup: %w", err)
	}

	if !opts.keep {
		began := time.Now()
		sctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), opts.namespace), sweepTimeout)
		n, serr := sweep(sctx, m.sn, m.prefix, opts.opTimeout)
		cancel()
		rep.Removed, rep.CleanupS = n, time.Since(began).Seconds()
		if err == nil && serr != nil {
			err = serr
		}
	}
	if err != nil {
		rep.Error = err.Error()
	}
	return rep, err
}

// run drives the workers and fills rep from what they recorded.
func (m *measurement) run(ctx context.Context, sc scenario, conc int, rep *report) {
	now := time.Now()
	recordAt := now.Add(m.opts.warmup)
	workers := make([]*worker, conc)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{
			m: m, ctx: ctx, id: i,
			rng:      rand.New(rand.NewSource(now.UnixNano() + int64(i))),
			recordAt: recordAt,
			deadline: recordAt.Add(m.opts.duration),
			lat:      map[string][]time.Duration{},
			errs:     map[string]int{},
		}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w.running() {
				sc.step(w)
			}
		}()
	}
	wg.Wait()
	// Calls started before the deadline count, so the clock runs until the
	// last of them has returned.
	if d := time.Since(recordAt); d > 0 {
		rep.DurationS = d.Seconds()
	}
	rep.Interrupted = ctx.Err() != nil

	var all []time.Duration
	perOp := map[string][]time.Duration{}
	perOpErrors := map[string]int{}
	seen := map[string]bool{}
	for _, w := range workers {
		for op, lat := range w.lat {
			perOp[op] = append(perOp[op], lat...)
			all = append(all, lat...)
		}
		for op, n := range w.errs {
			perOpErrors[op] += n
			if _, ok := perOp[op]; !ok {
				perOp[op] = nil // an op that only ever failed still gets a row
			}
		}
		rep.WarmupErrors += w.warmupErrors
		for _, s := range w.samples {
			if !seen[s] && len(rep.ErrorSamples) < maxErrorSamples {
				seen[s] = true
				rep.ErrorSamples = append(rep.ErrorSamples, s)
			}
		}
	}
	failed := 0
	for op, lat := range perOp {
		rep.PerOp[op] = summarize(lat, perOpErrors[op])
		failed += perOpErrors[op]
	}
	rep.summary = summarize(all, failed)
	if rep.DurationS > 0 {
		rep.OpsPerS = float64(rep.Count) / rep.DurationS
	}
}

// sweep removes every snapshot whose name starts with prefix, children
// before parents (a parent cannot go while it has children), then calls
// Cleanup so that servers that free space lazily (containerd's overlayfs
// removes directories there) do it now and not during the next measurement.
func sweep(ctx context.Context, sn snapshots.Snapshotter, prefix string, callTimeout time.Duration) (int, error) {
	// Each call gets callTimeout, as the workers' calls do.
	bounded := func(call func(ctx context.Context) error) error {
		ctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		return call(ctx)
	}
	removed := 0
	for {
		var mine []snapshots.Info
		hasChildren := map[string]bool{}
		err := bounded(func(ctx context.Context) error {
			return sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
				if strings.HasPrefix(info.Name, prefix) {
					mine = append(mine, info)
					hasChildren[info.Parent] = true
				}
				return nil
			})
		})
		if err != nil {
			return removed, fmt.Errorf("sweep: walk: %w", err)
		}
		if len(mine) == 0 {
			break
		}
		var (
			mu      sync.Mutex
			wg      sync.WaitGroup
			n       int
			lastErr error
			slots   = make(chan struct{}, 8) // a few at a time, like a GC pass
		)
		for _, info := range mine {
			if hasChildren[info.Name] {
				continue
			}
			wg.Add(1)
			slots <- struct{}{}
			go func(key string) {
				defer func() { <-slots; wg.Done() }()
				err := bounded(func(ctx context.Context) error { return sn.Remove(ctx, key) })
				mu.Lock()
				defer mu.Unlock()
				if err == nil || errdefs.IsNotFound(err) {
					n++
				} else {
					lastErr = err
				}
			}(info.Name)
		}
		wg.Wait()
		removed += n
		if n == 0 {
			return removed, fmt.Errorf("sweep: %d snapshots left, none removable: %v", len(mine), lastErr)
		}
	}
	if c, ok := sn.(snapshots.Cleaner); ok {
		err := bounded(c.Cleanup)
		if err != nil && !errdefs.IsNotImplemented(err) {
			return removed, fmt.Errorf("sweep: cleanup: %w", err)
		}
	}
	return removed, nil
}
