package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/pharox/pharox"
)

// ErrTargetUnreachable means the probe target failed when requested
// directly, without a proxy, so the sweep was not run: every proxy would
// have looked dead.
var ErrTargetUnreachable = errors.New("health: probe target unreachable")

// OrchestratorOptions configures an Orchestrator. The zero value works.
type OrchestratorOptions struct {
	// Concurrency is how many probes run at once; zero means
	// DefaultConcurrency, negative is invalid (as for every count, rate and
	// threshold below).
	Concurrency int
	// RateLimit caps probes started per second across the orchestrator;
	// zero (or NaN) means no limit.
	RateLimit float64
	// FailureThreshold is how many failed probes in a row it takes before
	// a proxy becomes inactive; zero means DefaultFailureThreshold. One
	// healthy probe resets the streak.
	FailureThreshold int
	// BanThreshold is how many failed probes in a row, the last one a ban,
	// it takes before a proxy becomes banned; zero means FailureThreshold.
	BanThreshold int
	// BanCooldown is how long a banned proxy rests before it is probed
	// again; it doubles with every further failed probe (see BanCooldown).
	// Zero means DefaultBanCooldown; negative disables the rest.
	BanCooldown time.Duration
	// MaxBanCooldown caps the rest; zero means DefaultMaxBanCooldown.
	MaxBanCooldown time.Duration
	// IgnoreCooldown probes banned proxies even while they rest.
	IgnoreCooldown bool
	// MaxBannedShare caps the share of a pool's probed proxies one sweep
	// may ban (rounded up, at least one). When more look banned, none of
	// those bans is applied: each counts as a failure that leaves the
	// status alone, and the reason says so, because a ban rule that is
	// wrong, or a target that blocks everyone, is likelier than a whole
	// pool banned at once. Zero (or NaN) means DefaultMaxBannedShare; 1
	// disables the guard; outside [0, 1] is invalid.
	MaxBannedShare float64
	// SkipTargetCheck disables the direct request to the target before a
	// sweep. Set it where the target is reachable only through proxies.
	SkipTargetCheck bool
	// TargetPolicy is how a probe's ban is also recorded for the probe
	// target's site (per-site health, pharox.TargetStore): the proxy cools
	// down for that site as an outcome reported with it would make it.
	// Nil means pharox.DefaultTargetPolicy(). A ban the MaxBannedShare
	// guard withholds is not recorded for the site either.
	TargetPolicy *pharox.TargetPolicy
	// DisableTargetHealth stops recording probe bans for the site.
	DisableTargetHealth bool
	// Pools are the pools Run sweeps; empty means every pool.
	Pools []string
	// Progress, when set, is called after each proxy is done (checked,
	// skipped or found deleted). Calls are serialized; keep it fast.
	Progress func(Progress)
	// OnSweep, when set, is called by Run after every sweep with its
	// summary (nil when the pools could not even be listed) and error.
	OnSweep func(*SweepSummary, error)
	// Clock stamps CheckedAt and decides cool-downs; nil means time.Now.
	// It must be safe for concurrent use.
	Clock func() time.Time
	// Logger receives store errors and Run's sweep errors; nil means
	// slog.Default().
	Logger *slog.Logger
	// ReportLimit bounds the Slowest and Failing lists of a summary; zero
	// means DefaultReportLimit.
	ReportLimit int
}

// Progress reports how far a sweep has come.
type Progress struct {
	// Pool is the pool swept, or empty when sweeping several.
	Pool string
	// Total is the number of proxies in the sweep.
	Total int
	// Done counts proxies finished: Checked + Skipped + Deleted +
	// StoreErrors.
	Done        int
	Checked     int
	Skipped     int
	Deleted     int
	StoreErrors int
	// Failed counts probes that found the proxy failing.
	Failed  int
	Elapsed time.Duration
}

// Orchestrator sweeps pools with a Checker and stores the results. It is
// safe for concurrent use, though sweeps of the same pool at once probe
// each proxy twice.
type Orchestrator struct {
	store   pharox.Storage
	checker *Checker
	opts    OrchestratorOptions
	limiter *rate.Limiter
	log     *slog.Logger
	// invalid is the configuration error NewOrchestrator found, if any.
	invalid error
}

