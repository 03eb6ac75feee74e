package main

import (
	"context"
	"fmt"
	"math/rand"
	"strconv"
	"time"

	"github.com/containerd/containerd/snapshots"
)

// fixture is what a scenario needs to exist before the clock starts.
type fixture int

const (
	noFixture fixture = iota
	baseFixture
	storeFixture
)

// scenario is a workload: each of N workers calls step until the deadline.
type scenario struct {
	name    string
	desc    string
	fixture fixture
	step    func(w *worker)
}

var scenarioList = []scenario{
	{"chain", "Prepare→Commit a chain of --depth layers, then Remove it top-down", noFixture, chainStep},
	{"churn", "Prepare an active snapshot on a committed base, then Remove it", baseFixture, churnStep},
	{"stat", "Stat random keys of the --keys store (half committed in chains ≤8, half active)", storeFixture, statStep},
	{"mounts", "Mounts of random active snapshots of the store", storeFixture, mountsStep},
	{"list", "Walk (List) the whole store", storeFixture, listStep},
	{"update", "Update a label on random keys of the store", storeFixture, updateStep},
	{"mixed", "45% stat, 20% mounts, 10% update, 20% churn, 5% list", storeFixture, mixedStep},
}

func findScenario(name string) (scenario, bool) {
	for _, sc := range scenarioList {
		if sc.name == name {
			return sc, true
		}
	}
	return scenario{}, false
}

// storeChain is the longest parent chain in the store. Mounts (and, in
// some servers, Stat) cost grows with the depth of the chain; bounding it
// keeps a cell's cost the same whatever --keys is.
const storeChain = 8

// fixtures are the snapshots created, untimed, before a measurement.
type fixtures struct {
	base      string   // churn's committed parent
	committed []string // the store's committed snapshots
	active    []string // the store's active snapshots
	all       []string // committed + active
}

// labels returns the labels put on every Prepare and Commit. containerd
// forwards only "containerd.io/snapshot/" labels to a proxy snapshotter,
// so the one label stays in that space, and in no key a server interprets.
// A fresh map per call: a server in the same process could keep it.
func (m *measurement) labels() snapshots.Opt {
	return snapshots.WithLabels(map[string]string{benchLabel: m.prefix})
}

const (
	benchLabel   = "containerd.io/snapshot/bench.run"
	touchedLabel = "containerd.io/snapshot/bench.touched"
)

// bounded runs one setup call under --op-timeout, as the workers' calls
// are: a server that hangs must fail the measurement, not stall the run.
func (m *measurement) bounded(ctx context.Context, call func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, m.opts.opTimeout)
	defer cancel()
	return call(ctx)
}

// commitLayer creates name as a committed snapshot on parent, the way
// containerd unpacks a layer (Prepare an active "<name>-active", Commit).
func (m *measurement) commitLayer(ctx context.Context, name, parent string) error {
	active := name + "-active"
	if err := m.bounded(ctx, func(ctx context.Context) error {
		_, err := m.sn.Prepare(ctx, active, parent, m.labels())
		return err
	}); err != nil {
		return fmt.Errorf("prepare %s: %w", active, err)
	}
	if err := m.bounded(ctx, func(ctx context.Context) error {
		return m.sn.Commit(ctx, name, active, m.labels())
	}); err != nil {
		return fmt.Errorf("commit %s: %w", name, err)
	}
	return nil
}

// setup builds what sc needs with plain calls; its time is reported apart.
func (m *measurement) setup(ctx context.Context, sc scenario) error {
	switch sc.fixture {
	case baseFixture:
		m.fix.base = m.prefix + "base"
		return m.commitLayer(ctx, m.fix.base, "")
	case storeFixture:
		// Half the keys committed, in chains of up to storeChain layers; the
		// other half active snapshots spread over them (at least one, so
		// mounts has something to ask for).
		committed := atLeastOne(m.opts.keys / 2)
		parent := ""
		for i := 0; i < committed; i++ {
			if i%storeChain == 0 {
				parent = ""
			}
			name := fmt.Sprintf("%sstore-c%d", m.prefix, i)
			if err := m.commitLayer(ctx, name, parent); err != nil {
				return err
			}
			m.fix.committed = append(m.fix.committed, name)
			parent = name
		}
		for i := 0; i < atLeastOne(m.opts.keys-committed); i++ {
			key := fmt.Sprintf("%sstore-a%d", m.prefix, i)
			parent := m.fix.committed[i%committed]
			if err := m.bounded(ctx, func(ctx context.Context) error {
				_, err := m.sn.Prepare(ctx, key, parent, m.labels())
				return err
			}); err != nil {
				return fmt.Errorf("prepare %s: %w", key, err)
			}
			m.fix.active = append(m.fix.active, key)
		}
		m.fix.all = append(append([]string(nil), m.fix.committed...), m.fix.active...)
	}
	return nil
}

func atLeastOne(n int) int {
	if n < 1 {
		return 1
	}
	return n
}

