package pharox

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
)

// OutcomeKind says how a consumer's request through a leased proxy went.
type OutcomeKind string

// Outcome kinds.
const (
	OutcomeSuccess OutcomeKind = "success"
	OutcomeFailure OutcomeKind = "failure"
	OutcomeBanned  OutcomeKind = "banned"
)

// Outcome is a consumer's report of real traffic through a leased proxy.
type Outcome struct {
	Kind OutcomeKind `json:"kind"`
	// Latency of the request, if known.
	Latency time.Duration `json:"latency,omitempty"`
	// StatusCode the target answered, if any. Codes in the policy's
	// BanStatusCodes turn a success into a ban.
	StatusCode int `json:"status_code,omitempty"`
	// Reason explains a failure; it becomes the proxy's LastError.
	Reason string `json:"reason,omitempty"`
}

// OutcomePolicy turns outcomes into health results.
type OutcomePolicy struct {
	// FailureThreshold is the failures in a row that make a proxy
	// inactive; at least 1.
	FailureThreshold int
	// BanThreshold is the ban outcomes in a row that make a proxy banned;
	// at least 1.
	BanThreshold int
	// SlowLatency marks a successful proxy slow when a request took longer;
	// zero disables it, negative is invalid.
	SlowLatency time.Duration
	// BanStatusCodes are target answers that count as a ban. 403 is not in
	// the default: many sites answer it for reasons unrelated to the proxy.
	BanStatusCodes []int
	// MaxBannedShare caps the share of a pool's proxies that passive
	// reports may take out of service: while banned and inactive proxies
	// together make up this share of the pool, failure and ban reports
	// only count in the proxy's streak and leave its status to a health
	// probe. It guards a pool against one bad ban rule and against
	// consumers reporting every proxy dead. 0 (or 1) disables the guard;
	// values outside [0, 1] are invalid.
	MaxBannedShare float64
}

// DefaultOutcomePolicy returns the policy used when none is configured.
func DefaultOutcomePolicy() OutcomePolicy {
	return OutcomePolicy{
		FailureThreshold: 3,
		BanThreshold:     2,
		SlowLatency:      5 * time.Second,
		BanStatusCodes:   []int{429},
		MaxBannedShare:   0.5,
	}
}

// Validate reports, as an error wrapping ErrInvalidArgument, the first
// setting out of range: thresholds below 1, a negative SlowLatency, a ban
// status code outside 100-999, or a MaxBannedShare outside [0, 1]. Start
// from DefaultOutcomePolicy() to change one setting and keep the others.
func (p OutcomePolicy) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: outcome policy: "+format, append([]any{ErrInvalidArgument}, args...)...)
	}
	switch {
	case p.FailureThreshold < 1:
		return bad("FailureThreshold must be at least 1, got %d", p.FailureThreshold)
	case p.BanThreshold < 1:
		return bad("BanThreshold must be at least 1, got %d", p.BanThreshold)
	case p.SlowLatency < 0:
		return bad("SlowLatency must not be negative, got %v", p.SlowLatency)
	case math.IsNaN(p.MaxBannedShare) || p.MaxBannedShare < 0 || p.MaxBannedShare > 1:
		return bad("MaxBannedShare must be between 0 and 1, got %v", p.MaxBannedShare)
	}
	for _, c := range p.BanStatusCodes {
		if c < 100 || c > 999 {
			return bad("BanStatusCodes: status code %d out of range 100-999", c)
		}
	}
	return nil
}

