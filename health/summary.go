package health

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// SweepSummary describes one sweep. Durations marshal to JSON as
// nanoseconds.
type SweepSummary struct {
	// Pool is the pool swept, or empty when several were.
	Pool string `json:"pool,omitempty"`
	// Pools lists every pool in the sweep.
	Pools     []string      `json:"pools"`
	StartedAt time.Time     `json:"started_at"`
	Duration  time.Duration `json:"duration"`
	// Total is the number of proxies found.
	Total int `json:"total"`
	// Checked counts proxies probed with the result stored.
	Checked int `json:"checked"`
	// Skipped counts banned proxies resting in their cool-down.
	Skipped int `json:"skipped"`
	// Deleted counts proxies that vanished between listing and storing.
	Deleted int `json:"deleted"`
	// Unfinished counts proxies not done because the context ended.
	Unfinished int `json:"unfinished"`
	// StoreErrors counts results the store refused.
	StoreErrors int `json:"store_errors"`
	// Changed counts proxies whose stored status this sweep changed.
	Changed int `json:"changed"`
	// BansWithheld counts ban results the ban guard kept from changing a
	// status (see OrchestratorOptions.MaxBannedShare).
	BansWithheld int `json:"bans_withheld"`
	// ByStatus counts the stored status, after the sweep, of every proxy
	// checked or skipped.
	ByStatus map[pharox.ProxyStatus]int `json:"by_status"`
	// Observed counts what this sweep's probes found, before failure
	// streaks are applied.
	Observed map[pharox.ProxyStatus]int `json:"observed"`
	// ByErrorKind counts failed probes by kind.
	ByErrorKind map[ErrorKind]int `json:"by_error_kind"`
	// Latency summarises the healthy probes.
	Latency LatencyStats `json:"latency"`
	// Slowest lists the slowest healthy probes, slowest first.
	Slowest []ProxyReport `json:"slowest"`
	// Failing lists failed probes, by kind then proxy; FailingTotal counts
	// them all when the list is cut short.
	Failing      []ProxyReport `json:"failing"`
	FailingTotal int           `json:"failing_total"`
}

// Rate returns proxies checked per second.
func (s *SweepSummary) Rate() float64 {
	if s == nil || s.Duration <= 0 {
		return 0
	}
	return float64(s.Checked) / s.Duration.Seconds()
}

// LatencyStats summarises latencies. Percentiles use the nearest-rank
// method.
type LatencyStats struct {
	Count int           `json:"count"`
	Min   time.Duration `json:"min"`
	Mean  time.Duration `json:"mean"`
	P50   time.Duration `json:"p50"`
	P90   time.Duration `json:"p90"`
	P95   time.Duration `json:"p95"`
	P99   time.Duration `json:"p99"`
	Max   time.Duration `json:"max"`
}

// NewLatencyStats computes the statistics of ls (which it sorts).
func NewLatencyStats(ls []time.Duration) LatencyStats {
	if len(ls) == 0 {
		return LatencyStats{}
	}
	slices.Sort(ls)
	var sum time.Duration
	for _, l := range ls {
		sum += l
	}
	return LatencyStats{
		Count: len(ls),
		Min:   ls[0],
		Mean:  sum / time.Duration(len(ls)),
		P50:   Percentile(ls, 50),
		P90:   Percentile(ls, 90),
		P95:   Percentile(ls, 95),
		P99:   Percentile(ls, 99),
		Max:   ls[len(ls)-1],
	}
}

// Percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method, or 0 for an empty slice.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// ProxyReport is one proxy's line in a summary.
type ProxyReport struct {
	ProxyID uuid.UUID `json:"proxy_id"`
	Pool    string    `json:"pool"`
	// Proxy is the proxy URL with the password masked.
	Proxy string `json:"proxy"`
	// Observed is what this probe found.
	Observed pharox.ProxyStatus `json:"observed"`
	// Previous and Status are the stored status before and after.
	Previous      pharox.ProxyStatus `json:"previous"`
	Status        pharox.ProxyStatus `json:"status"`
	Latency       time.Duration      `json:"latency"`
	StatusCode    int                `json:"status_code,omitempty"`
	ErrorKind     ErrorKind          `json:"error_kind,omitempty"`
	Error         string             `json:"error,omitempty"`
	FailureStreak int                `json:"failure_streak"`
}

