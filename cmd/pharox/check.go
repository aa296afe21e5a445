package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/health"
	"github.com/pharox/pharox/storage/open"
)

// checkOpenStorage opens the store named by --storage; tests replace it.
var checkOpenStorage = open.Open

type checkOptions struct {
	pool             string
	all              bool
	storage          string
	server, apiKey   string
	target           string
	concurrency      int
	timeout          time.Duration
	rate             float64
	slow             time.Duration
	expect           []int
	banCodes         []int
	noBanCodes       bool
	headers          []string
	insecure         bool
	failureThreshold int
	force            bool
	maxBannedShare   float64
	noTargetCheck    bool
	jsonOut          bool
	top              int
	progressEvery    time.Duration
}

func init() {
	rootCmd.AddCommand(newCheckCmd())
}

func newCheckCmd() *cobra.Command {
	o := &checkOptions{}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Probe the proxies of a pool and store their health (here, or by a server)",
		Long: `Probe every proxy of a pool (or of all pools with --all) by sending a real
request through it to --target, classify it (active, slow, inactive, banned)
and store the result, then print a summary: counts by status, latency
percentiles, the slowest and the failing proxies.

A failing status sticks only after --failure-threshold failed probes in a row;
banned proxies rest in a growing cool-down unless --force is given. The
target is first requested directly: if that fails, no proxy is marked.

With --server (or PHAROX_SERVER, when neither --storage nor PHAROX_STORAGE
is given) the server runs the sweep, as its periodic sweeps and the
dashboard's Sweep button do: --target is then optional (the server's
--health-target is the default), the tuning flags are refused, and the
answer is the server's summary per pool.

--json prints durations in milliseconds, the unit in the field name
(duration_ms, latency_ms.p50_ms, ...).`,
		Example: `  pharox check --storage sqlite://pharox.db --pool residential --target https://example.com/
  pharox check --storage postgres://pharox@db/pharox --all --target http://10.0.0.5/health --json
  pharox check --server http://127.0.0.1:8080 --pool residential`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolveCheckTarget(cmd, o); err != nil {
				return err
			}
			if o.server != "" {
				return runCheckServer(cmd.Context(), o, cmd.OutOrStdout())
			}
			return runCheck(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.pool, "pool", "", "pool to sweep")
	f.BoolVar(&o.all, "all", false, "sweep every pool")
	f.StringVar(&o.storage, "storage", checkEnvOr("PHAROX_STORAGE", open.DefaultURL), "storage URL (memory://, sqlite://path, postgres://..., redis://..., redis+sentinel://..., mysql://..., mongodb://...); env PHAROX_STORAGE")
	f.StringVar(&o.server, "server", "", "pharox server URL: the server runs the sweep (env PHAROX_SERVER)")
	f.StringVar(&o.apiKey, "api-key", "", "admin API key for --server; prefer the env var (env PHAROX_API_KEY)")
	f.StringVar(&o.target, "target", os.Getenv("PHAROX_CHECK_TARGET"), "http or https URL every probe requests; env PHAROX_CHECK_TARGET")
	f.IntVar(&o.concurrency, "concurrency", health.DefaultConcurrency, "probes running at once")
	f.DurationVar(&o.timeout, "timeout", health.DefaultTimeout, "timeout of one probe")
	f.Float64Var(&o.rate, "rate", 0, "max probes started per second (0: no limit)")
	f.DurationVar(&o.slow, "slow", 0, "latency above which a healthy proxy counts as slow (0: never)")
	f.IntSliceVar(&o.expect, "expect", nil, "expected target status codes (default: any 2xx)")
	f.IntSliceVar(&o.banCodes, "ban-codes", nil, "target status codes that mean banned (default 429)")
	f.BoolVar(&o.noBanCodes, "no-ban-codes", false, "never treat a status code as a ban")
	f.StringArrayVar(&o.headers, "header", nil, `header sent with every probe, "Name: value" (repeatable)`)
	f.BoolVar(&o.insecure, "insecure", false, "skip TLS certificate verification of proxies and target")
	f.IntVar(&o.failureThreshold, "failure-threshold", health.DefaultFailureThreshold, "failed probes in a row before a proxy is marked inactive or banned")
	f.BoolVar(&o.force, "force", false, "probe banned proxies even during their cool-down")
	f.Float64Var(&o.maxBannedShare, "max-banned-share", health.DefaultMaxBannedShare, "largest share of a pool one sweep may ban; more looks like a bad ban rule and is withheld (1: no guard)")
	f.BoolVar(&o.noTargetCheck, "no-target-check", false, "skip the direct request to the target before the sweep")
	f.BoolVar(&o.jsonOut, "json", false, "print the summary as JSON")
	f.IntVar(&o.top, "top", health.DefaultReportLimit, "how many slowest and failing proxies to list")
	f.DurationVar(&o.progressEvery, "progress-interval", 2*time.Second, "how often to print progress lines when stderr is not a terminal")
	return cmd
}

func checkEnvOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func (o *checkOptions) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: check: "+format, append([]any{pharox.ErrInvalidArgument}, args...)...)
	}
	switch {
	case o.pool == "" && !o.all:
		return bad("give --pool NAME or --all")
	case o.pool != "" && o.all:
		return bad("--pool and --all exclude each other")
	case o.target == "":
		return bad("--target is required (a URL every probe requests through the proxy)")
	case o.concurrency < 1:
		return bad("--concurrency must be at least 1, got %d", o.concurrency)
	case o.timeout <= 0:
		return bad("--timeout must be positive, got %v", o.timeout)
	case !(o.rate >= 0) || math.IsInf(o.rate, 0): // NaN fails every comparison
		return bad("--rate must be a finite number >= 0, got %v", o.rate)
	case o.failureThreshold < 1:
		return bad("--failure-threshold must be at least 1")
	case o.top < 0:
		return bad("--top must not be negative")
	case !(o.maxBannedShare > 0 && o.maxBannedShare <= 1):
		return bad("--max-banned-share must be in (0, 1], got %v", o.maxBannedShare)
	case o.noBanCodes && len(o.banCodes) > 0:
		return bad("--ban-codes and --no-ban-codes exclude each other")
	}
	return nil
}

