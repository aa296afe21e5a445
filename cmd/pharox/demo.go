package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
)

func init() { rootCmd.AddCommand(newDemoCmd()) }

// demoPool is the pool the demo seeds and leases from.
const demoPool = "demo"

// demoConfig is what `pharox demo` runs.
type demoConfig struct {
	Workers  int
	Duration time.Duration
	Proxies  int
	// Hold is the longest a worker keeps a lease; each holds a random time
	// up to it.
	Hold time.Duration
	// Progress is the interval of plain progress lines when the progress
	// writer is not a terminal (a terminal gets a line redrawn 10 times a
	// second).
	Progress time.Duration
}

func (c demoConfig) validate() error {
	switch {
	case c.Workers < 1 || c.Workers > 10_000:
		return fmt.Errorf("%w: --workers must be between 1 and 10000, got %d", pharox.ErrInvalidArgument, c.Workers)
	case c.Duration <= 0 || c.Duration > 24*time.Hour:
		return fmt.Errorf("%w: --duration must be positive and at most 24h, got %v", pharox.ErrInvalidArgument, c.Duration)
	case c.Proxies < 1 || c.Proxies > 100_000:
		return fmt.Errorf("%w: --proxies must be between 1 and 100000, got %d", pharox.ErrInvalidArgument, c.Proxies)
	case c.Hold < 0 || c.Hold > time.Minute:
		return fmt.Errorf("%w: --hold must be between 0 and 1m, got %v", pharox.ErrInvalidArgument, c.Hold)
	case c.Progress <= 0:
		return fmt.Errorf("%w: progress interval must be positive, got %v", pharox.ErrInvalidArgument, c.Progress)
	}
	return nil
}