// ReportOutcome feeds a consumer's real traffic through a leased proxy back
// into the proxy's health, atomically through
// [LeaseStore.ApplyHealthCheckResult], and returns the updated proxy.
//
// Outcomes are accepted only on active leases: the lease is read back from
// the store (by lease.ID; its proxy and pool come from the store, not from
// the caller's copy), and a lease that was released or has expired gives
// an error wrapping ErrLeaseNotActive, an unknown one ErrLeaseNotFound.
//
// Each lease gives at most one verdict: its first failure or ban counts,
// later ones are accepted and change nothing (the proxy is returned as it
// is), so one holder replaying a report cannot push a proxy over its
// failure or ban threshold alone. Successes always count. When the store
// implements [LeaseVerdictStore] (every store in this module does) the
// verdict is claimed in the store, so this holds across every process
// sharing it; a claim whose health update then fails is spent (a retried
// report does not count). Otherwise this Manager remembers the verdicts
// in memory until their lease expires, and a lease can give one verdict
// per process.
//
// Failures and bans that would take a proxy out of service are capped by
// the policy's MaxBannedShare (see [OutcomePolicy]).
func (m *Manager) ReportOutcome(ctx context.Context, lease *Lease, o Outcome) (*Proxy, error) {
	if m.invalid != nil {
		return nil, m.invalid
	}
	if lease == nil {
		return nil, fmt.Errorf("%w: report outcome: lease is nil", ErrInvalidArgument)
	}
	if o.Latency < 0 {
		return nil, fmt.Errorf("%w: report outcome: negative latency", ErrInvalidArgument)
	}
	p := m.outcomes
	kind := o.Kind
	if kind == OutcomeSuccess && slices.Contains(p.BanStatusCodes, o.StatusCode) {
		kind = OutcomeBanned
	}
	switch kind {
	case OutcomeSuccess, OutcomeFailure, OutcomeBanned:
	default:
		return nil, fmt.Errorf("%w: unknown outcome kind %q (want success, failure or banned)", ErrInvalidArgument, o.Kind)
	}
	stored, err := m.store.GetLease(ctx, lease.ID)
	if err != nil {
		return nil, fmt.Errorf("report outcome on lease %s: %w", lease.ID, err)
	}
	if stored.Status != LeaseActive || !time.Now().Before(stored.ExpiresAt) {
		return nil, fmt.Errorf("report outcome on lease %s: %w (it ended, %s)", lease.ID, ErrLeaseNotActive, endedHow(stored))
	}
	r := HealthCheckResult{
		ProxyID:    stored.ProxyID,
		Latency:    o.Latency,
		StatusCode: o.StatusCode,
		CheckedAt:  time.Now().UTC(),
		Error:      o.Reason,
		Attempts:   1,
	}
	held := false // a place in the guard's budget, given back below
	switch kind {
	case OutcomeSuccess:
		r.Status = StatusActive
		r.Error = ""
		if p.SlowLatency > 0 && o.Latency > p.SlowLatency {
			r.Status = StatusSlow
			r.Error = fmt.Sprintf("slow: a request took %v (threshold %v)", o.Latency.Round(time.Millisecond), p.SlowLatency)
		}
	case OutcomeFailure, OutcomeBanned:
		first, err := m.claimVerdict(ctx, stored)
		if err != nil {
			return nil, fmt.Errorf("report outcome on lease %s: %w", lease.ID, err)
		}
		if !first {
			// This lease already gave its verdict: accepted, not counted.
			return m.currentProxy(ctx, stored.ProxyID)
		}
		if kind == OutcomeFailure {
			r.Status, r.ErrorKind, r.FailureThreshold = StatusInactive, "passive_failure", p.FailureThreshold
		} else {
			r.Status, r.ErrorKind, r.FailureThreshold = StatusBanned, "passive_ban", p.BanThreshold
			switch {
			case r.Error != "":
			case o.StatusCode > 0:
				r.Error = fmt.Sprintf("target answered %d", o.StatusCode)
			default:
				r.Error = "reported banned"
			}
		}
		var allowed bool
		allowed, held = m.guard.reserve(ctx, m, stored.PoolName, p)
		if !allowed {
			// Count it in the streak but leave the status to a health probe.
			r.FailureThreshold = math.MaxInt32
			if kind == OutcomeBanned {
				r.Error += " (ban not applied: too many proxies of this pool are banned or inactive)"
			} else {
				r.Error += " (not marked inactive: too many proxies of this pool are banned or inactive)"
			}
		}
	}
	proxy, err := m.store.ApplyHealthCheckResult(ctx, r)
	if held {
		m.guard.done(stored.PoolName)
	}
	if err != nil {
		if _, shared := m.store.(LeaseVerdictStore); kind != OutcomeSuccess && !shared {
			// Not applied: a retry of the report may still count.
			m.verdicts.forget(stored.ID)
		}
		return nil, fmt.Errorf("report outcome for proxy %s: %w", stored.ProxyID, err)
	}
	if proxy == nil {
		return nil, fmt.Errorf("report outcome: %w: %s", ErrProxyNotFound, stored.ProxyID)
	}
	return proxy, nil
}

