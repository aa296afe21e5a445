package health

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
)

// Passive feedback (pharox.Manager.ReportOutcome) working together with the
// health probes on a real store.

func seedWorkingPool(t *testing.T, store pharox.Storage, name string, n int) []*pharox.Proxy {
	t.Helper()
	addr := startHTTPProxy(t, openProxy)
	var in []*pharox.Proxy
	for range n {
		// One listener, distinct proxies: the user name tells them apart.
		in = append(in, proxyAt(t, addr, pharox.ProtocolHTTP, &pharox.Credentials{User: uuid.NewString()}))
	}
	return seedPool(t, store, name, in...)
}

func TestReportOutcomeStreaks(t *testing.T) {
	ctx := context.Background()
	store := testfactory.Memory(t)
	proxies := seedWorkingPool(t, store, "p", 1)
	m := pharox.NewManager(store, pharox.WithOutcomePolicy(pharox.OutcomePolicy{
		FailureThreshold: 2,
		BanThreshold:     1,
		SlowLatency:      time.Second,
		BanStatusCodes:   []int{429},
	}))
	// Each lease gives one failure or ban verdict, so each verdict below
	// comes through a lease of its own.
	acquire := func() *pharox.Lease {
		t.Helper()
		l, err := m.Acquire(ctx, "p", nil)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	report := func(lease *pharox.Lease, o pharox.Outcome) *pharox.Proxy {
		t.Helper()
		p, err := m.ReportOutcome(ctx, lease, o)
		if err != nil {
			t.Fatalf("ReportOutcome(%+v): %v", o, err)
		}
		if p.ID != proxies[0].ID {
			t.Fatalf("updated proxy %s, want %s", p.ID, proxies[0].ID)
		}
		return p
	}

	p := report(acquire(), pharox.Outcome{Kind: pharox.OutcomeFailure, Reason: "read timeout from target"})
	if p.Status != pharox.StatusActive || p.FailureStreak != 1 {
		t.Fatalf("one failure: %s streak %d", p.Status, p.FailureStreak)
	}
	lease := acquire()
	p = report(lease, pharox.Outcome{Kind: pharox.OutcomeFailure, Reason: "read timeout from target"})
	if p.Status != pharox.StatusInactive || p.LastError != "read timeout from target" || p.StatusChangedAt == nil {
		t.Fatalf("two failures: %+v", p)
	}
	if _, err := m.Acquire(ctx, "p", nil); !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("inactive proxy still leased: %v", err)
	}
	p = report(lease, pharox.Outcome{Kind: pharox.OutcomeSuccess, Latency: 2 * time.Second, StatusCode: 200})
	if p.Status != pharox.StatusSlow || p.FailureStreak != 0 || !strings.HasPrefix(p.LastError, "slow:") {
		t.Fatalf("slow success: %+v", p)
	}
	p = report(lease, pharox.Outcome{Kind: pharox.OutcomeSuccess, StatusCode: 403})
	if p.Status != pharox.StatusActive {
		t.Fatalf("403 must not ban by default, got %s", p.Status)
	}
	lease = acquire()
	p = report(lease, pharox.Outcome{Kind: pharox.OutcomeSuccess, StatusCode: 429})
	if p.Status != pharox.StatusBanned || p.LastStatusCode != 429 || !strings.Contains(p.LastError, "429") {
		t.Fatalf("429: %+v", p)
	}
	if _, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: "meh"}); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("unknown kind: %v", err)
	}
	if _, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeFailure}); err != nil {
		t.Fatalf("report on an active lease: %v", err)
	}
	if _, err := m.Release(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeFailure}); !errors.Is(err, pharox.ErrLeaseNotActive) {
		t.Fatalf("report on a released lease: %v", err)
	}
}

// TestBanGuardThenProbeRecovery: a bad ban rule reports every proxy of a
// pool banned; the guard lets only MaxBannedShare of them go, and a health
// sweep brings the wrongly banned ones back.
func TestBanGuardThenProbeRecovery(t *testing.T) {
	ctx := context.Background()
	tg := newTarget(t)
	store := testfactory.Memory(t)
	const n = 6
	seedWorkingPool(t, store, "p", n)
	m := pharox.NewManager(store, pharox.WithOutcomePolicy(pharox.OutcomePolicy{
		FailureThreshold: 3,
		BanThreshold:     1,
		BanStatusCodes:   []int{429},
		MaxBannedShare:   0.5,
	}))
	var leases []*pharox.Lease
	for range n {
		l, err := m.Acquire(ctx, "p", &pharox.AcquireOptions{Strategy: pharox.LeastUsed})
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	banned := 0
	for _, l := range leases {
		p, err := m.ReportOutcome(ctx, l, pharox.Outcome{Kind: pharox.OutcomeBanned, StatusCode: 429})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status == pharox.StatusBanned {
			banned++
		} else if !strings.Contains(p.LastError, "not applied") || p.FailureStreak != 1 {
			t.Errorf("guarded proxy: status %s streak %d error %q", p.Status, p.FailureStreak, p.LastError)
		}
		if _, err := m.Release(ctx, l.ID); err != nil {
			t.Fatal(err)
		}
	}
	if banned != n/2 {
		t.Fatalf("%d of %d proxies banned, want %d (MaxBannedShare 0.5)", banned, n, n/2)
	}
	stats, err := m.PoolStats(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if stats.ActiveProxies != n-n/2 {
		t.Fatalf("pool stats after bans: %+v", stats)
	}

	checker := newTestChecker(t, CheckerOptions{TargetURL: tg.Plain.URL})
	// The just-banned proxies rest first.
	o := NewOrchestrator(store, checker, OrchestratorOptions{FailureThreshold: 3, BanCooldown: time.Hour})
	s, err := o.SweepPool(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if s.Skipped != n/2 || s.Checked != n-n/2 || s.ByStatus[pharox.StatusBanned] != n/2 {
		t.Fatalf("sweep during cool-down: %+v", s)
	}
	// Once the rest is over (fake clock an hour ahead), probes find them
	// working and they return to the pool.
	later := time.Now().Add(time.Hour + time.Minute)
	o = NewOrchestrator(store, checker, OrchestratorOptions{FailureThreshold: 3, BanCooldown: time.Hour, Clock: func() time.Time { return later }})
	if s, err = o.SweepPool(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	if s.Checked != n || s.ByStatus[pharox.StatusActive] != n || s.Changed != n/2 {
		t.Fatalf("sweep after cool-down: %+v", s)
	}
}
