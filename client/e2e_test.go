package client_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/client"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/server"
)

const (
	adminKey    = "e2e-admin-key-5b1c"
	consumerKey = "e2e-consumer-key-9d2f"
)

// startServer runs the real HTTP service over a memory store.
func startServer(t *testing.T) string {
	t.Helper()
	store := testfactory.Memory(t)
	mgr := pharox.NewManager(store)
	srv := server.New(mgr, server.Options{
		AdminKeys: []string{adminKey}, ConsumerKeys: []string{consumerKey},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ReapInterval: -1,
	})
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.Close()
		hs.Close()
		store.Close()
	})
	return hs.URL
}

func newClient(t *testing.T, url, key string) *client.Client {
	t.Helper()
	c, err := client.New(url, client.WithAPIKey(key), client.WithRetry(2, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// must keeps the happy path readable; a failure panics, which fails the
// test with the error and the line.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func wantErr(t *testing.T, what string, err, sentinel error) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("%s: err = %v, want %v", what, err, sentinel)
	}
	var ae *client.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("%s: err = %v is not an *APIError", what, err)
	}
}

func TestEndToEnd(t *testing.T) {
	url := startServer(t)
	admin := newClient(t, url, adminKey)
	worker := newClient(t, url, consumerKey)
	ctx := context.Background()

	// Pools.
	pool := must(admin.CreatePool(ctx, "main", "primary"))
	if pool.ID == uuid.Nil || pool.Name != "main" || pool.Description != "primary" {
		t.Fatalf("CreatePool = %+v", pool)
	}
	_, err := admin.CreatePool(ctx, "main", "")
	wantErr(t, "duplicate pool", err, pharox.ErrAlreadyExists)
	if got := must(worker.GetPool(ctx, pool.ID)); got.Name != "main" {
		t.Fatalf("GetPool = %+v", got)
	}
	if got := must(worker.GetPoolByName(ctx, "main")); got.ID != pool.ID {
		t.Fatalf("GetPoolByName = %+v", got)
	}
	_, err = worker.GetPool(ctx, uuid.New())
	wantErr(t, "unknown pool", err, pharox.ErrPoolNotFound)

	// Proxies: import is all or none.
	one := 1
	proxies := []pharox.Proxy{
		{Host: "10.0.0.1", Port: 8080, Protocol: "http", Credentials: &pharox.Credentials{User: "alice", Password: "pw-one"}, Country: "DE", MaxConcurrency: &one},
		{Host: "10.0.0.2", Port: 1080, Protocol: "socks5", Country: "FR"},
	}
	imported := must(admin.ImportProxies(ctx, pool.ID, proxies))
	if len(imported) != 2 || imported[0].Credentials == nil || imported[0].Credentials.User != "alice" || imported[0].Credentials.Password != "" {
		t.Fatalf("ImportProxies = %v (the answer must not carry passwords)", imported)
	}
	_, err = admin.ImportProxies(ctx, pool.ID, []pharox.Proxy{{Host: "10.0.0.3", Port: 80, Protocol: "http"}, proxies[1]})
	wantErr(t, "import with a duplicate", err, pharox.ErrAlreadyExists)
	_, err = admin.ImportProxies(ctx, pool.ID, []pharox.Proxy{{Host: "10.0.0.4", Port: 80, Protocol: "http"}, {Host: "", Port: 80}})
	wantErr(t, "import with an invalid proxy", err, pharox.ErrInvalidArgument)
	listed := must(admin.ListProxies(ctx, pool.ID))
	if len(listed) != 2 {
		t.Fatalf("after failed imports the pool has %d proxies, want 2", len(listed))
	}
	for _, p := range listed {
		if p.Credentials != nil && p.Credentials.Password != "" {
			t.Fatalf("ListProxies leaks a password: %#v", p.Credentials)
		}
	}
	secret := must(admin.ListProxiesWithSecrets(ctx, pool.ID))
	var alice *pharox.Proxy
	for _, p := range secret {
		if p.Host == "10.0.0.1" {
			alice = p
		}
	}
	if alice == nil || alice.Credentials.Password != "pw-one" {
		t.Fatalf("ListProxiesWithSecrets = %v", secret)
	}
	_, err = worker.ListProxies(ctx, pool.ID)
	wantErr(t, "consumer key on an admin route", err, client.ErrForbidden)
	extra := must(admin.CreateProxy(ctx, pool.ID, &pharox.Proxy{Host: "10.0.0.9", Port: 3128, Protocol: "http", Country: "US"}))
	if got := must(admin.SetProxyStatus(ctx, pool.ID, extra.ID, pharox.StatusBanned)); got.Status != pharox.StatusBanned {
		t.Fatalf("SetProxyStatus = %+v", got)
	}
	_, err = admin.SetProxyStatus(ctx, pool.ID, uuid.New(), pharox.StatusActive)
	wantErr(t, "status of an unknown proxy", err, pharox.ErrProxyNotFound)

	// Consumers.
	c1 := must(worker.EnsureConsumer(ctx, "w1"))
	if c2 := must(worker.EnsureConsumer(ctx, "w1")); c2.ID != c1.ID {
		t.Fatalf("EnsureConsumer is not idempotent: %v vs %v", c1.ID, c2.ID)
	}
	c0 := must(worker.EnsureConsumer(ctx, "a0"))
	consumers := must(worker.ListConsumers(ctx))
	if len(consumers) != 2 || consumers[0].ID != c0.ID || consumers[0].Name != "a0" ||
		consumers[1].ID != c1.ID || consumers[1].Name != "w1" {
		t.Fatalf("ListConsumers = %v, want a0 %s then w1 %s", consumers, c0.ID, c1.ID)
	}
	// consumer_id names a consumer by id, or else by name (as the Python
	// SDK sends it).
	for _, ref := range []string{c1.ID.String(), "w1"} {
		l := must(worker.Acquire(ctx, api.AcquireRequest{PoolName: "main", ConsumerID: ref}))
		if l.ConsumerID != c1.ID {
			t.Fatalf("acquire with consumer_id %q leased as %s, want w1 %s", ref, l.ConsumerID, c1.ID)
		}
		must(worker.Release(ctx, l.ID))
	}

	// Leases.
	req, err := client.NewAcquireRequest("main", &pharox.AcquireOptions{Consumer: "w1", Duration: time.Minute, Filters: &pharox.Filters{Country: "de"}})
	if err != nil {
		t.Fatal(err)
	}
	lease := must(worker.Acquire(ctx, req))
	if lease.Status != pharox.LeaseActive || lease.ConsumerID != c1.ID || lease.Proxy == nil || lease.Proxy.URL() != "http://alice:pw-one@10.0.0.1:8080" {
		t.Fatalf("Acquire = %+v (proxy %v)", lease, lease.Proxy)
	}
	if d := lease.ExpiresAt.Sub(lease.AcquiredAt); d < 59*time.Second || d > 61*time.Second {
		t.Errorf("lease lasts %v, want 1m", d)
	}
	// The only DE proxy takes one lease at a time.
	_, err = worker.Acquire(ctx, api.AcquireRequest{PoolID: pool.ID.String(), Filters: &pharox.Filters{Country: "DE"}})
	wantErr(t, "exhausted pool", err, pharox.ErrNoProxyAvailable)
	_, err = worker.Acquire(ctx, api.AcquireRequest{PoolName: "main", Filters: &pharox.Filters{Country: "DE"}, WaitSeconds: 0.05})
	wantErr(t, "exhausted pool after waiting", err, pharox.ErrNoProxyAvailable)
	_, err = worker.Acquire(ctx, api.AcquireRequest{PoolName: "nope"})
	wantErr(t, "unknown pool", err, pharox.ErrPoolNotFound)

	if got := must(worker.GetLease(ctx, lease.ID)); got.ID != lease.ID || got.Status != pharox.LeaseActive {
		t.Fatalf("GetLease = %+v", got)
	}
	_, err = worker.GetLease(ctx, uuid.New())
	wantErr(t, "unknown lease", err, pharox.ErrLeaseNotFound)
	renewed := must(worker.Renew(ctx, lease.ID, 2*time.Minute))
	if !renewed.ExpiresAt.After(lease.ExpiresAt) {
		t.Errorf("Renew did not move the expiry: %v -> %v", lease.ExpiresAt, renewed.ExpiresAt)
	}
	p := must(worker.ReportOutcome(ctx, lease.ID, pharox.Outcome{Kind: pharox.OutcomeFailure, Reason: "timeout"}))
	// A third of the pool is banned: the guard (MaxBannedShare 0.5 of 3
	// proxies) counts the failure but leaves the status to a probe.
	if p.ID != lease.ProxyID || p.FailureStreak != 1 || !strings.HasPrefix(p.LastError, "timeout (not marked inactive") {
		t.Errorf("ReportOutcome = %+v", p)
	}
	stats := must(worker.PoolStats(ctx, pool.ID))
	if stats.TotalProxies != 3 || stats.TotalLeases != 1 || stats.ByStatus[pharox.StatusBanned] != 1 {
		t.Errorf("PoolStats = %+v", stats)
	}
	leases := must(admin.ListLeases(ctx, pharox.LeaseQuery{PoolID: pool.ID, Status: pharox.LeaseActive}))
	if len(leases) != 1 || leases[0].ID != lease.ID {
		t.Fatalf("ListLeases = %v", leases)
	}
	err = admin.DeleteProxy(ctx, pool.ID, lease.ProxyID)
	wantErr(t, "delete a leased proxy", err, pharox.ErrInUse)
	err = admin.DeletePool(ctx, pool.ID)
	wantErr(t, "delete a pool in use", err, pharox.ErrInUse)

	released := must(worker.Release(ctx, lease.ID))
	if released.Status != pharox.LeaseReleased || released.ReleasedAt == nil {
		t.Fatalf("Release = %+v", released)
	}
	// Releasing again is a no-op that returns the lease as it ended.
	again := must(worker.Release(ctx, lease.ID))
	if again.Status != pharox.LeaseReleased || again.ReleasedAt == nil || !again.ReleasedAt.Equal(*released.ReleasedAt) {
		t.Fatalf("second Release = %+v, first %+v", again, released)
	}

	// WithLease releases even when fn fails.
	boom := errors.New("boom")
	var held uuid.UUID
	err = worker.WithLease(ctx, req, func(ctx context.Context, l *pharox.Lease) error {
		held = l.ID
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("WithLease = %v", err)
	}
	if got := must(worker.GetLease(ctx, held)); got.Status != pharox.LeaseReleased {
		t.Fatalf("lease after WithLease is %s", got.Status)
	}

	// Sweeping needs a health checker the test server does not have.
	_, err = admin.Sweep(ctx, pool.ID, api.SweepRequest{})
	wantErr(t, "sweep without checker", err, pharox.ErrUnsupported)

	// Auth.
	anon := newClient(t, url, "")
	_, err = anon.ListPools(ctx)
	wantErr(t, "no key", err, client.ErrUnauthorized)

	// Cleanup once nothing is leased.
	if err := admin.DeleteProxy(ctx, pool.ID, extra.ID); err != nil {
		t.Fatal(err)
	}
	if err := admin.DeletePool(ctx, pool.ID); err != nil {
		t.Fatal(err)
	}
	_, err = worker.PoolStats(ctx, pool.ID)
	wantErr(t, "stats of a deleted pool", err, pharox.ErrPoolNotFound)
}

// TestTargetsEndToEnd: a ban reported with a site through the client
// cools the proxy down for that site only, and PoolTargets and
// ProxyTargets read it back.
func TestTargetsEndToEnd(t *testing.T) {
	url := startServer(t)
	admin, consumer := newClient(t, url, adminKey), newClient(t, url, consumerKey)
	ctx := context.Background()
	pool := must(admin.CreatePool(ctx, "main", ""))
	must(admin.CreateProxy(ctx, pool.ID, &pharox.Proxy{Host: "10.1.0.1", Port: 80, Protocol: pharox.ProtocolHTTP}))
	must(admin.CreateProxy(ctx, pool.ID, &pharox.Proxy{Host: "10.1.0.2", Port: 80, Protocol: pharox.ProtocolHTTP}))

	req := must(client.NewAcquireRequest("main", &pharox.AcquireOptions{Target: "https://www.shop.example.com/"}))
	l := must(consumer.Acquire(ctx, req))
	first := l.Proxy // the one the site bans
	p := must(consumer.ReportOutcome(ctx, l.ID, pharox.Outcome{Kind: pharox.OutcomeBanned, StatusCode: 429, Target: "shop.example.com"}))
	if p.Status != pharox.StatusActive {
		t.Fatalf("a ban for one site made the proxy %s", p.Status)
	}
	must(consumer.Release(ctx, l.ID))
	again := must(consumer.Acquire(ctx, req))
	if again.ProxyID == first.ID {
		t.Fatal("leased the proxy cooling down for the site for it")
	}
	must(consumer.Release(ctx, again.ID))

	stats := must(admin.PoolTargets(ctx, pool.ID))
	if len(stats) != 1 || *stats[0] != (pharox.TargetStats{Target: "example.com", UsableProxies: 1, CoolingProxies: 1, BansLastHour: 1}) {
		t.Fatalf("PoolTargets = %+v", stats)
	}
	states := must(admin.ProxyTargets(ctx, pool.ID, first.ID))
	if len(states) != 1 || states[0].Target != "example.com" || !states[0].CoolingAt(time.Now()) || states[0].LastStatusCode != 429 {
		t.Fatalf("ProxyTargets = %+v", states)
	}
	if _, err := admin.PoolTargets(ctx, uuid.New()); !errors.Is(err, pharox.ErrPoolNotFound) {
		t.Fatalf("PoolTargets of an unknown pool: %v", err)
	}
	if _, err := admin.ProxyTargets(ctx, pool.ID, uuid.New()); !errors.Is(err, pharox.ErrProxyNotFound) {
		t.Fatalf("ProxyTargets of an unknown proxy: %v", err)
	}
	bad := api.AcquireRequest{PoolName: "main", Target: "exa mple.com"}
	if _, err := consumer.Acquire(ctx, bad); !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), `"exa mple.com"`) {
		t.Fatalf("acquire with a bad target: %v, want ErrInvalidArgument quoting it", err)
	}
}
