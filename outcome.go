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
	// FailureThreshold is the failures in a row that make a proxy inactive.
	FailureThreshold int
	// BanThreshold is the ban outcomes in a row that make a proxy banned.
	BanThreshold int
	// SlowLatency marks a successful proxy slow when a request took longer;
	// zero disables it.
	SlowLatency time.Duration
	// BanStatusCodes are target answers that count as a ban. 403 is not in
	// the default: many sites answer it for reasons unrelated to the proxy.
	BanStatusCodes []int
	// MaxBannedShare caps the share of a pool that passive reports may ban
	// within BanWindow; further bans only count as failures until a health
	// probe confirms them. It guards a pool against one bad ban rule.
	MaxBannedShare float64
	// BanWindow is the window for MaxBannedShare.
	BanWindow time.Duration
}

// DefaultOutcomePolicy returns the policy used when none is configured.
func DefaultOutcomePolicy() OutcomePolicy {
	return OutcomePolicy{
		FailureThreshold: 3,
		BanThreshold:     2,
		SlowLatency:      5 * time.Second,
		BanStatusCodes:   []int{429},
		MaxBannedShare:   0.5,
		BanWindow:        10 * time.Minute,
	}
}

// ReportOutcome feeds a consumer's real traffic through a leased proxy back
// into the proxy's health, atomically through
// [LeaseStore.ApplyHealthCheckResult]. It returns the updated proxy, or
// ErrProxyNotFound if the proxy was deleted.
func (m *Manager) ReportOutcome(ctx context.Context, lease *Lease, o Outcome) (*Proxy, error) {
	if lease == nil {
		return nil, fmt.Errorf("%w: report outcome: lease is nil", ErrInvalidArgument)
	}
	p := m.outcomes
	kind := o.Kind
	reserved := false
	if kind == OutcomeSuccess && slices.Contains(p.BanStatusCodes, o.StatusCode) {
		kind = OutcomeBanned
	}
	r := HealthCheckResult{
		ProxyID:    lease.ProxyID,
		Latency:    o.Latency,
		StatusCode: o.StatusCode,
		// Millisecond precision survives every store, so the stamp can be
		// compared with the StatusChangedAt the store returns.
		CheckedAt: time.Now().UTC().Truncate(time.Millisecond),
		Error:     o.Reason,
		Attempts:  1,
	}
	switch kind {
	case OutcomeSuccess:
		r.Status = StatusActive
		if p.SlowLatency > 0 && o.Latency > p.SlowLatency {
			r.Status = StatusSlow
		}
		r.Error = ""
	case OutcomeFailure:
		r.Status, r.ErrorKind, r.FailureThreshold = StatusInactive, "passive_failure", p.FailureThreshold
	case OutcomeBanned:
		r.Status, r.ErrorKind, r.FailureThreshold = StatusBanned, "passive_ban", p.BanThreshold
		if r.Error == "" {
			r.Error = fmt.Sprintf("target answered %d", o.StatusCode)
		}
		reserved = m.guard.reserve(ctx, m, lease.PoolName, p)
		if !reserved {
			// Count the failure but leave the status to a health probe.
			r.FailureThreshold = math.MaxInt32
			r.Error += " (ban not applied: too many bans in this pool recently)"
		}
	default:
		return nil, fmt.Errorf("%w: unknown outcome kind %q (want success, failure or banned)", ErrInvalidArgument, o.Kind)
	}
	if o.Latency < 0 {
		return nil, fmt.Errorf("%w: report outcome: negative latency", ErrInvalidArgument)
	}
	proxy, err := m.store.ApplyHealthCheckResult(ctx, r)
	if reserved && !bannedBy(proxy, r) {
		m.guard.refund(lease.PoolName)
	}
	if err != nil {
		return nil, fmt.Errorf("report outcome for proxy %s: %w", lease.ProxyID, err)
	}
	if proxy == nil {
		return nil, fmt.Errorf("report outcome: %w: %s", ErrProxyNotFound, lease.ProxyID)
	}
	return proxy, nil
}

// bannedBy reports whether applying r is what turned p banned.
func bannedBy(p *Proxy, r HealthCheckResult) bool {
	return p != nil && p.Status == StatusBanned && p.StatusChangedAt != nil &&
		p.StatusChangedAt.Sub(r.CheckedAt).Abs() < time.Millisecond
}

// banGuard remembers recent passive bans per pool in this process.
type banGuard struct {
	mu   sync.Mutex
	bans map[string][]time.Time
}

// reserve reports whether one more passive ban fits the pool's budget and,
// if so, holds a place for it; refund gives the place back when the report
// did not end in a ban (the streak was still below the threshold).
func (g *banGuard) reserve(ctx context.Context, m *Manager, pool string, p OutcomePolicy) bool {
	if p.MaxBannedShare <= 0 || p.MaxBannedShare >= 1 || p.BanWindow <= 0 {
		return true
	}
	stats, err := m.store.GetPoolStats(ctx, pool)
	if err != nil || stats.TotalProxies == 0 {
		return true
	}
	budget := max(1, int(p.MaxBannedShare*float64(stats.TotalProxies)))
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.bans == nil {
		g.bans = make(map[string][]time.Time)
	}
	recent := slices.DeleteFunc(g.bans[pool], func(t time.Time) bool { return now.Sub(t) > p.BanWindow })
	if len(recent) >= budget {
		g.bans[pool] = recent
		return false
	}
	g.bans[pool] = append(recent, now)
	return true
}

func (g *banGuard) refund(pool string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if bans := g.bans[pool]; len(bans) > 0 {
		g.bans[pool] = bans[:len(bans)-1]
	}
}
