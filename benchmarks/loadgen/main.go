// Command loadgen measures a containerd snapshots server (a proxy
// snapshotter on a unix socket) through containerd 1.6's own proxy client,
// connected with the dial options containerd uses for proxy_plugins, so a
// server is driven by the code containerd itself would run.
//
//	loadgen --address SOCK [flags]            # a running server
//	loadgen --server 'CMD {root} {address}'   # start one on a fresh root
//	loadgen --a 'CMD_A' --b 'CMD_B' [--rounds N] [flags]   # compare two
//
// Single-server modes print one JSON line per (scenario, concurrency).
// Compare mode measures A and B alternately (A,B,A,B...), each measurement
// on a freshly started server with a fresh root, and prints a table of
// medians with ratios A/B: absolute figures drift on a shared machine, a
// ratio measured in one run much less.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/namespaces"
)

func main() {
	os.Exit(run())
}

// fatalf reports a failure that ends the run, taking started servers down.
func fatalf(format string, args ...interface{}) int {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	killAll()
	return 1
}

func run() int {
	opts := &options{}
	var (
		address      = flag.String("address", "", "unix socket of a running snapshots server")
		server       = flag.String("server", "", "start this server command on a fresh root and measure it; {root} and {address} are substituted")
		cmdA         = flag.String("a", "", "compare mode: command of server A (template as for --server)")
		cmdB         = flag.String("b", "", "compare mode: command of server B")
		labelA       = flag.String("label-a", "A", "compare mode: name of server A in the output")
		labelB       = flag.String("label-b", "B", "compare mode: name of server B in the output")
		rounds       = flag.Int("rounds", 2, "compare mode: measurements per server and (scenario, concurrency), taken A,B,A,B")
		mix          = flag.String("mix", "all", "comma-separated scenarios, or all")
		concurrency  = flag.String("concurrency", "1,16,64", "comma-separated worker counts; all share one connection")
		tmpdir       = flag.String("tmpdir", "", "parent of started servers' scratch dirs (default $TMPDIR)")
		tmpdirA      = flag.String("tmpdir-a", "", "compare mode: parent for A's scratch dirs (default --tmpdir)")
		tmpdirB      = flag.String("tmpdir-b", "", "compare mode: parent for B's scratch dirs (default --tmpdir)")
		startTimeout = flag.Duration("start-timeout", 20*time.Second, "how long a started server may take to listen")
		maxTime      = flag.Duration("max-time", 0, "watchdog: abort the whole run after this long (default: derived from the plan)")
		jsonOut      = flag.String("json-out", "", "compare mode: also write every measurement as a JSON line to this file")
	)
	flag.StringVar(&opts.name, "name", "obdsnap", "snapshotter name sent in requests (containerd sends the proxy plugin's name)")
	flag.StringVar(&opts.namespace, "namespace", "bench", "containerd namespace sent with every call")
	flag.DurationVar(&opts.duration, "duration", 10*time.Second, "measured time per (scenario, concurrency)")
	flag.DurationVar(&opts.warmup, "warmup", time.Second, "load before each measurement that is not recorded")
	flag.DurationVar(&opts.opTimeout, "op-timeout", 30*time.Second, "timeout of each call")
	flag.IntVar(&opts.depth, "depth", 8, "chain: layers per chain")
	flag.IntVar(&opts.keys, "keys", 100, "stat, mounts, list, update, mixed: snapshots in the store built before the clock starts")
	flag.BoolVar(&opts.keep, "keep", false, "leave the snapshots in place after each measurement")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: loadgen (--address SOCK | --server CMD | --a CMD --b CMD) [flags]\n\nscenarios:\n")
		for _, sc := range scenarioList {
			fmt.Fprintf(os.Stderr, "  %-7s %s\n", sc.name, sc.desc)
		}
		fmt.Fprintln(os.Stderr, "\nflags:")
		flag.PrintDefaults()
	}
	flag.Parse()

	if flag.NArg() != 0 {
		return usageError("unexpected arguments: %q", flag.Args())
	}
	compare := *cmdA != "" || *cmdB != ""
	modes := 0
	for _, set := range []bool{*address != "", *server != "", compare} {
		if set {
			modes++
		}
	}
	if modes != 1 || (compare && (*cmdA == "" || *cmdB == "")) {
		return usageError("give exactly one of --address SOCK, --server CMD, or --a CMD --b CMD")
	}
	var plan []scenario
	names := strings.Split(*mix, ",")
	if *mix == "all" {
		names = nil
		for _, sc := range scenarioList {
			names = append(names, sc.name)
		}
	}
	for _, name := range names {
		sc, ok := findScenario(strings.TrimSpace(name))
		if !ok {
			return usageError("unknown scenario %q", name)
		}
		plan = append(plan, sc)
	}
	var levels []int
	for _, s := range strings.Split(*concurrency, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || c < 1 {
			return usageError("bad concurrency %q", s)
		}
		levels = append(levels, c)
	}
	if opts.duration <= 0 || opts.warmup < 0 || opts.opTimeout <= 0 || opts.depth < 1 || opts.keys < 2 || *rounds < 1 {
		return usageError("need --duration > 0, --warmup >= 0, --op-timeout > 0, --depth >= 1, --keys >= 2, --rounds >= 1")
	}

	// Every call has a timeout, so a run ends; the watchdog bounds it even
	// when a server hangs outside a call (start, stop, a stuck sweep).
	measurements := len(plan) * len(levels)
	if compare {
		measurements *= 2 * *rounds
	}
	if *maxTime == 0 {
		perMeasurement := opts.warmup + opts.duration + opts.opTimeout + 2*time.Minute
		*maxTime = time.Duration(measurements)*perMeasurement + time.Minute
	}
	time.AfterFunc(*maxTime, func() {
		fmt.Fprintf(os.Stderr, "loadgen: watchdog: run exceeded --max-time %v, aborting\n", *maxTime)
		killAll()
		os.Exit(3)
	})

	// SIGINT/SIGTERM end the measurement in progress early; its snapshots
	// are still swept and started servers stopped.
	ctx, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stopSignals()
	ctx = namespaces.WithNamespace(ctx, opts.namespace)

	if compare {
		servers := []compareServer{
			{"A", *labelA, *cmdA, firstOf(*tmpdirA, *tmpdir)},
			{"B", *labelB, *cmdB, firstOf(*tmpdirB, *tmpdir)},
		}
		return runCompare(ctx, opts, servers, plan, levels, *rounds, *startTimeout, *jsonOut)
	}
	return runSingle(ctx, opts, *server, *address, *tmpdir, plan, levels, *startTimeout)
}