// worker is one client goroutine. Its latencies and errors are its own, so
// the hot path takes no locks; they are merged after the run.
type worker struct {
	m        *measurement
	ctx      context.Context
	id       int
	seq      int
	rng      *rand.Rand
	recordAt time.Time // calls started earlier are warmup
	deadline time.Time
	lat      map[string][]time.Duration
	errs     map[string]int
	samples  []string

	warmupErrors int
}

func (w *worker) running() bool { return w.ctx.Err() == nil && time.Now().Before(w.deadline) }

// newKey returns a key no other worker or measurement uses.
func (w *worker) newKey() string {
	w.seq++
	return w.m.prefix + "w" + strconv.Itoa(w.id) + "-" + strconv.Itoa(w.seq)
}

func (w *worker) pick(keys []string) string { return keys[w.rng.Intn(len(keys))] }

// call runs one RPC with its own timeout and records it. Only successful
// calls enter the latency figures (a fast failure is not a fast success);
// failures are counted per op with a few messages kept as samples.
func (w *worker) call(op string, rpc func(ctx context.Context) error) bool {
	ctx, cancel := context.WithTimeout(w.ctx, w.m.opts.opTimeout)
	start := time.Now()
	err := rpc(ctx)
	elapsed := time.Since(start)
	cancel()
	if w.ctx.Err() != nil {
		return false // cut short by SIGINT: not a measurement
	}
	if err != nil {
		if start.Before(w.recordAt) {
			w.warmupErrors++ // reported apart: a server failing from the start must show
		} else {
			w.errs[op]++
		}
		if len(w.samples) < maxErrorSamples {
			w.samples = append(w.samples, op+": "+err.Error())
		}
		return false
	}
	if start.Before(w.recordAt) {
		return true // warmup
	}
	w.lat[op] = append(w.lat[op], elapsed)
	return true
}

func (w *worker) prepare(key, parent string) bool {
	return w.call("prepare", func(ctx context.Context) error {
		_, err := w.m.sn.Prepare(ctx, key, parent, w.m.labels())
		return err
	})
}

func (w *worker) commit(name, key string) bool {
	return w.call("commit", func(ctx context.Context) error {
		return w.m.sn.Commit(ctx, name, key, w.m.labels())
	})
}

func (w *worker) remove(key string) bool {
	return w.call("remove", func(ctx context.Context) error { return w.m.sn.Remove(ctx, key) })
}

// chainStep unpacks an image of --depth layers and removes it again, top
// layer first as containerd's GC does. Layers left when the deadline or an
// error stops it are for the sweep.
func chainStep(w *worker) {
	var layers []string
	parent := ""
	for len(layers) < w.m.opts.depth && w.running() {
		name := w.newKey()
		if !w.prepare(name+"-active", parent) || !w.commit(name, name+"-active") {
			break
		}
		layers = append(layers, name)
		parent = name
	}
	for i := len(layers) - 1; i >= 0 && w.running(); i-- {
		if !w.remove(layers[i]) {
			return // its children are gone, but it may not be: leave it to the sweep
		}
	}
}

// churnOn is a container's writable layer coming and going on parent.
func churnOn(w *worker, parent string) {
	key := w.newKey()
	if w.prepare(key, parent) {
		w.remove(key)
	}
}

func churnStep(w *worker) { churnOn(w, w.m.fix.base) }

func statStep(w *worker) {
	key := w.pick(w.m.fix.all)
	w.call("stat", func(ctx context.Context) error {
		_, err := w.m.sn.Stat(ctx, key)
		return err
	})
}

func mountsStep(w *worker) {
	key := w.pick(w.m.fix.active)
	w.call("mounts", func(ctx context.Context) error {
		_, err := w.m.sn.Mounts(ctx, key)
		return err
	})
}

// listStep walks everything; a short answer counts as an error, since a
// server that skips entries would otherwise look fast.
func listStep(w *worker) {
	w.call("list", func(ctx context.Context) error {
		n := 0
		if err := w.m.sn.Walk(ctx, func(context.Context, snapshots.Info) error { n++; return nil }); err != nil {
			return err
		}
		if n < len(w.m.fix.all) {
			return fmt.Errorf("walk returned %d snapshots, the store has %d", n, len(w.m.fix.all))
		}
		return nil
	})
}

func updateStep(w *worker) {
	w.seq++
	info := snapshots.Info{
		Name:   w.pick(w.m.fix.all),
		Labels: map[string]string{touchedLabel: strconv.Itoa(w.seq)},
	}
	w.call("update", func(ctx context.Context) error {
		_, err := w.m.sn.Update(ctx, info, "labels."+touchedLabel)
		return err
	})
}

// mixedStep approximates a node running containers: mostly reads, some
// container churn on the image layers, an occasional label change or List.
func mixedStep(w *worker) {
	switch p := w.rng.Intn(100); {
	case p < 45:
		statStep(w)
	case p < 65:
		mountsStep(w)
	case p < 75:
		updateStep(w)
	case p < 95:
		churnOn(w, w.pick(w.m.fix.committed))
	default:
		listStep(w)
	}
}
