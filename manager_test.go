package pharox_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/testfactory"
)

// newPool returns a manager over a fresh memory store with one pool of n
// proxies, each allowing maxConc leases.
func newPool(t *testing.T, n, maxConc int, opts ...pharox.ManagerOption) (*pharox.Manager, pharox.Storage, *pharox.Pool) {
	t.Helper()
	ctx := context.Background()
	store := testfactory.Memory(t)
	t.Cleanup(func() { store.Close() })
	pool, err := pharox.BootstrapPool(ctx, store, "main", "")
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		_, err := pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{
			Host: fmt.Sprintf("10.0.0.%d", i+1), Port: 8080, Protocol: pharox.ProtocolHTTP,
			Country: []string{"AR", "UY"}[i%2], MaxConcurrency: ptrutil.Ptr(maxConc),
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return pharox.NewManager(store, opts...), store, pool
}

func TestAcquireDefaultsAndRelease(t *testing.T) {
	ctx := context.Background()
	m, store, pool := newPool(t, 1, 1)
	before := time.Now()
	lease, err := m.Acquire(ctx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	if lease.Status != pharox.LeaseActive || lease.PoolID != pool.ID || lease.PoolName != "main" || lease.Proxy == nil {
		t.Fatalf("lease: %+v", lease)
	}
	if d := lease.ExpiresAt.Sub(before); d < pharox.DefaultLeaseDuration-time.Second || d > pharox.DefaultLeaseDuration+5*time.Second {
		t.Fatalf("default duration not applied: expires in %v", d)
	}
	c, err := store.EnsureConsumer(ctx, pharox.DefaultConsumerName)
	if err != nil || c.ID != lease.ConsumerID {
		t.Fatalf("default consumer not used: %v %v", c, err)
	}
	if _, err := m.Acquire(ctx, "main", nil); !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("second acquire on an exclusive proxy: %v", err)
	}
	released, err := m.Release(ctx, lease.ID)
	if err != nil || released.Status != pharox.LeaseReleased {
		t.Fatalf("release: %+v %v", released, err)
	}
	if _, err := m.Release(ctx, lease.ID); !errors.Is(err, pharox.ErrLeaseNotActive) {
		t.Fatalf("double release: %v", err)
	}
	if _, err := m.Acquire(ctx, "nope", nil); !errors.Is(err, pharox.ErrPoolNotFound) {
		t.Fatalf("unknown pool: %v", err)
	}
}

func TestAcquireRejectsInvalidOptions(t *testing.T) {
	ctx := context.Background()
	m, store, _ := newPool(t, 1, 1)
	cases := map[string]*pharox.AcquireOptions{
		"negative duration":  {Duration: -time.Second},
		"huge duration":      {Duration: pharox.MaxLeaseDuration + time.Second},
		"unknown strategy":   {Strategy: "fastest"},
		"bad filters":        {Filters: &pharox.Filters{RadiusKM: ptrutil.Ptr(3.0)}},
		"negative session":   {SessionKey: "k", SessionTTL: -time.Second},
		"long session key":   {SessionKey: strings.Repeat("k", pharox.MaxSessionKeyLength+1)},
		"control characters": {Consumer: "a\nb"},
	}
	for name, opts := range cases {
		if _, err := m.Acquire(ctx, "main", opts); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("%s: got %v, want ErrInvalidArgument", name, err)
		}
	}
	if _, err := m.Acquire(ctx, "", nil); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Errorf("empty pool: %v", err)
	}
	stats, err := store.GetPoolStats(ctx, "main")
	if err != nil || stats.TotalLeases != 0 {
		t.Fatalf("invalid requests touched the store: %+v %v", stats, err)
	}
}

