package main

import (
	"fmt"
	"io"
	"math"
	"sort"
	"text/tabwriter"
	"time"
)

// summary describes the successful calls of a set, in microseconds.
type summary struct {
	Count  int     `json:"count"`  // successful calls
	Errors int     `json:"errors"` // failed calls, not in the latencies
	P50    float64 `json:"p50_us"`
	P90    float64 `json:"p90_us"`
	P99    float64 `json:"p99_us"`
	Max    float64 `json:"max_us"`
	Mean   float64 `json:"mean_us"`
}

// summarize sorts lat in place.
func summarize(lat []time.Duration, errors int) summary {
	s := summary{Count: len(lat), Errors: errors}
	if len(lat) == 0 {
		return s
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	// Nearest-rank percentile: the smallest latency at least p of the
	// calls did not exceed, always an observed value.
	rank := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(lat)))) - 1
		if i < 0 {
			i = 0
		}
		return us(lat[i])
	}
	var total time.Duration
	for _, d := range lat {
		total += d
	}
	s.P50, s.P90, s.P99 = rank(0.50), rank(0.90), rank(0.99)
	s.Max = us(lat[len(lat)-1])
	s.Mean = us(total / time.Duration(len(lat)))
	return s
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	v = append([]float64(nil), v...)
	sort.Float64s(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// spread is half the range of v relative to its median, in percent: how
// far one server's rounds strayed from their middle. With one round there
// is nothing to go by.
func spread(v []float64) float64 {
	if len(v) < 2 {
		return math.NaN()
	}
	lo, hi := v[0], v[0]
	for _, x := range v {
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	return (hi - lo) / 2 / median(v) * 100
}

// cell collects the rounds of one server in one (scenario, concurrency).
type cell struct {
	ops, p99 []float64
	errors   int
}

// printTable writes the compare-mode table: per (scenario, concurrency) the
// median ops/s and median p99 of A and B over the rounds, the ratios A/B,
// and the noise (the larger spread of the two servers' ops/s; ratios
// closer to 1 than that are not a difference).
func printTable(out io.Writer, reports []*report, scenarios []string, levels []int) {
	cells := map[string]*cell{}
	key := func(sc string, c int, server string) string { return fmt.Sprintf("%s/%d/%s", sc, c, server) }
	for _, r := range reports {
		k := key(r.Scenario, r.Concurrency, r.Server)
		if cells[k] == nil {
			cells[k] = &cell{}
		}
		// A measurement that failed outright has no throughput to compare.
		if r.Error == "" || r.Count > 0 {
			cells[k].ops = append(cells[k].ops, r.OpsPerS)
			cells[k].p99 = append(cells[k].p99, r.P99)
		}
		cells[k].errors += r.Errors
	}
	ratio := func(a, b float64) string {
		if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
			return "-"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	num := func(v float64, format string) string {
		if math.IsNaN(v) {
			return "-"
		}
		return fmt.Sprintf(format, v)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tconc\tA ops/s\tB ops/s\tA/B\tnoise\tA p99 us\tB p99 us\tA/B\terrors A/B\t")
	for _, sc := range scenarios {
		for _, c := range levels {
			a, b := cells[key(sc, c, "A")], cells[key(sc, c, "B")]
			if a == nil || b == nil {
				continue
			}
			aOps, bOps, aP99, bP99 := median(a.ops), median(b.ops), median(a.p99), median(b.p99)
			noise := "-"
			if n := math.Max(spread(a.ops), spread(b.ops)); !math.IsNaN(n) {
				noise = fmt.Sprintf("±%.0f%%", n)
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t\n", sc, c,
				num(aOps, "%.1f"), num(bOps, "%.1f"), ratio(aOps, bOps), noise,
				num(aP99, "%.0f"), num(bP99, "%.0f"), ratio(aP99, bP99), a.errors, b.errors)
		}
	}
	tw.Flush()
}
