package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/client"
	"github.com/pharox/pharox/health"
)

// checkLocalFlags tune a sweep run by this process; a server sweeps with
// its own settings, so with --server they are refused rather than ignored.
var checkLocalFlags = []string{"concurrency", "timeout", "rate", "slow", "expect", "ban-codes", "no-ban-codes",
	"header", "insecure", "failure-threshold", "force", "max-banned-share", "no-target-check", "top", "progress-interval"}

// resolveCheckTarget chooses between a store (--storage, the default) and
// a server (--server, or PHAROX_SERVER when neither --storage nor
// PHAROX_STORAGE is given).
func resolveCheckTarget(cmd *cobra.Command, o *checkOptions) error {
	f := cmd.Flags()
	if f.Changed("server") && f.Changed("storage") {
		return usageError{errors.New("--server and --storage exclude each other: sweep through a server or open a store")}
	}
	if !f.Changed("server") && !f.Changed("storage") && os.Getenv(envStorage) == "" {
		o.server = strings.TrimSpace(os.Getenv(envServer))
	}
	if !f.Changed("api-key") {
		o.apiKey = os.Getenv(envAPIKey)
	}
	if o.server == "" {
		return nil
	}
	var local []string
	for _, name := range checkLocalFlags {
		if f.Changed(name) {
			local = append(local, "--"+name)
		}
	}
	if len(local) > 0 {
		return usageError{fmt.Errorf("%s tune a sweep run here; with --server the server sweeps with its own settings (drop them, or use --storage)", strings.Join(local, ", "))}
	}
	return nil
}

// runCheckServer asks a pharox server to sweep the pools, with its default
// target unless --target gives one, and prints what it answered.
func runCheckServer(ctx context.Context, o *checkOptions, stdout io.Writer) error {
	switch {
	case o.pool == "" && !o.all:
		return fmt.Errorf("%w: check: give --pool NAME or --all", pharox.ErrInvalidArgument)
	case o.pool != "" && o.all:
		return fmt.Errorf("%w: check: --pool and --all exclude each other", pharox.ErrInvalidArgument)
	}
	opts := []client.Option{client.WithUserAgent("pharox-cli")}
	if o.apiKey != "" {
		opts = append(opts, client.WithAPIKey(o.apiKey))
	}
	c, err := newServerClient(o.server, opts...)
	if err != nil {
		return err
	}
	var pools []*pharox.Pool
	switch {
	case o.all:
		pools, err = c.ListPools(ctx)
	default:
		var p *pharox.Pool
		if id, perr := uuid.Parse(o.pool); perr == nil {
			p, err = c.GetPool(ctx, id)
		} else {
			p, err = c.GetPoolByName(ctx, o.pool)
		}
		pools = []*pharox.Pool{p}
	}
	if err != nil {
		return err
	}
	results := make([]api.SweepResult, 0, len(pools))
	for _, p := range pools {
		res, err := c.Sweep(ctx, p.ID, api.SweepRequest{TargetURL: o.target})
		if err != nil {
			var ae *client.APIError
			if o.target == "" && errors.As(err, &ae) && strings.Contains(ae.Detail, "target_url") {
				return usageError{fmt.Errorf("the server at %s has no default health target (pharox serve --health-target): pass --target URL", o.server)}
			}
			if errors.As(err, &ae) {
				return fmt.Errorf("sweep of pool %q: %s", p.Name, ae.Detail)
			}
			return fmt.Errorf("sweep of pool %q: %w", p.Name, err)
		}
		results = append(results, *res)
	}
	if o.jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tCHECKED\tRESTING\tACTIVE\tSLOW\tINACTIVE\tBANNED\tDURATION")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", r.Pool, r.Checked, r.Skipped,
			r.ByStatus["active"], r.ByStatus["slow"], r.ByStatus["inactive"], r.ByStatus["banned"],
			(time.Duration(r.DurationMS) * time.Millisecond).String())
	}
	return tw.Flush()
}

// checkSummaryJSON is the summary `check --json` prints: the health
// package's summary with every duration in milliseconds, the unit in the
// field's name (the plain time.Duration fields would print nanoseconds).
type checkSummaryJSON struct {
	*health.SweepSummary
	Duration   *struct{}         `json:"duration,omitempty"`
	DurationMS float64           `json:"duration_ms"`
	Latency    *struct{}         `json:"latency,omitempty"`
	LatencyMS  checkLatencyJSON  `json:"latency_ms"`
	Slowest    []checkReportJSON `json:"slowest"`
	Failing    []checkReportJSON `json:"failing"`
}

type checkLatencyJSON struct {
	Count  int     `json:"count"`
	MinMS  float64 `json:"min_ms"`
	MeanMS float64 `json:"mean_ms"`
	P50MS  float64 `json:"p50_ms"`
	P90MS  float64 `json:"p90_ms"`
	P95MS  float64 `json:"p95_ms"`
	P99MS  float64 `json:"p99_ms"`
	MaxMS  float64 `json:"max_ms"`
}

type checkReportJSON struct {
	health.ProxyReport
	Latency   *struct{} `json:"latency,omitempty"`
	LatencyMS float64   `json:"latency_ms"`
}

// millis is d in milliseconds, to the microsecond.
func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func newCheckSummaryJSON(s *health.SweepSummary) checkSummaryJSON {
	l := s.Latency
	out := checkSummaryJSON{SweepSummary: s, DurationMS: millis(s.Duration),
		LatencyMS: checkLatencyJSON{Count: l.Count, MinMS: millis(l.Min), MeanMS: millis(l.Mean), P50MS: millis(l.P50),
			P90MS: millis(l.P90), P95MS: millis(l.P95), P99MS: millis(l.P99), MaxMS: millis(l.Max)},
		Slowest: make([]checkReportJSON, len(s.Slowest)), Failing: make([]checkReportJSON, len(s.Failing))}
	for i, r := range s.Slowest {
		out.Slowest[i] = checkReportJSON{ProxyReport: r, LatencyMS: millis(r.Latency)}
	}
	for i, r := range s.Failing {
		out.Failing[i] = checkReportJSON{ProxyReport: r, LatencyMS: millis(r.Latency)}
	}
	return out
}