func TestAcquireLeavesCallerFiltersAlone(t *testing.T) {
	m, _, _ := newPool(t, 2, 1)
	f := &pharox.Filters{Country: " uy ", AllOf: []pharox.Filters{{Protocol: "HTTP"}}}
	lease, err := m.Acquire(context.Background(), "main", &pharox.AcquireOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	if lease.Proxy.Country != "UY" {
		t.Fatalf("filter not applied: %+v", lease.Proxy)
	}
	if f.Country != " uy " || f.AllOf[0].Protocol != "HTTP" {
		t.Fatalf("caller's filters were modified: %+v", f)
	}
}

func TestAcquireWaitGetsTheFreedSlot(t *testing.T) {
	ctx := context.Background()
	m, _, _ := newPool(t, 1, 1)
	held, err := m.Acquire(ctx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		m.Release(ctx, held.ID)
	}()
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	lease, err := m.AcquireWait(waitCtx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	if lease.ProxyID != held.ProxyID {
		t.Fatal("got a different proxy from a one-proxy pool")
	}

	short, cancel2 := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel2()
	_, err = m.AcquireWait(short, "main", nil)
	if !errors.Is(err, pharox.ErrNoProxyAvailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait past deadline: %v", err)
	}
}

func TestWithLeaseAlwaysReleases(t *testing.T) {
	ctx := context.Background()
	m, store, _ := newPool(t, 1, 1)
	active := func() int {
		s, err := store.GetPoolStats(ctx, "main")
		if err != nil {
			t.Fatal(err)
		}
		return s.TotalLeases
	}
	boom := errors.New("boom")
	err := m.WithLease(ctx, "main", nil, func(ctx context.Context, l *pharox.Lease) error {
		if active() != 1 {
			t.Error("lease not held inside fn")
		}
		return boom
	})
	if !errors.Is(err, boom) || active() != 0 {
		t.Fatalf("error path: err=%v active=%d", err, active())
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("panic was swallowed")
			}
		}()
		m.WithLease(ctx, "main", nil, func(context.Context, *pharox.Lease) error { panic("kaboom") })
	}()
	if active() != 0 {
		t.Fatal("lease leaked after panic")
	}
	cctx, cancel := context.WithCancel(ctx)
	err = m.WithLease(cctx, "main", nil, func(context.Context, *pharox.Lease) error { cancel(); return nil })
	if err != nil || active() != 0 {
		t.Fatalf("cancelled context: err=%v active=%d", err, active())
	}
}

func TestCallbacksCarryEventsAndStats(t *testing.T) {
	ctx := context.Background()
	var acquires, misses, releases atomic.Int32
	var lastStats atomic.Pointer[pharox.PoolStats]
	m, _, _ := newPool(t, 1, 1,
		pharox.WithAcquireCallback(func(_ context.Context, ev pharox.AcquireEvent) {
			if ev.Pool != "main" || ev.Consumer != "w1" || ev.Strategy != pharox.LeastUsed || ev.Duration < 0 {
				t.Errorf("acquire event: %+v", ev)
			}
			if ev.Lease != nil {
				acquires.Add(1)
				lastStats.Store(ev.Stats)
			} else if errors.Is(ev.Err, pharox.ErrNoProxyAvailable) {
				misses.Add(1)
			}
		}),
		pharox.WithReleaseCallback(func(_ context.Context, ev pharox.ReleaseEvent) {
			if ev.Pool != "main" || ev.LeaseDuration < 0 || ev.Stats == nil || ev.Stats.TotalLeases != 0 {
				t.Errorf("release event: %+v", ev)
			}
			releases.Add(1)
		}),
	)
	opts := &pharox.AcquireOptions{Consumer: "w1", Strategy: pharox.LeastUsed}
	lease, err := m.Acquire(ctx, "main", opts)
	if err != nil {
		t.Fatal(err)
	}
	m.Acquire(ctx, "main", opts)
	m.Release(ctx, lease.ID)
	if acquires.Load() != 1 || misses.Load() != 1 || releases.Load() != 1 {
		t.Fatalf("acquires=%d misses=%d releases=%d", acquires.Load(), misses.Load(), releases.Load())
	}
	if s := lastStats.Load(); s == nil || s.TotalLeases != 1 || s.LeasedProxies != 1 || s.AvailableProxies != 0 {
		t.Fatalf("stats after acquire: %+v", s)
	}
}