func usageError(format string, args ...interface{}) int {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n\n", args...)
	flag.Usage()
	return 2
}

func firstOf(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

// runSingle measures one server, started by us or already running, and
// prints a JSON line per measurement.
func runSingle(ctx context.Context, opts *options, template, address, tmpdir string,
	plan []scenario, levels []int, startTimeout time.Duration) int {
	t, err := openTarget("server", template, address, tmpdir, opts.name, startTimeout)
	if err != nil {
		return fatalf("%v", err)
	}
	if t.srv != nil {
		fmt.Fprintf(os.Stderr, "loadgen: started %s\n", t.srv.command)
	}
	enc := json.NewEncoder(os.Stdout)
	status := 0
	for _, sc := range plan {
		for _, c := range levels {
			if ctx.Err() != nil {
				t.close()
				return 130
			}
			if err := t.healthy(); err != nil {
				return fatalf("%v", err)
			}
			rep, err := measure(ctx, opts, t, sc, c)
			if err != nil {
				fmt.Fprintf(os.Stderr, "loadgen: %s c=%d: %v\n", sc.name, c, err)
				status = 1
			}
			_ = enc.Encode(rep)
		}
	}
	if err := t.close(); err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
		status = 1
	}
	if ctx.Err() != nil {
		return 130
	}
	return status
}

type compareServer struct {
	id, label, template, tmpdir string
}

// runCompare measures every (scenario, concurrency) rounds times per server,
// alternating A and B so that drift of the machine hits both alike. Each
// measurement gets a fresh server on a fresh root: no server inherits the
// other's leftovers or its own from earlier scenarios.
func runCompare(ctx context.Context, opts *options, servers []compareServer, plan []scenario, levels []int,
	rounds int, startTimeout time.Duration, jsonOut string) int {
	for _, s := range servers {
		fmt.Fprintf(os.Stderr, "loadgen: %s = %s: %s\n", s.id, s.label, s.template)
	}
	var reports []*report
	status := 0
	for _, sc := range plan {
		for _, c := range levels {
			for round := 1; round <= rounds; round++ {
				for _, s := range servers {
					if ctx.Err() != nil {
						return 130
					}
					t, err := openTarget(s.id, s.template, "", s.tmpdir, opts.name, startTimeout)
					if err != nil {
						return fatalf("%v", err)
					}
					rep, err := measure(ctx, opts, t, sc, c)
					if herr := t.healthy(); herr != nil && err == nil {
						err = herr
					}
					if cerr := t.close(); cerr != nil {
						fmt.Fprintf(os.Stderr, "loadgen: %v\n", cerr)
					}
					if err != nil {
						fmt.Fprintf(os.Stderr, "loadgen: %s %s c=%d round %d: %v\n", s.id, sc.name, c, round, err)
						status = 1
					}
					rep.Server, rep.Label, rep.Round = s.id, s.label, round
					reports = append(reports, rep)
					fmt.Fprintf(os.Stderr, "%s round %d  %-7s c=%-3d %10.1f ops/s  p99 %8.0f us  errors %d\n",
						s.id, round, sc.name, c, rep.OpsPerS, rep.P99, rep.Errors)
				}
			}
		}
	}

	fmt.Printf("A = %s: %s\nB = %s: %s\n", servers[0].label, servers[0].template, servers[1].label, servers[1].template)
	fmt.Printf("medians of %d round(s), %v each after %v warmup; A/B > 1: A has more ops/s, or a longer p99\n\n",
		rounds, opts.duration, opts.warmup)
	var names []string
	for _, sc := range plan {
		names = append(names, sc.name)
	}
	printTable(os.Stdout, reports, names, levels)
	if jsonOut != "" {
		if err := writeReports(jsonOut, reports); err != nil {
			fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
			status = 1
		}
	}
	return status
}

func writeReports(path string, reports []*report) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, r := range reports {
		if err := enc.Encode(r); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}