func newDemoCmd() *cobra.Command {
	cfg := demoConfig{Workers: 16, Duration: 5 * time.Second, Proxies: 20, Hold: 20 * time.Millisecond, Progress: time.Second}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Lease proxies from an in-memory pool with concurrent workers",
		Long: `Seed an in-memory pool with made-up proxies (mixed countries, protocols
and max_concurrency), run concurrent workers that lease with different
strategies, filters and sticky sessions, hold each lease briefly and release
it. Progress goes to stderr; the final pool statistics and the busiest
proxies go to stdout. Nothing leaves the process: the proxies are never
dialled.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := runDemo(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), cfg)
			return err
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Workers, "workers", cfg.Workers, "concurrent workers")
	f.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long the workers run")
	f.IntVar(&cfg.Proxies, "proxies", cfg.Proxies, "proxies in the demo pool")
	f.DurationVar(&cfg.Hold, "hold", cfg.Hold, "longest time a worker holds a lease")
	return cmd
}

// demoResult is what a demo run observed.
type demoResult struct {
	Acquired, Misses int64
	// OverLeased describes every time a worker saw more holders of a proxy
	// than its max_concurrency: always empty unless storage is broken.
	OverLeased []string
	Stats      *pharox.PoolStats
	Proxies    []demoProxyTally
}

// demoProxyTally is one proxy's share of the run.
type demoProxyTally struct {
	Proxy  *pharox.Proxy
	Leases int64
	Peak   int32
}

// demoTracker counts holders per proxy as the workers see them.
type demoTracker struct {
	max    int // -1 unlimited
	inUse  atomic.Int32
	peak   atomic.Int32
	leases atomic.Int64
}

// seedDemo creates the demo pool with n proxies: countries and protocols
// rotate, most proxies allow 1 to 3 leases at once, every tenth is
// unlimited and every eighth is slow.
func seedDemo(ctx context.Context, s pharox.Storage, n int) ([]*pharox.Proxy, error) {
	pool, err := pharox.BootstrapPool(ctx, s, demoPool, "pharox demo pool")
	if err != nil {
		return nil, err
	}
	countries := []string{"US", "DE", "BR", "JP", "GB"}
	in := make([]pharox.Proxy, n)
	for i := range in {
		p := pharox.Proxy{
			PoolID: pool.ID,
			// 198.18.0.0/15 is reserved for benchmarking: never a real host.
			Host:     fmt.Sprintf("198.18.%d.%d", i/250, i%250+1),
			Port:     8000 + i%1000,
			Protocol: pharox.ProtocolHTTP,
			Country:  countries[i%len(countries)],
			Status:   pharox.StatusActive,
		}
		if i%2 == 1 {
			p.Protocol = pharox.ProtocolSOCKS5
		}
		if i%10 != 9 {
			p.MaxConcurrency = new(1 + i%3)
		}
		if i%8 == 7 {
			p.Status = pharox.StatusSlow
		}
		in[i] = p
	}
	return s.AddProxies(ctx, in)
}

// demoOptions gives each worker a style of leasing, so the run shows every
// strategy, filters and sticky sessions side by side.
func demoOptions(worker int) *pharox.AcquireOptions {
	o := &pharox.AcquireOptions{Consumer: fmt.Sprintf("worker-%d", worker), Duration: time.Minute}
	switch worker % 4 {
	case 1:
		// Few proxies match: these workers queue up and miss.
		o.Strategy = pharox.LeastUsed
		o.Filters = &pharox.Filters{Country: "DE", Protocol: pharox.ProtocolHTTP}
	case 2:
		o.Strategy = pharox.RoundRobin
		o.Filters = &pharox.Filters{Protocol: pharox.ProtocolSOCKS5}
	case 3:
		o.Strategy = pharox.Random
		o.SessionKey = fmt.Sprintf("customer-%d", worker%5)
	}
	return o
}

// runDemo seeds an in-memory store, runs the workers until cfg.Duration
// passes or ctx ends, and prints the outcome to out.
func runDemo(ctx context.Context, out, progress io.Writer, cfg demoConfig) (*demoResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	store, err := memory.New()
	if err != nil {
		return nil, err
	}
	defer store.Close()
	m := pharox.NewManager(store)
	proxies, err := seedDemo(ctx, store, cfg.Proxies)
	if err != nil {
		return nil, fmt.Errorf("seed demo pool: %w", err)
	}
	trackers := make(map[uuid.UUID]*demoTracker, len(proxies))
	for _, p := range proxies {
		t := &demoTracker{max: -1}
		if p.MaxConcurrency != nil {
			t.max = *p.MaxConcurrency
		}
		trackers[p.ID] = t
	}

	var res demoResult
	var acquired, misses atomic.Int64
	var overMu sync.Mutex
	runCtx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	started := time.Now()

	stopProgress := startDemoProgress(runCtx, progress, cfg, started, func() string {
		active := "?"
		if st, err := m.PoolStats(context.WithoutCancel(runCtx), demoPool); err == nil {
			active = strconv.Itoa(st.TotalLeases)
		}
		return fmt.Sprintf("acquired %d  misses %d  active leases %s", acquired.Load(), misses.Load(), active)
	})

	var wg sync.WaitGroup
	errs := make(chan error, cfg.Workers)
	for w := range cfg.Workers {
		wg.Go(func() {
			opts := demoOptions(w)
			for runCtx.Err() == nil {
				lease, err := m.Acquire(runCtx, demoPool, opts)
				if errors.Is(err, pharox.ErrNoProxyAvailable) {
					misses.Add(1)
					demoSleep(runCtx, time.Millisecond+rand.N(2*time.Millisecond))
					continue
				}
				if err != nil {
					if runCtx.Err() != nil {
						return // the run ended during the call
					}
					errs <- fmt.Errorf("worker %d: %w", w, err)
					return
				}
				acquired.Add(1)
				t := trackers[lease.ProxyID]
				n := t.inUse.Add(1)
				t.leases.Add(1)
				for p := t.peak.Load(); n > p && !t.peak.CompareAndSwap(p, n); p = t.peak.Load() {
				}
				if t.max >= 0 && int(n) > t.max {
					overMu.Lock()
					res.OverLeased = append(res.OverLeased, fmt.Sprintf("%s held %d times at once (max_concurrency %d)", lease.Proxy, n, t.max))
					overMu.Unlock()
				}
				if cfg.Hold > 0 {
					demoSleep(runCtx, rand.N(cfg.Hold+1))
				}
				t.inUse.Add(-1)
				// Release even when the run just ended: nothing may leak.
				if _, err := m.Release(context.WithoutCancel(runCtx), lease.ID); err != nil {
					errs <- fmt.Errorf("worker %d: %w", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	stopProgress()
	close(errs)
	var failures []error
	for err := range errs {
		failures = append(failures, err)
	}
	if err := errors.Join(failures...); err != nil {
		return nil, err
	}

	res.Acquired, res.Misses = acquired.Load(), misses.Load()
	if res.Stats, err = m.PoolStats(context.WithoutCancel(ctx), demoPool); err != nil {
		return nil, err
	}
	for _, p := range proxies {
		t := trackers[p.ID]
		res.Proxies = append(res.Proxies, demoProxyTally{Proxy: p, Leases: t.leases.Load(), Peak: t.peak.Load()})
	}
	slices.SortStableFunc(res.Proxies, func(a, b demoProxyTally) int { return cmp.Compare(b.Leases, a.Leases) })
	return &res, printDemo(out, cfg, time.Since(started), &res)
}

// demoSleep waits d or until ctx ends.
func demoSleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// startDemoProgress reports line() on w until ctx ends or the returned stop
// is called: one line redrawn in place on a terminal, plain lines every
// cfg.Progress elsewhere.
func startDemoProgress(ctx context.Context, w io.Writer, cfg demoConfig, started time.Time, line func() string) (stop func()) {
	tty := false
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		tty = true
	}
	every := cfg.Progress
	if tty {
		every = 100 * time.Millisecond
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	draw := func() {
		elapsed := min(time.Since(started), cfg.Duration).Truncate(100 * time.Millisecond)
		text := fmt.Sprintf("demo %v/%v  %s", elapsed, cfg.Duration, line())
		if tty {
			fmt.Fprintf(w, "\r\033[K%s", text)
		} else {
			fmt.Fprintln(w, text)
		}
	}
	wg.Go(func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
				draw()
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
		draw()
		if tty {
			fmt.Fprintln(w)
		}
	}
}

// printDemo writes the summary, the pool statistics and the busiest
// proxies.
func printDemo(w io.Writer, cfg demoConfig, elapsed time.Duration, res *demoResult) error {
	secs := max(elapsed.Seconds(), 1e-9)
	fmt.Fprintf(w, "pharox demo: %d workers, %d proxies, %v\n", cfg.Workers, cfg.Proxies, elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "acquisitions: %d (%.0f/s)\n", res.Acquired, float64(res.Acquired)/secs)
	fmt.Fprintf(w, "misses:       %d (no free proxy matched at that moment)\n", res.Misses)
	if len(res.OverLeased) == 0 {
		fmt.Fprintln(w, "over-leases:  none (no proxy was ever held beyond its max_concurrency)")
	} else {
		fmt.Fprintf(w, "over-leases:  %d\n", len(res.OverLeased))
		for _, o := range res.OverLeased {
			fmt.Fprintln(w, "  "+o)
		}
	}

	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	s := res.Stats
	fmt.Fprintln(tw, "POOL\tPROXIES\tLEASABLE\tAVAILABLE\tLEASED\tLEASES\tACTIVE\tSLOW\tINACTIVE\tBANNED")
	fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", s.PoolName, s.TotalProxies, s.ActiveProxies,
		s.AvailableProxies, s.LeasedProxies, s.TotalLeases, s.ByStatus[pharox.StatusActive],
		s.ByStatus[pharox.StatusSlow], s.ByStatus[pharox.StatusInactive], s.ByStatus[pharox.StatusBanned])
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w)
	const top = 10
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROXY\tCOUNTRY\tSTATUS\tMAX\tLEASES\tPEAK")
	for _, t := range res.Proxies[:min(top, len(res.Proxies))] {
		maxc := "unlimited"
		if t.Proxy.MaxConcurrency != nil {
			maxc = strconv.Itoa(*t.Proxy.MaxConcurrency)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\n", t.Proxy, t.Proxy.Country, t.Proxy.Status, maxc, t.Leases, t.Peak)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(res.Proxies) > top {
		fmt.Fprintf(w, "(busiest %d of %d proxies)\n", top, len(res.Proxies))
	}
	return nil
}
