package pharox

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
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
	// MaxBannedShare caps the share of a pool's proxies that may be banned
	// when a passive report would ban one more; past it, ban reports only
	// count as failures until a health probe confirms them. It guards a
	// pool against one bad ban rule. 0 (or 1) disables the guard; values
	// outside [0, 1] are invalid.
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
// [LeaseStore.ApplyHealthCheckResult]. It returns the updated proxy, or
// ErrProxyNotFound if the proxy was deleted.
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
	held := false // a place in the ban guard, given back below
	if kind == OutcomeSuccess && slices.Contains(p.BanStatusCodes, o.StatusCode) {
		kind = OutcomeBanned
	}
	r := HealthCheckResult{
		ProxyID:    lease.ProxyID,
		Latency:    o.Latency,
		StatusCode: o.StatusCode,
		CheckedAt:  time.Now().UTC(),
		Error:      o.Reason,
		Attempts:   1,
	}
	switch kind {
	case OutcomeSuccess:
		r.Status = StatusActive
		r.Error = ""
		if p.SlowLatency > 0 && o.Latency > p.SlowLatency {
			r.Status = StatusSlow
			r.Error = fmt.Sprintf("slow: a request took %v (threshold %v)", o.Latency.Round(time.Millisecond), p.SlowLatency)
		}
	case OutcomeFailure:
		r.Status, r.ErrorKind, r.FailureThreshold = StatusInactive, "passive_failure", p.FailureThreshold
	case OutcomeBanned:
		r.Status, r.ErrorKind, r.FailureThreshold = StatusBanned, "passive_ban", p.BanThreshold
		if r.Error == "" {
			r.Error = fmt.Sprintf("target answered %d", o.StatusCode)
		}
		var allowed bool
		allowed, held = m.guard.reserve(ctx, m, lease.PoolName, p)
		if !allowed {
			// Count the failure but leave the status to a health probe.
			r.FailureThreshold = math.MaxInt32
			r.Error += " (ban not applied: too many bans in this pool recently)"
		}
	default:
		return nil, fmt.Errorf("%w: unknown outcome kind %q (want success, failure or banned)", ErrInvalidArgument, o.Kind)
	}
	proxy, err := m.store.ApplyHealthCheckResult(ctx, r)
	if held {
		m.guard.done(lease.PoolName)
	}
	if err != nil {
		return nil, fmt.Errorf("report outcome for proxy %s: %w", lease.ProxyID, err)
	}
	if proxy == nil {
		return nil, fmt.Errorf("report outcome: %w: %s", ErrProxyNotFound, lease.ProxyID)
	}
	return proxy, nil
}

// banGuard caps passive bans per pool: a report may ban a proxy only while
// fewer than MaxBannedShare of the pool's proxies are banned, counting the
// bans stored (by any process, probes included) plus the ones this process
// is applying right now.
type banGuard struct {
	mu       sync.Mutex
	inFlight map[string]int
}

// reserve reports whether one more ban is allowed and whether it holds a
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
	if stats.ByStatus[StatusBanned]+g.inFlight[pool] >= budget {
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