// validateOrchestratorOptions returns the first setting out of range, as
// the caller named it, before defaults replace the zero values.
func validateOrchestratorOptions(store pharox.Storage, checker *Checker, opts OrchestratorOptions) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: health: orchestrator: "+format, append([]any{pharox.ErrInvalidArgument}, args...)...)
	}
	switch {
	case store == nil || checker == nil:
		return bad("needs a store and a checker")
	case opts.Concurrency < 0:
		return bad("Concurrency must not be negative, got %d", opts.Concurrency)
	case opts.RateLimit < 0:
		return bad("RateLimit must not be negative, got %v", opts.RateLimit)
	case opts.FailureThreshold < 0:
		return bad("FailureThreshold must not be negative, got %d", opts.FailureThreshold)
	case opts.BanThreshold < 0:
		return bad("BanThreshold must not be negative, got %d", opts.BanThreshold)
	case opts.MaxBanCooldown < 0:
		return bad("MaxBanCooldown must not be negative, got %v", opts.MaxBanCooldown)
	case opts.MaxBannedShare < 0 || opts.MaxBannedShare > 1:
		return bad("MaxBannedShare must be between 0 and 1, got %v", opts.MaxBannedShare)
	case opts.ReportLimit < 0:
		return bad("ReportLimit must not be negative, got %d", opts.ReportLimit)
	}
	if opts.TargetPolicy != nil {
		if err := opts.TargetPolicy.Validate(); err != nil {
			return fmt.Errorf("health: orchestrator: TargetPolicy: %w", err)
		}
	}
	return nil
}

// Err returns the configuration error NewOrchestrator found, or nil.
func (o *Orchestrator) Err() error { return o.invalid }