// accumulator gathers a sweep's results from the worker goroutines.
type accumulator struct {
	mu            sync.Mutex
	s             SweepSummary
	total         int
	latencies     []time.Duration
	healthy       []ProxyReport
	failing       []ProxyReport
	firstStoreErr error
	failed        int
	limit         int
	progress      func(Progress)
}

func newAccumulator(label string, pools []string, startedAt time.Time, limit int, progress func(Progress)) *accumulator {
	return &accumulator{
		s: SweepSummary{
			Pool:        label,
			Pools:       slices.Clone(pools),
			StartedAt:   startedAt,
			ByStatus:    make(map[pharox.ProxyStatus]int),
			Observed:    make(map[pharox.ProxyStatus]int),
			ByErrorKind: make(map[ErrorKind]int),
		},
		limit:    limit,
		progress: progress,
	}
}

func (a *accumulator) checked(it sweepItem, r Result, updated *pharox.Proxy, elapsed time.Duration) {
	rep := ProxyReport{
		ProxyID:       updated.ID,
		Pool:          it.pool,
		Proxy:         updated.String(),
		Observed:      r.Status,
		Previous:      it.proxy.Status,
		Status:        updated.Status,
		Latency:       r.Latency,
		StatusCode:    r.StatusCode,
		ErrorKind:     r.Kind,
		Error:         r.Error,
		FailureStreak: updated.FailureStreak,
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.s.Checked++
	a.s.ByStatus[updated.Status]++
	a.s.Observed[r.Status]++
	if updated.Status != it.proxy.Status {
		a.s.Changed++
	}
	if r.OK() {
		a.latencies = append(a.latencies, r.Latency)
		a.healthy = append(a.healthy, rep)
	} else {
		a.failed++
		a.s.ByErrorKind[r.Kind]++
		a.failing = append(a.failing, rep)
	}
	a.report(elapsed)
}

func (a *accumulator) skipped(it sweepItem, elapsed time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.s.Skipped++
	a.s.ByStatus[it.proxy.Status]++
	a.report(elapsed)
}

func (a *accumulator) withhold(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.s.BansWithheld += n
}

func (a *accumulator) deleted(elapsed time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.s.Deleted++
	a.report(elapsed)
}

func (a *accumulator) storeError(err error, elapsed time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.s.StoreErrors++
	if a.firstStoreErr == nil {
		a.firstStoreErr = err
	}
	a.report(elapsed)
}

// report calls the progress callback; a.mu is held, which serializes calls.
func (a *accumulator) report(elapsed time.Duration) {
	if a.progress == nil {
		return
	}
	a.progress(Progress{
		Pool:        a.s.Pool,
		Total:       a.total,
		Done:        a.s.Checked + a.s.Skipped + a.s.Deleted + a.s.StoreErrors,
		Checked:     a.s.Checked,
		Skipped:     a.s.Skipped,
		Deleted:     a.s.Deleted,
		StoreErrors: a.s.StoreErrors,
		Failed:      a.failed,
		Elapsed:     elapsed,
	})
}

func (a *accumulator) finish(d time.Duration) *SweepSummary {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.s
	s.Total = a.total
	s.Duration = d
	s.Unfinished = max(0, s.Total-s.Checked-s.Skipped-s.Deleted-s.StoreErrors)
	s.Latency = NewLatencyStats(slices.Clone(a.latencies))
	slowest := slices.Clone(a.healthy)
	slices.SortFunc(slowest, func(x, y ProxyReport) int {
		return cmp.Or(cmp.Compare(y.Latency, x.Latency), strings.Compare(x.Proxy, y.Proxy))
	})
	s.Slowest = slowest[:min(len(slowest), a.limit)]
	failing := slices.Clone(a.failing)
	slices.SortFunc(failing, func(x, y ProxyReport) int {
		return cmp.Or(strings.Compare(string(x.ErrorKind), string(y.ErrorKind)), strings.Compare(x.Proxy, y.Proxy))
	})
	s.FailingTotal = len(failing)
	s.Failing = failing[:min(len(failing), a.limit)]
	return &s
}

// WriteTable renders s for people: counts by status, latency percentiles,
// the slowest and the failing proxies.
func (s *SweepSummary) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	pool := s.Pool
	if pool == "" {
		pool = strings.Join(s.Pools, ", ")
		if pool == "" {
			pool = "(no pools)"
		}
	}
	fmt.Fprintf(tw, "Pool\t%s\n", pool)
	fmt.Fprintf(tw, "Proxies\t%d (checked %d, skipped in ban cool-down %d, deleted %d, unfinished %d, store errors %d)\n",
		s.Total, s.Checked, s.Skipped, s.Deleted, s.Unfinished, s.StoreErrors)
	fmt.Fprintf(tw, "Duration\t%s (%.1f checks/s)\n", s.Duration.Round(time.Millisecond), s.Rate())
	fmt.Fprintf(tw, "Status changes\t%d\n", s.Changed)
	if s.BansWithheld > 0 {
		fmt.Fprintf(tw, "Ban guard\t%d bans withheld: too much of a pool looked banned at once; check the ban rule and the target\n", s.BansWithheld)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "STATUS\tPROXIES\tTHIS SWEEP FOUND")
	for _, st := range pharox.AllProxyStatuses {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", st, s.ByStatus[st], s.Observed[st])
	}
	if len(s.ByErrorKind) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "FAILURE\tPROBES")
		kinds := make([]ErrorKind, 0, len(s.ByErrorKind))
		for k := range s.ByErrorKind {
			kinds = append(kinds, k)
		}
		slices.SortFunc(kinds, func(x, y ErrorKind) int {
			return cmp.Or(cmp.Compare(s.ByErrorKind[y], s.ByErrorKind[x]), strings.Compare(string(x), string(y)))
		})
		for _, k := range kinds {
			fmt.Fprintf(tw, "%s\t%d\n", k, s.ByErrorKind[k])
		}
	}
	fmt.Fprintln(tw)
	if s.Latency.Count == 0 {
		fmt.Fprintln(tw, "Latency\tno healthy probe")
	} else {
		l := s.Latency
		fmt.Fprintln(tw, "LATENCY\tMIN\tP50\tP90\tP95\tP99\tMAX\tMEAN")
		fmt.Fprintf(tw, "healthy (%d)\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.Count,
			ms(l.Min), ms(l.P50), ms(l.P90), ms(l.P95), ms(l.P99), ms(l.Max), ms(l.Mean))
	}
	if len(s.Slowest) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "SLOWEST\tLATENCY\tSTATUS\tCODE")
		for _, r := range s.Slowest {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Proxy, ms(r.Latency), r.Status, code(r.StatusCode))
		}
	}
	if len(s.Failing) > 0 {
		fmt.Fprintln(tw)
		title := "FAILING"
		if s.FailingTotal > len(s.Failing) {
			title = fmt.Sprintf("FAILING (first %d of %d)", len(s.Failing), s.FailingTotal)
		}
		fmt.Fprintf(tw, "%s\tKIND\tSTATUS\tSTREAK\tCODE\tERROR\n", title)
		for _, r := range s.Failing {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", r.Proxy, r.ErrorKind, r.Status, r.FailureStreak, code(r.StatusCode), oneLine(r.Error, 100))
		}
	}
	return tw.Flush()
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

func code(c int) string {
	if c == 0 {
		return "-"
	}
	return fmt.Sprint(c)
}

// oneLine keeps error text on one table row.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		s = string(r[:n-1]) + "…"
	}
	return s
}