// claimVerdict claims the lease's one failure or ban verdict and reports
// whether this report is the one that counts: in the store when it can
// (see LeaseVerdictStore), else in this Manager's verdictLog.
func (m *Manager) claimVerdict(ctx context.Context, l *Lease) (bool, error) {
	if vs, ok := m.store.(LeaseVerdictStore); ok {
		return vs.ClaimLeaseVerdict(ctx, l.ID)
	}
	return m.verdicts.claim(l.ID, l.ExpiresAt), nil
}

// endedHow says how a lease that is no longer active ended.
func endedHow(l *Lease) string {
	if l.Status == LeaseActive {
		return "past its expiry"
	}
	return string(l.Status)
}

// currentProxy returns the proxy as stored.
func (m *Manager) currentProxy(ctx context.Context, id uuid.UUID) (*Proxy, error) {
	proxy, err := m.store.GetProxy(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("report outcome for proxy %s: %w", id, err)
	}
	return proxy, nil
}

// verdictLog remembers the leases that gave their one counted failure or
// ban verdict, each until its lease expires, for stores that do not
// implement LeaseVerdictStore. Only active leases report, so
// it holds at most one entry per active lease that reported a verdict;
// expired entries are dropped as time goes on.
type verdictLog struct {
	mu        sync.Mutex
	until     map[uuid.UUID]time.Time
	nextPrune time.Time
}

// verdictPruneEvery is how often the log drops entries of expired leases.
const verdictPruneEvery = time.Minute

// claim records lease's verdict; it reports false if the lease already
// gave one. expires is when the lease ends unless renewed.
func (v *verdictLog) claim(lease uuid.UUID, expires time.Time) bool {
	now := time.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.until == nil {
		v.until = make(map[uuid.UUID]time.Time)
	}
	if now.After(v.nextPrune) {
		for id, t := range v.until {
			if now.After(t) {
				delete(v.until, id)
			}
		}
		v.nextPrune = now.Add(verdictPruneEvery)
	}
	if t, ok := v.until[lease]; ok {
		if expires.After(t) {
			v.until[lease] = expires // renewed since
		}
		return false
	}
	v.until[lease] = expires
	return true
}

// extend keeps a lease's verdict as long as the lease, after a renewal.
func (v *verdictLog) extend(lease uuid.UUID, expires time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if t, ok := v.until[lease]; ok && expires.After(t) {
		v.until[lease] = expires
	}
}

// forget drops a verdict that was not applied.
func (v *verdictLog) forget(lease uuid.UUID) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.until, lease)
}

// banGuard caps what passive reports take out of service per pool: a
// failure or ban report may change a proxy's status only while fewer than
// MaxBannedShare of the pool's proxies are banned or inactive, counting the
// proxies stored so (by any process, probes included) plus the reports
// this process is applying right now.
type banGuard struct {
	mu       sync.Mutex
	inFlight map[string]int
}

// reserve reports whether one more ban or failure is allowed and whether it holds a
// place in the pool's budget, which the caller gives back with done.
func (g *banGuard) reserve(ctx context.Context, m *Manager, pool string, p OutcomePolicy) (allowed, held bool) {
	if p.MaxBannedShare <= 0 || p.MaxBannedShare >= 1 {
		return true, false
	}
	stats, err := m.store.GetPoolStats(ctx, pool)
	if err != nil || stats.TotalProxies == 0 {
		// Without stats the guard cannot judge; a probe can still undo a ban.
		return true, false
	}
	budget := max(1, int(p.MaxBannedShare*float64(stats.TotalProxies)))
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.inFlight == nil {
		g.inFlight = make(map[string]int)
	}
	if stats.ByStatus[StatusBanned]+stats.ByStatus[StatusInactive]+g.inFlight[pool] >= budget {
		return false, false
	}
	g.inFlight[pool]++
	return true, true
}

func (g *banGuard) done(pool string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.inFlight[pool]--; g.inFlight[pool] <= 0 {
		delete(g.inFlight, pool)
	}
}