// NewOrchestrator returns an Orchestrator that probes with checker and
// applies results to store. Zero options take their defaults. A nil store
// or checker, or an option out of range (a negative count, threshold,
// rate or cap, a MaxBannedShare outside [0, 1]), makes Err return an error
// wrapping ErrInvalidArgument that names the option, and every sweep and
// Run fail with it.
func NewOrchestrator(store pharox.Storage, checker *Checker, opts OrchestratorOptions) *Orchestrator {
	invalid := validateOrchestratorOptions(store, checker, opts)
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.FailureThreshold <= 0 {
		opts.FailureThreshold = DefaultFailureThreshold
	}
	if opts.BanThreshold <= 0 {
		opts.BanThreshold = opts.FailureThreshold
	}
	if opts.BanCooldown == 0 {
		opts.BanCooldown = DefaultBanCooldown
	}
	if opts.MaxBanCooldown <= 0 {
		opts.MaxBanCooldown = DefaultMaxBanCooldown
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.ReportLimit <= 0 {
		opts.ReportLimit = DefaultReportLimit
	}
	if opts.MaxBannedShare == 0 || math.IsNaN(opts.MaxBannedShare) {
		opts.MaxBannedShare = DefaultMaxBannedShare
	}
	if math.IsNaN(opts.RateLimit) {
		opts.RateLimit = 0
	}
	if opts.TargetPolicy == nil {
		p := pharox.DefaultTargetPolicy()
		opts.TargetPolicy = &p
	}
	o := &Orchestrator{store: store, checker: checker, opts: opts, log: opts.Logger, invalid: invalid}
	if o.log == nil {
		o.log = slog.Default()
	}
	if opts.RateLimit > 0 {
		o.limiter = rate.NewLimiter(rate.Limit(opts.RateLimit), 1)
	}
	return o
}

// NextProbeAt returns when p is next due for a probe under this
// orchestrator's cool-down settings (zero: at once).
func (o *Orchestrator) NextProbeAt(p *pharox.Proxy) time.Time {
	if o.opts.BanCooldown < 0 {
		return time.Time{}
	}
	return NextProbeAt(p, o.opts.BanThreshold, o.opts.BanCooldown, o.opts.MaxBanCooldown)
}

type sweepItem struct {
	pool  string
	proxy *pharox.Proxy
}

// SweepPool probes every proxy of the named pool once (banned proxies in
// their cool-down are skipped) and stores the results. It returns the
// summary even on error: ErrPoolNotFound, ErrTargetUnreachable, the
// context's error when it ended mid-sweep, or a store error.
func (o *Orchestrator) SweepPool(ctx context.Context, pool string) (*SweepSummary, error) {
	return o.SweepPools(ctx, pool)
}

// SweepAll probes every proxy of every pool, with the orchestrator's
// concurrency shared across pools.
func (o *Orchestrator) SweepAll(ctx context.Context) (*SweepSummary, error) {
	if o.invalid != nil {
		return o.sweep(ctx, "", nil, true)
	}
	pools, err := o.store.ListPools(ctx)
	if err != nil {
		return nil, fmt.Errorf("health: list pools: %w", err)
	}
	names := make([]string, 0, len(pools))
	for _, p := range pools {
		names = append(names, p.Name)
	}
	return o.sweep(ctx, "", names, true)
}

// SweepPools probes every proxy of the named pools in one sweep; a name
// given twice is swept once.
func (o *Orchestrator) SweepPools(ctx context.Context, pools ...string) (*SweepSummary, error) {
	label := ""
	if len(pools) == 1 {
		label = pools[0]
	}
	return o.sweep(ctx, label, pools, false)
}

// Run sweeps Options.Pools (every pool when empty) at once and then every
// interval until ctx ends, when it returns nil. A sweep that takes longer
// than interval is followed by the next one at once. Sweep errors go to
// OnSweep and the logger; they do not stop Run.
func (o *Orchestrator) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return fmt.Errorf("%w: health: run interval must be positive, got %v", pharox.ErrInvalidArgument, interval)
	}
	if o.invalid != nil {
		return o.invalid
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		var s *SweepSummary
		var err error
		if len(o.opts.Pools) > 0 {
			s, err = o.SweepPools(ctx, o.opts.Pools...)
		} else {
			s, err = o.SweepAll(ctx)
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			o.log.Warn("pharox health: sweep failed", "err", err)
		}
		if o.opts.OnSweep != nil {
			o.opts.OnSweep(s, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// sweep lists the pools' proxies and probes them. With tolerateMissing, a
// pool deleted since it was listed is passed over.
func (o *Orchestrator) sweep(ctx context.Context, label string, pools []string, tolerateMissing bool) (*SweepSummary, error) {
	if o.invalid != nil {
		return nil, o.invalid
	}
	pools = slices.Compact(slices.Sorted(slices.Values(pools)))
	started := time.Now()
	acc := newAccumulator(label, pools, o.opts.Clock().UTC(), o.opts.ReportLimit, o.opts.Progress)
	var items []sweepItem
	for _, name := range pools {
		pool, err := o.store.GetPoolByName(ctx, name)
		if err == nil {
			var proxies []*pharox.Proxy
			proxies, err = o.store.ListProxies(ctx, pool.ID)
			for _, p := range proxies {
				items = append(items, sweepItem{pool: name, proxy: p})
			}
		}
		if err != nil {
			if tolerateMissing && errors.Is(err, pharox.ErrPoolNotFound) {
				continue
			}
			return acc.finish(time.Since(started)), fmt.Errorf("health: sweep pool %q: %w", name, err)
		}
	}
	acc.total = len(items)
	if len(items) > 0 && !o.opts.SkipTargetCheck {
		r := o.checker.CheckDirect(ctx)
		if r.Kind == KindCanceled {
			return acc.finish(time.Since(started)), fmt.Errorf("health: sweep: %w", ctx.Err())
		}
		if !targetUsable(r) {
			return acc.finish(time.Since(started)), fmt.Errorf("%w: %s answered without a proxy: %s (%s); no proxy was marked",
				ErrTargetUnreachable, o.checker.target.Redacted(), r.Error, r.Kind)
		}
	}

	var guard *banGuard
	if o.opts.MaxBannedShare > 0 && o.opts.MaxBannedShare < 1 {
		guard = &banGuard{probed: make(map[string]int), held: make(map[string][]probeResult)}
	}
	parallel(ctx, o.opts.Concurrency, items, func(it sweepItem) {
		if r, ok := o.probe(ctx, it, acc, started); ok {
			if guard != nil && guard.hold(r) {
				return
			}
			o.apply(ctx, r, acc, started)
		}
	})
	if guard != nil && ctx.Err() == nil {
		held := guard.release(o.opts.MaxBannedShare, acc)
		parallel(ctx, o.opts.Concurrency, held, func(r probeResult) { o.apply(ctx, r, acc, started) })
	}

	s := acc.finish(time.Since(started))
	if err := ctx.Err(); err != nil {
		return s, fmt.Errorf("health: sweep stopped after %d of %d proxies: %w", s.Checked+s.Skipped+s.Deleted, s.Total, err)
	}
	if acc.firstStoreErr != nil {
		return s, fmt.Errorf("health: %d of %d results not stored: %w", s.StoreErrors, s.Total, acc.firstStoreErr)
	}
	return s, nil
}

// targetUsable reports whether a direct request shows the target can judge
// proxies. A ban answer counts as usable: our own address may be banned
// while the proxies are not.
func targetUsable(r Result) bool {
	return r.Kind == KindNone || r.Kind == KindBanned
}

// parallel runs fn over items on up to n goroutines until ctx ends.
func parallel[T any](ctx context.Context, n int, items []T, fn func(T)) {
	work := make(chan T)
	var wg sync.WaitGroup
	for range min(n, len(items)) {
		wg.Go(func() {
			for it := range work {
				fn(it)
			}
		})
	}
feed:
	for _, it := range items {
		select {
		case work <- it:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
}

// probeResult is a finished probe waiting to be stored.
type probeResult struct {
	it  sweepItem
	res Result
}

// probe probes one proxy unless it rests in a ban cool-down (then it is
// counted as skipped) or ctx ends (then ok is false).
func (o *Orchestrator) probe(ctx context.Context, it sweepItem, acc *accumulator, started time.Time) (_ probeResult, ok bool) {
	if ctx.Err() != nil {
		return probeResult{}, false
	}
	if !o.opts.IgnoreCooldown {
		if next := o.NextProbeAt(it.proxy); !next.IsZero() && o.opts.Clock().Before(next) {
			acc.skipped(it, time.Since(started))
			return probeResult{}, false
		}
	}
	if o.limiter != nil {
		if err := o.limiter.Wait(ctx); err != nil {
			return probeResult{}, false
		}
	}
	res := o.checker.Probe(ctx, it.proxy)
	if res.Kind == KindCanceled || ctx.Err() != nil {
		return probeResult{}, false
	}
	res.CheckedAt = o.opts.Clock().UTC()
	res.FailureThreshold = o.opts.FailureThreshold
	if res.Status == pharox.StatusBanned {
		res.FailureThreshold = o.opts.BanThreshold
	}
	return probeResult{it: it, res: res}, true
}

// apply stores one result and accounts for it.
func (o *Orchestrator) apply(ctx context.Context, r probeResult, acc *accumulator, started time.Time) {
	if ctx.Err() != nil {
		return
	}
	updated, err := o.store.ApplyHealthCheckResult(ctx, r.res.HealthCheckResult)
	switch {
	case err == nil && updated == nil, errors.Is(err, pharox.ErrProxyNotFound):
		acc.deleted(time.Since(started))
	case err != nil:
		if ctx.Err() != nil {
			return
		}
		o.log.Error("pharox health: store result", "proxy", r.it.proxy.ID, "pool", r.it.pool, "err", err)
		acc.storeError(err, time.Since(started))
	default:
		acc.checked(r.it, r.res, updated, time.Since(started))
		o.recordSiteBan(ctx, r)
	}
}

// recordSiteBan records a probe's ban for the probe target's site too, so
// that acquisitions for that site pass the proxy over for the cool-down
// even after a later probe finds it healthy again. A ban the guard
// withheld (FailureThreshold raised to MaxInt32) is not recorded.
func (o *Orchestrator) recordSiteBan(ctx context.Context, r probeResult) {
	res := r.res.HealthCheckResult
	if o.opts.DisableTargetHealth || res.Target == "" || r.res.Kind != KindBanned || res.FailureThreshold == math.MaxInt32 {
		return
	}
	_, _, err := o.store.ApplyTargetOutcome(ctx, pharox.TargetOutcome{
		ProxyID: res.ProxyID, Target: res.Target, Kind: pharox.OutcomeBanned,
		StatusCode: res.StatusCode, Reason: res.Error, At: res.CheckedAt,
	}, *o.opts.TargetPolicy)
	if err != nil && !errors.Is(err, pharox.ErrUnsupported) && !errors.Is(err, pharox.ErrProxyNotFound) && ctx.Err() == nil {
		o.log.Error("pharox health: store site ban", "proxy", res.ProxyID, "pool", r.it.pool, "site", res.Target, "err", err)
	}
}

// banGuard holds a sweep's ban results back until every probe is done, so
// that the share of each pool that looked banned is known before any ban
// is stored.
type banGuard struct {
	mu     sync.Mutex
	probed map[string]int
	held   map[string][]probeResult
}

// hold counts r and keeps it back if it is a ban.
func (g *banGuard) hold(r probeResult) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.probed[r.it.pool]++
	if r.res.Status != pharox.StatusBanned {
		return false
	}
	g.held[r.it.pool] = append(g.held[r.it.pool], r)
	return true
}

// release returns the held bans to store. In a pool where more than share
// of the probed proxies looked banned, the bans are withheld: they keep
// their failure and reason but cannot change the status.
func (g *banGuard) release(share float64, acc *accumulator) []probeResult {
	var out []probeResult
	for pool, held := range g.held {
		probed := g.probed[pool]
		budget := max(1, int(math.Ceil(share*float64(probed))))
		if len(held) > budget {
			acc.withhold(len(held))
			note := fmt.Sprintf(" (ban not applied: %d of %d proxies probed in pool %q looked banned, more than the %.0f%% ban guard allows; check the ban rule and the target)",
				len(held), probed, pool, share*100)
			for i := range held {
				held[i].res.FailureThreshold = math.MaxInt32
				held[i].res.Error += note
			}
		}
		out = append(out, held...)
	}
	return out
}