func TestRenew(t *testing.T) {
	ctx := context.Background()
	m, _, _ := newPool(t, 1, 1)
	lease, err := m.Acquire(ctx, "main", &pharox.AcquireOptions{Duration: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := m.Renew(ctx, lease.ID, time.Hour)
	if err != nil || !renewed.ExpiresAt.After(lease.ExpiresAt.Add(50*time.Minute)) {
		t.Fatalf("renew: %+v %v", renewed, err)
	}
	for _, d := range []time.Duration{0, -time.Second, pharox.MaxLeaseDuration + 1} {
		if _, err := m.Renew(ctx, lease.ID, d); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("renew %v: %v", d, err)
		}
	}
}

func TestReportOutcome(t *testing.T) {
	ctx := context.Background()
	m, store, _ := newPool(t, 4, 10)
	// One failure verdict per lease: three leases make the proxy inactive.
	var lease *pharox.Lease
	for i := 1; i <= 3; i++ {
		var err error
		lease, err = m.Acquire(ctx, "main", nil)
		if err != nil {
			t.Fatal(err)
		}
		p, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeFailure, Reason: "reset"})
		if err != nil {
			t.Fatal(err)
		}
		want := pharox.StatusActive
		if i == 3 {
			want = pharox.StatusInactive
		}
		if p.Status != want || p.FailureStreak != i || p.LastError != "reset" {
			t.Fatalf("after %d failures: %+v", i, p)
		}
	}
	p, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeSuccess, Latency: 10 * time.Second})
	if err != nil || p.Status != pharox.StatusSlow || p.FailureStreak != 0 || !strings.HasPrefix(p.LastError, "slow:") {
		t.Fatalf("slow success: %+v %v", p, err)
	}
	if _, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: "meh"}); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("unknown kind: %v", err)
	}
	if _, err := m.ReportOutcome(ctx, nil, pharox.Outcome{Kind: pharox.OutcomeSuccess}); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("nil lease: %v", err)
	}
	if _, err := m.ReportOutcome(ctx, &pharox.Lease{ID: uuid.New()}, pharox.Outcome{Kind: pharox.OutcomeSuccess}); !errors.Is(err, pharox.ErrLeaseNotFound) {
		t.Fatalf("unknown lease: %v", err)
	}

	// 429 counts as a ban; the default threshold is two in a row (two
	// leases), and the guard lets passive reports take at most half the
	// pool out of service.
	proxies, err := store.ListProxies(ctx, lease.PoolID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.SetProxyStatus(ctx, lease.ProxyID, pharox.StatusActive); err != nil {
		t.Fatal(err)
	}
	banned := 0
	for _, px := range proxies {
		var got *pharox.Proxy
		for range 2 {
			l, err := m.Acquire(ctx, "main", &pharox.AcquireOptions{Filters: &pharox.Filters{Predicate: func(p *pharox.Proxy) bool { return p.ID == px.ID }}})
			if err != nil {
				t.Fatal(err)
			}
			if got, err = m.ReportOutcome(ctx, l, pharox.Outcome{Kind: pharox.OutcomeSuccess, StatusCode: 429}); err != nil {
				t.Fatal(err)
			}
		}
		if got.Status == pharox.StatusBanned {
			banned++
		}
	}
	if banned != 2 {
		t.Fatalf("guard: %d of 4 proxies banned by passive reports, want 2", banned)
	}
}

// slowStore answers AcquireLease only after a delay, or when ctx ends.
type slowStore struct {
	pharox.Storage
	delay time.Duration
}

func (s slowStore) AcquireLease(ctx context.Context, req pharox.AcquireRequest) (*pharox.Lease, error) {
	select {
	case <-time.After(s.delay):
		return s.Storage.AcquireLease(ctx, req)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func TestAcquireWaitDeadlineDuringStoreCallIsAMiss(t *testing.T) {
	_, store, _ := newPool(t, 1, 1)
	m := pharox.NewManager(slowStore{store, time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	_, err := m.AcquireWait(ctx, "main", nil)
	if !errors.Is(err, pharox.ErrNoProxyAvailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want ErrNoProxyAvailable and DeadlineExceeded", err)
	}
}

func TestReportOutcomeWithoutGuard(t *testing.T) {
	ctx := context.Background()
	policy := pharox.DefaultOutcomePolicy()
	policy.MaxBannedShare, policy.BanThreshold = 0, 1
	m, store, _ := newPool(t, 2, 1, pharox.WithOutcomePolicy(policy))
	proxies, err := store.ListProxies(ctx, mustPoolID(t, store))
	if err != nil {
		t.Fatal(err)
	}
	for _, px := range proxies {
		l, err := m.Acquire(ctx, "main", &pharox.AcquireOptions{Filters: &pharox.Filters{Predicate: func(p *pharox.Proxy) bool { return p.ID == px.ID }}})
		if err != nil {
			t.Fatal(err)
		}
		p, err := m.ReportOutcome(ctx, l, pharox.Outcome{Kind: pharox.OutcomeBanned})
		if err != nil || p.Status != pharox.StatusBanned {
			t.Fatalf("unguarded ban: %+v %v", p, err)
		}
	}
}

func mustPoolID(t *testing.T, s pharox.Storage) uuid.UUID {
	t.Helper()
	p, err := s.GetPoolByName(context.Background(), "main")
	if err != nil {
		t.Fatal(err)
	}
	return p.ID
}