func (o *checkOptions) checkerOptions() (health.CheckerOptions, error) {
	co := health.CheckerOptions{
		TargetURL:          o.target,
		ExpectedStatus:     o.expect,
		Timeout:            o.timeout,
		InsecureSkipVerify: o.insecure,
		SlowThreshold:      o.slow,
		BanStatusCodes:     o.banCodes,
	}
	if o.noBanCodes {
		co.BanStatusCodes = []int{}
	}
	if len(o.headers) > 0 {
		co.Headers = http.Header{}
		for _, h := range o.headers {
			name, value, ok := strings.Cut(h, ":")
			if !ok || strings.TrimSpace(name) == "" {
				return co, fmt.Errorf("%w: check: --header %q is not \"Name: value\"", pharox.ErrInvalidArgument, h)
			}
			co.Headers.Add(strings.TrimSpace(name), strings.TrimSpace(value))
		}
	}
	return co, nil
}

func runCheck(ctx context.Context, o *checkOptions, stdout, stderr io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	co, err := o.checkerOptions()
	if err != nil {
		return err
	}
	checker, err := health.NewChecker(co)
	if err != nil {
		return err
	}
	if err := requireSQLiteFile(o.storage); err != nil {
		return err
	}
	store, err := checkOpenStorage(ctx, o.storage)
	if err != nil {
		return fmt.Errorf("open storage: %w", err)
	}
	defer store.Close()

	bar := newProgressBar(stderr, o.progressEvery)
	orch := health.NewOrchestrator(store, checker, health.OrchestratorOptions{
		Concurrency:      o.concurrency,
		RateLimit:        o.rate,
		FailureThreshold: o.failureThreshold,
		IgnoreCooldown:   o.force,
		MaxBannedShare:   o.maxBannedShare,
		SkipTargetCheck:  o.noTargetCheck,
		ReportLimit:      max(o.top, 1),
		Progress:         bar.update,
	})
	var summary *health.SweepSummary
	if o.all {
		summary, err = orch.SweepAll(ctx)
	} else {
		summary, err = orch.SweepPool(ctx, o.pool)
	}
	bar.finish()
	if summary != nil && (err == nil || summary.Checked > 0) {
		if o.top == 0 {
			summary.Slowest, summary.Failing = nil, nil
		}
		if werr := writeSummary(stdout, summary, o.jsonOut); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

func writeSummary(w io.Writer, s *health.SweepSummary, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(newCheckSummaryJSON(s))
	}
	return s.WriteTable(w)
}

// progressBar draws sweep progress on a terminal, redrawing one line, and
// prints plain lines at an interval elsewhere (logs, CI).
type progressBar struct {
	mu       sync.Mutex
	w        io.Writer
	tty      bool
	width    int
	every    time.Duration
	lastDraw time.Time
	last     health.Progress
	drawn    bool
}

func newProgressBar(w io.Writer, every time.Duration) *progressBar {
	b := &progressBar{w: w, every: every, width: 30}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		b.tty = true
		b.every = 100 * time.Millisecond
	}
	return b
}

func (b *progressBar) update(p health.Progress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.last = p
	now := time.Now()
	if p.Done < p.Total && now.Sub(b.lastDraw) < b.every {
		return
	}
	b.lastDraw = now
	b.draw(p)
}

func (b *progressBar) draw(p health.Progress) {
	b.drawn = true
	line := progressLine(p, b.width)
	if b.tty {
		fmt.Fprintf(b.w, "\r\x1b[2K%s", line)
		return
	}
	fmt.Fprintln(b.w, line)
}

// finish ends the progress output, so the summary starts on a clean line.
func (b *progressBar) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tty && b.drawn {
		fmt.Fprintln(b.w)
	}
}

// progressLine renders "[#####.....]  120/2000   6%  failing 17  45.2/s  eta 41s".
func progressLine(p health.Progress, width int) string {
	frac := 1.0
	if p.Total > 0 {
		frac = float64(p.Done) / float64(p.Total)
	}
	filled := min(width, int(frac*float64(width)))
	var sb strings.Builder
	sb.WriteByte('[')
	sb.WriteString(strings.Repeat("#", filled))
	sb.WriteString(strings.Repeat(".", width-filled))
	sb.WriteString("] ")
	total := strconv.Itoa(p.Total)
	fmt.Fprintf(&sb, "%*d/%s %3d%%  failing %d", len(total), p.Done, total, int(frac*100), p.Failed)
	if p.Skipped > 0 {
		fmt.Fprintf(&sb, "  resting %d", p.Skipped)
	}
	if p.Elapsed > 0 {
		rate := float64(p.Done) / p.Elapsed.Seconds()
		fmt.Fprintf(&sb, "  %.1f/s", rate)
		if rate > 0 && p.Done < p.Total {
			eta := time.Duration(float64(p.Total-p.Done) / rate * float64(time.Second))
			fmt.Fprintf(&sb, "  eta %s", eta.Round(time.Second))
		}
	}
	return sb.String()
}
