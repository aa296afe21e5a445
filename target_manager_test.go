package pharox_test

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

// Per-target outcomes through the Manager (memory store).

func targetsOf(t *testing.T, m *pharox.Manager, proxy uuid.UUID) map[string]*pharox.TargetState {
	t.Helper()
	sts, err := m.TargetStates(context.Background(), proxy)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]*pharox.TargetState, len(sts))
	for _, st := range sts {
		out[st.Target] = st
	}
	return out
}

func TestReportOutcomeWithTargetCoolsOnlyThatTarget(t *testing.T) {
	ctx := context.Background()
	m, _, _ := newPool(t, 2, 1)
	lease, err := m.Acquire(ctx, "main", &pharox.AcquireOptions{Target: "https://www.shop.co.uk/cart"})
	if err != nil {
		t.Fatal(err)
	}
	banned := lease.ProxyID
	p, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeSuccess, StatusCode: 429, Target: "WWW.SHOP.CO.UK:443"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status != pharox.StatusActive || p.FailureStreak != 0 {
		t.Fatalf("a ban for one target changed the proxy's global health: %+v", p)
	}
	st := targetsOf(t, m, banned)["shop.co.uk"]
	if st == nil || st.CoolingUntil == nil || st.LastStatusCode != 429 || st.LastReason != "target answered 429" {
		t.Fatalf("target state after a 429: %+v", st)
	}
	if _, err := m.Release(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	// For the target only the other proxy is leased; for another target,
	// and without one, both are.
	for range 3 {
		l, err := m.Acquire(ctx, "main", &pharox.AcquireOptions{Target: "checkout.shop.co.uk"})
		if err != nil {
			t.Fatal(err)
		}
		if l.ProxyID == banned {
			t.Fatal("leased the proxy cooling down for the target")
		}
		if _, err := m.Release(ctx, l.ID); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[uuid.UUID]bool{}
	var held []*pharox.Lease
	for range 2 {
		l, err := m.Acquire(ctx, "main", &pharox.AcquireOptions{Target: "news.example"})
		if err != nil {
			t.Fatal(err)
		}
		seen[l.ProxyID] = true
		held = append(held, l)
	}
	if !seen[banned] {
		t.Fatal("another target did not get the proxy cooling for shop.co.uk")
	}
	for _, l := range held {
		if _, err := m.Release(ctx, l.ID); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReportOutcomeWithTargetFailuresOneVerdictPerLease(t *testing.T) {
	ctx := context.Background()
	m, _, _ := newPool(t, 1, 100)
	fail := pharox.Outcome{Kind: pharox.OutcomeFailure, Reason: "reset", Target: "shop.example"}
	lease, err := m.Acquire(ctx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := m.ReportOutcome(ctx, lease, fail); err != nil {
			t.Fatal(err)
		}
	}
	st := targetsOf(t, m, lease.ProxyID)["shop.example"]
	if st.FailureStreak != 1 || st.CoolingUntil != nil {
		t.Fatalf("five reports on one lease: %+v, want one failure counted", st)
	}
	// The same lease still gives a verdict for another target.
	if _, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeFailure, Target: "news.example"}); err != nil {
		t.Fatal(err)
	}
	if st := targetsOf(t, m, lease.ProxyID)["news.example"]; st == nil || st.FailureStreak != 1 {
		t.Fatalf("verdict for a second target: %+v", st)
	}
	for range pharox.DefaultTargetFailureThreshold - 1 {
		l, err := m.Acquire(ctx, "main", nil)
		if err != nil {
			t.Fatal(err)
		}
		p, err := m.ReportOutcome(ctx, l, fail)
		if err != nil {
			t.Fatal(err)
		}
		if p.Status != pharox.StatusActive {
			t.Fatalf("target failures changed the global status: %s", p.Status)
		}
	}
	if st := targetsOf(t, m, lease.ProxyID)["shop.example"]; st.CoolingUntil == nil || st.Bans != 1 {
		t.Fatalf("after %d failures on different leases: %+v, want a cool-down", pharox.DefaultTargetFailureThreshold, st)
	}
	if _, err := m.Acquire(ctx, "main", &pharox.AcquireOptions{Target: "shop.example"}); !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("acquire for the cooling target: %v, want ErrNoProxyAvailable", err)
	}
}

func TestReportOutcomeWithTargetSuccessCountsTwice(t *testing.T) {
	ctx := context.Background()
	m, store, _ := newPool(t, 1, 100)
	lease, err := m.Acquire(ctx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeFailure, Target: "shop.example"}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.SetProxyStatus(ctx, lease.ProxyID, pharox.StatusSlow); err != nil {
		t.Fatal(err)
	}
	p, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeSuccess, Latency: 10 * time.Millisecond, Target: "shop.example"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status != pharox.StatusActive || p.LatencyMS != 10 {
		t.Fatalf("a success with a target did not count for the proxy: %+v", p)
	}
	st := targetsOf(t, m, lease.ProxyID)["shop.example"]
	if st.FailureStreak != 0 || st.LastSuccessAt == nil {
		t.Fatalf("a success with a target did not count for it: %+v", st)
	}
}

func TestReportOutcomeWithTargetEscalates(t *testing.T) {
	ctx := context.Background()
	tp := pharox.DefaultTargetPolicy()
	tp.EscalateTargets = 3
	m, _, _ := newPool(t, 4, 100, pharox.WithTargetPolicy(tp))
	lease, err := m.Acquire(ctx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	ban := func(l *pharox.Lease, target string) *pharox.Proxy {
		t.Helper()
		p, err := m.ReportOutcome(ctx, l, pharox.Outcome{Kind: pharox.OutcomeBanned, Target: target})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, target := range []string{"a.example", "b.example"} {
		if p := ban(lease, target); p.Status != pharox.StatusActive {
			t.Fatalf("banned by %s: global status %s before the escalation threshold", target, p.Status)
		}
	}
	// Repeating a target does not count twice.
	other, err := m.Acquire(ctx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	if other.ProxyID != lease.ProxyID {
		t.Fatalf("first_available moved to another proxy")
	}
	if p := ban(other, "a.example"); p.Status != pharox.StatusActive {
		t.Fatalf("a second ban for the same target escalated: %s", p.Status)
	}
	p := ban(lease, "c.example")
	if p.Status != pharox.StatusBanned || !strings.Contains(p.LastError, "banned by 3 sites") {
		t.Fatalf("banned by 3 sites: %+v, want globally banned", p)
	}
}

func TestReportOutcomeWithTargetEscalationRespectsBanGuard(t *testing.T) {
	ctx := context.Background()
	tp := pharox.DefaultTargetPolicy()
	tp.EscalateTargets = 1
	m, store, _ := newPool(t, 2, 100, pharox.WithTargetPolicy(tp))
	lease, err := m.Acquire(ctx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := store.ListProxies(ctx, lease.Proxy.PoolID)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range ps {
		if x.ID != lease.ProxyID {
			if _, err := store.SetProxyStatus(ctx, x.ID, pharox.StatusBanned); err != nil {
				t.Fatal(err)
			}
		}
	}
	p, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeBanned, Target: "a.example"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status != pharox.StatusActive || !strings.Contains(p.LastError, "ban not applied") {
		t.Fatalf("escalation with half the pool banned: %+v, want it held back by the guard", p)
	}
	if st := targetsOf(t, m, lease.ProxyID)["a.example"]; st == nil || st.CoolingUntil == nil {
		t.Fatalf("the target cool-down must apply even when the escalation does not: %+v", st)
	}
}

func TestTargetErrors(t *testing.T) {
	ctx := context.Background()
	m, store, pool := newPool(t, 1, 100)
	if _, err := m.Acquire(ctx, "main", &pharox.AcquireOptions{Target: "exa mple.com"}); !errors.Is(err, pharox.ErrInvalidArgument) ||
		!strings.Contains(err.Error(), `target "exa mple.com"`) {
		t.Fatalf("acquire with a bad target: %v", err)
	}
	lease, err := m.Acquire(ctx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeBanned, Target: "http://"}); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("report with a bad target: %v", err)
	}
	plain := pharox.NewManager(testfactory.WithoutTargets(store))
	if _, err := plain.Acquire(ctx, "main", &pharox.AcquireOptions{Target: "shop.example"}); !errors.Is(err, pharox.ErrUnsupported) {
		t.Fatalf("acquire with a target on a store without targets: %v", err)
	}
	if _, err := plain.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeBanned, Target: "shop.example"}); !errors.Is(err, pharox.ErrUnsupported) {
		t.Fatalf("report with a target on a store without targets: %v", err)
	}
	if _, err := plain.PoolTargetStats(ctx, pool.ID); !errors.Is(err, pharox.ErrUnsupported) {
		t.Fatalf("PoolTargetStats on a store without targets: %v", err)
	}
	if n, err := plain.PurgeTargetStates(ctx); n != 0 || err != nil {
		t.Fatalf("PurgeTargetStates on a store without targets = %d, %v", n, err)
	}
	// Without a target nothing changes.
	if _, err := plain.Acquire(ctx, "main", &pharox.AcquireOptions{Target: "  "}); err != nil {
		t.Fatalf("acquire with a blank target: %v", err)
	}
}

func TestCleanupPurgesIdleTargetEntries(t *testing.T) {
	ctx := context.Background()
	tp := pharox.DefaultTargetPolicy()
	tp.Retention = 2 * time.Hour
	m, store, pool := newPool(t, 1, 100, pharox.WithTargetPolicy(tp))
	ts := store
	ps, err := store.ListProxies(ctx, pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	apply := func(target string, at time.Time) {
		t.Helper()
		if _, _, err := ts.ApplyTargetOutcome(ctx, pharox.TargetOutcome{ProxyID: ps[0].ID, Target: target, Kind: pharox.OutcomeFailure, At: at}, tp); err != nil {
			t.Fatal(err)
		}
	}
	apply("old.example", time.Now().Add(-3*time.Hour))
	apply("fresh.example", time.Now().Add(-time.Hour))
	if _, err := m.CleanupExpiredLeases(ctx); err != nil {
		t.Fatal(err)
	}
	if got := targetsOf(t, m, ps[0].ID); len(got) != 1 || got["fresh.example"] == nil {
		t.Fatalf("after cleanup: %v, want only fresh.example", got)
	}
	// The next cleanup within a minute leaves purging alone; the explicit
	// method purges.
	apply("old2.example", time.Now().Add(-3*time.Hour))
	if _, err := m.CleanupExpiredLeases(ctx); err != nil {
		t.Fatal(err)
	}
	if got := targetsOf(t, m, ps[0].ID); len(got) != 2 {
		t.Fatalf("second cleanup within a minute purged: %v", got)
	}
	if n, err := m.PurgeTargetStates(ctx); n != 1 || err != nil {
		t.Fatalf("PurgeTargetStates = %d, %v; want 1", n, err)
	}
}

func TestAcquireEventCarriesTarget(t *testing.T) {
	ctx := context.Background()
	var got []string
	m, _, _ := newPool(t, 1, 100, pharox.WithAcquireCallback(func(_ context.Context, ev pharox.AcquireEvent) {
		got = append(got, ev.Target)
	}))
	for _, target := range []string{"https://www.shop.example/x", ""} {
		l, err := m.Acquire(ctx, "main", &pharox.AcquireOptions{Target: target})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Release(ctx, l.ID); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != 2 || got[0] != "shop.example" || got[1] != "" {
		t.Fatalf("AcquireEvent targets = %q, want [shop.example \"\"]", got)
	}
}

// A 403 through a proxy is a ban for the target (TargetPolicy's
// BanStatusCodes) but, without a target, a success as before.
func TestReportOutcomeWithTarget403IsABan(t *testing.T) {
	ctx := context.Background()
	m, _, _ := newPool(t, 1, 100)
	lease, err := m.Acquire(ctx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeSuccess, StatusCode: 403})
	if err != nil || p.Status != pharox.StatusActive || p.FailureStreak != 0 {
		t.Fatalf("403 without a target: %+v, %v; want a success", p, err)
	}
	if _, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeSuccess, StatusCode: 403, Target: "shop.example"}); err != nil {
		t.Fatal(err)
	}
	st := targetsOf(t, m, lease.ProxyID)["shop.example"]
	if st == nil || st.CoolingUntil == nil || st.LastStatusCode != 403 || st.LastReason != "target answered 403" {
		t.Fatalf("403 with a target: %+v, want a cool-down", st)
	}
	tp := pharox.DefaultTargetPolicy()
	tp.BanStatusCodes = nil
	m2 := pharox.NewManager(m.Storage(), pharox.WithTargetPolicy(tp))
	if _, err := m2.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeSuccess, StatusCode: 403, Target: "news.example"}); err != nil {
		t.Fatal(err)
	}
	if st := targetsOf(t, m2, lease.ProxyID)["news.example"]; st == nil || st.CoolingUntil != nil || st.LastSuccessAt == nil {
		t.Fatalf("403 with a target and no BanStatusCodes: %+v, want a success", st)
	}
}
