package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/storage/sqlite"
	_ "modernc.org/sqlite"
)

// open opens a store on a fresh file in t's temporary directory.
func open(t testing.TB, opts ...sqlite.Option) *sqlite.Store {
	t.Helper()
	return openPath(t, filepath.Join(t.TempDir(), "pharox.db"), opts...)
}

func openPath(t testing.TB, path string, opts ...sqlite.Option) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), path, opts...)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func req(pool string, c *pharox.Consumer) pharox.AcquireRequest {
	return pharox.AcquireRequest{PoolName: pool, ConsumerID: c.ID, ConsumerName: c.Name,
		Duration: time.Minute, Strategy: pharox.FirstAvailable}
}

// counterMismatches returns, for every proxy whose current_leases differs
// from its number of active lease rows, a description. It reads the file
// with its own connection, bypassing the store.
func counterMismatches(t testing.TB, path string) []string {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT p.id, p.current_leases,
		(SELECT count(*) FROM leases l WHERE l.proxy_id = p.id AND l.status = 'active')
		FROM proxies p`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var bad []string
	for rows.Next() {
		var (
			id          string
			counter, nb int
		)
		if err := rows.Scan(&id, &counter, &nb); err != nil {
			t.Fatal(err)
		}
		if counter != nb {
			bad = append(bad, fmt.Sprintf("proxy %s: current_leases=%d, active leases=%d", id, counter, nb))
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return bad
}

func integrityCheck(t testing.TB, path string) string {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var res string
	if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&res); err != nil {
		t.Fatal(err)
	}
	return res
}

func TestOpenRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	for _, path := range []string{"", "  ", ":memory:"} {
		if _, err := sqlite.Open(ctx, path); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("Open(%q) = %v, want ErrInvalidArgument", path, err)
		}
	}
	dir := t.TempDir()
	if _, err := sqlite.Open(ctx, filepath.Join(dir, "x.db"), sqlite.WithSynchronous("sometimes")); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Errorf("bad synchronous: %v, want ErrInvalidArgument", err)
	}
	if _, err := sqlite.Open(ctx, filepath.Join(dir, "missing", "x.db")); err == nil {
		t.Error("Open in a missing directory succeeded")
	}
}

func TestOpenOddFileName(t *testing.T) {
	// '?', '#' and '%' must reach the file system, not the DSN parser.
	path := filepath.Join(t.TempDir(), "a?b#c%20d.db")
	s := openPath(t, path)
	if got := s.Path(); got != path {
		t.Errorf("Path() = %q, want %q", got, path)
	}
	if _, err := s.CreatePool(context.Background(), pharox.Pool{Name: "p"}); err != nil {
		t.Fatal(err)
	}
	if res := integrityCheck(t, path); res != "ok" {
		t.Errorf("integrity_check on %s: %s", path, res)
	}
}

// latestSchema is the number of migration files, the version a fresh file
// ends at.
func latestSchema(t testing.TB) int {
	t.Helper()
	files, err := filepath.Glob("migrations/*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("migration files: %v, %v", files, err)
	}
	return len(files)
}

func TestMigrationsConcurrentOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pharox.db")
	latest := latestSchema(t)
	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	stores := make([]*sqlite.Store, n)
	for i := range n {
		wg.Go(func() { stores[i], errs[i] = sqlite.Open(context.Background(), path) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("open #%d: %v", i, errs[i])
		}
		defer stores[i].Close()
		v, err := stores[i].SchemaVersion(context.Background())
		if err != nil || v != latest {
			t.Errorf("store #%d: SchemaVersion = %d, %v; want %d", i, v, err, latest)
		}
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var rows int
	if err := db.QueryRow(`SELECT count(*) FROM schema_migrations`).Scan(&rows); err != nil || rows != latest {
		t.Errorf("schema_migrations has %d rows (%v), want %d", rows, err, latest)
	}
	var mode string
	if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q (%v), want wal", mode, err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pharox.db")
	s, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'future', 0)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := sqlite.Open(context.Background(), path); err == nil {
		t.Fatal("Open accepted a file with schema version 99")
	}
}

func TestPersistsAcrossReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "pharox.db")
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	pool, proxies := testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("persist")}, 3, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(1)})
	c := testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("worker")})
	r := req("persist", c)
	r.SessionKey, r.SessionTTL = "sess", time.Hour
	lease, err := s.AcquireLease(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	// Ban a proxy other than the leased one, so the session stays valid.
	banned := proxies[0]
	if banned.ID == lease.ProxyID {
		banned = proxies[1]
	}
	if _, err := s.ApplyHealthCheckResult(ctx, pharox.HealthCheckResult{
		ProxyID: banned.ID, Status: pharox.StatusBanned, CheckedAt: time.Now(), Error: "403",
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openPath(t, path)
	got, err := s.GetLease(ctx, lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != pharox.LeaseActive || got.ProxyID != lease.ProxyID || !got.AcquiredAt.Equal(lease.AcquiredAt) || !got.ExpiresAt.Equal(lease.ExpiresAt) {
		t.Errorf("lease after reopen = %+v, want %+v", got, lease)
	}
	p, err := s.GetProxy(ctx, banned.ID)
	if err != nil {
		t.Fatal(err)
	}
	if p.Status != pharox.StatusBanned || p.LastError != "403" {
		t.Errorf("health state lost: status %s, last error %q", p.Status, p.LastError)
	}
	st, err := s.GetPoolStats(ctx, pool.Name)
	if err != nil {
		t.Fatal(err)
	}
	if st.TotalLeases != 1 || st.TotalProxies != 3 || st.ByStatus[pharox.StatusBanned] != 1 {
		t.Errorf("stats after reopen = %+v", st)
	}
	// The session survives too: the same key comes back to the same proxy
	// once it is free again.
	if _, err := s.ReleaseLease(ctx, lease.ID, nil); err != nil {
		t.Fatal(err)
	}
	again, err := s.AcquireLease(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if again.ProxyID != lease.ProxyID {
		t.Errorf("sticky session after reopen went to %s, want %s", again.ProxyID, lease.ProxyID)
	}
}

func TestAcquireReleaseCounters(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	_, proxies := testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("p")}, 2, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(2)})
	c := testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("c")})
	var leases []*pharox.Lease
	for range 4 {
		l, err := s.AcquireLease(ctx, req("p", c))
		if err != nil {
			t.Fatal(err)
		}
		if l.Proxy == nil || l.Proxy.CurrentLeases < 1 {
			t.Fatalf("lease snapshot %+v does not count the new lease", l.Proxy)
		}
		leases = append(leases, l)
	}
	if _, err := s.AcquireLease(ctx, req("p", c)); !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("fifth acquire on 2x2 slots: %v, want ErrNoProxyAvailable", err)
	}
	for _, p := range proxies {
		got, err := s.GetProxy(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.CurrentLeases != 2 {
			t.Errorf("proxy %s: CurrentLeases = %d, want 2", p.ID, got.CurrentLeases)
		}
	}
	rel, err := s.ReleaseLease(ctx, leases[0].ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rel.Status != pharox.LeaseReleased || rel.ReleasedAt == nil || rel.ReleasedAt.Before(rel.AcquiredAt) {
		t.Errorf("released lease = %+v", rel)
	}
	if _, err := s.ReleaseLease(ctx, leases[0].ID, nil); !errors.Is(err, pharox.ErrLeaseNotActive) {
		t.Errorf("second release: %v, want ErrLeaseNotActive", err)
	}
	if _, err := s.ReleaseLease(ctx, uuid.New(), nil); !errors.Is(err, pharox.ErrLeaseNotFound) {
		t.Errorf("release unknown: %v, want ErrLeaseNotFound", err)
	}
	if _, err := s.AcquireLease(ctx, req("p", c)); err != nil {
		t.Errorf("acquire after release: %v", err)
	}
	r := req("nope", c)
	if _, err := s.AcquireLease(ctx, r); !errors.Is(err, pharox.ErrPoolNotFound) {
		t.Errorf("unknown pool: %v", err)
	}
	r = req("p", &pharox.Consumer{ID: uuid.New(), Name: "ghost"})
	if _, err := s.AcquireLease(ctx, r); !errors.Is(err, pharox.ErrConsumerNotFound) {
		t.Errorf("unknown consumer: %v", err)
	}
	if bad := counterMismatches(t, s.Path()); len(bad) > 0 {
		t.Errorf("counters: %v", bad)
	}
}

// fakeClock is a settable clock for expiry tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestExpiryReclaimedByAcquireAndReads(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, sqlite.WithClock(clock.Now))
	pool, proxies := testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("p")}, 1, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(1)})
	c := testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("c")})
	l1, err := s.AcquireLease(ctx, req("p", c))
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Minute)
	// Reads see the expired lease as ended and the slot as free.
	st, err := s.GetPoolStats(ctx, pool.Name)
	if err != nil {
		t.Fatal(err)
	}
	if st.TotalLeases != 0 || st.AvailableProxies != 1 {
		t.Errorf("stats after expiry: %+v", st)
	}
	got, err := s.GetLease(ctx, l1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != pharox.LeaseExpired || got.ReleasedAt == nil || !got.ReleasedAt.Equal(l1.ExpiresAt) {
		t.Errorf("expired lease = %+v", got)
	}
	if _, err := s.RenewLease(ctx, l1.ID, time.Minute); !errors.Is(err, pharox.ErrLeaseNotActive) {
		t.Errorf("renew expired: %v", err)
	}
	// Acquire reclaims inside its own transaction too.
	l2, err := s.AcquireLease(ctx, req("p", c))
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(30 * time.Second)
	r, err := s.RenewLease(ctx, l2.ID, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if want := clock.Now().Add(time.Minute); !r.ExpiresAt.Equal(want) {
		t.Errorf("renewed ExpiresAt = %v, want %v", r.ExpiresAt, want)
	}
	clock.Advance(2 * time.Minute)
	l3, err := s.AcquireLease(ctx, req("p", c))
	if err != nil {
		t.Fatalf("acquire over an expired lease: %v", err)
	}
	if l3.ProxyID != proxies[0].ID {
		t.Fatal("wrong proxy")
	}
	clock.Advance(2 * time.Minute)
	n, err := s.CleanupExpiredLeases(ctx)
	if err != nil || n != 1 {
		t.Errorf("CleanupExpiredLeases = %d, %v; want 1", n, err)
	}
	if bad := counterMismatches(t, s.Path()); len(bad) > 0 {
		t.Errorf("counters: %v", bad)
	}
	purged, err := s.PurgeEndedLeases(ctx, clock.Now())
	if err != nil || purged != 3 {
		t.Errorf("PurgeEndedLeases = %d, %v; want 3", purged, err)
	}
}

func TestCleanupManyBatches(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, sqlite.WithClock(clock.Now))
	testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("p")}, 1, nil)
	c := testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("c")})
	const n = 1234 // more than two reclaim batches
	for range n {
		if _, err := s.AcquireLease(ctx, req("p", c)); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(time.Hour)
	got, err := s.CleanupExpiredLeases(ctx)
	if err != nil || got != n {
		t.Fatalf("CleanupExpiredLeases = %d, %v; want %d", got, err, n)
	}
	if bad := counterMismatches(t, s.Path()); len(bad) > 0 {
		t.Errorf("counters: %v", bad)
	}
}

func TestStrategies(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	_, proxies := testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("p")}, 4, nil)
	c := testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("c")})
	// FirstAvailable: the most recently checked active proxy.
	now := time.Now()
	for i, p := range proxies[:3] {
		if _, err := s.ApplyHealthCheckResult(ctx, pharox.HealthCheckResult{
			ProxyID: p.ID, Status: pharox.StatusActive, CheckedAt: now.Add(time.Duration(i) * time.Second),
		}); err != nil {
			t.Fatal(err)
		}
	}
	l, err := s.AcquireLease(ctx, req("p", c))
	if err != nil {
		t.Fatal(err)
	}
	if l.ProxyID != proxies[2].ID {
		t.Errorf("first_available chose %s, want the latest checked %s", l.ProxyID, proxies[2].ID)
	}
	// LeastUsed then avoids that one.
	r := req("p", c)
	r.Strategy = pharox.LeastUsed
	seen := map[uuid.UUID]int{}
	for range 8 {
		l, err := s.AcquireLease(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		seen[l.ProxyID]++
	}
	// 1 + 8 leases over 4 proxies: least-used levels them to 3,2,2,2.
	all, err := s.ListProxies(ctx, proxies[0].PoolID)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range all {
		if p.CurrentLeases < 2 || p.CurrentLeases > 3 {
			t.Errorf("least_used left proxy %s with %d leases", p.ID, p.CurrentLeases)
		}
	}
	// RoundRobin: id order, wrapping.
	r.Strategy = pharox.RoundRobin
	var order []uuid.UUID
	for range 8 {
		l, err := s.AcquireLease(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, l.ProxyID)
	}
	for i := range order {
		if want := all[i%4].ID; order[i] != want {
			t.Fatalf("round_robin #%d = %s, want %s (order %v)", i, order[i], want, order)
		}
	}
	// Random reaches every proxy eventually (exact SQL path and scan path).
	for _, f := range []*pharox.Filters{nil, {Predicate: func(*pharox.Proxy) bool { return true }}} {
		r.Strategy, r.Filters = pharox.Random, f
		hit := map[uuid.UUID]bool{}
		for i := 0; i < 400 && len(hit) < 4; i++ {
			l, err := s.AcquireLease(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			hit[l.ProxyID] = true
		}
		if len(hit) != 4 {
			t.Errorf("random (filters %v) reached %d of 4 proxies in 400 draws", f, len(hit))
		}
	}
}

func TestFilters(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "geo"})
	if err != nil {
		t.Fatal(err)
	}
	in := []pharox.Proxy{
		{Host: "1.1.1.1", Country: "AR", City: "Buenos Aires", Latitude: ptrutil.Ptr(-34.6), Longitude: ptrutil.Ptr(-58.4), Tags: []string{"res", "fast"}},
		{Host: "1.1.1.2", Country: "UY", City: "Montevideo", Latitude: ptrutil.Ptr(-34.9), Longitude: ptrutil.Ptr(-56.2), Tags: []string{"res"}},
		{Host: "1.1.1.3", Country: "US", City: "New York", Latitude: ptrutil.Ptr(40.7), Longitude: ptrutil.Ptr(-74.0)},
		{Host: "1.1.1.4", Country: "FJ", Latitude: ptrutil.Ptr(-17.8), Longitude: ptrutil.Ptr(179.9)},
		{Host: "1.1.1.5", Country: "AR"},
	}
	for i := range in {
		in[i].PoolID, in[i].Port, in[i].Protocol = pool.ID, 80, pharox.ProtocolSOCKS5
	}
	stored, err := s.AddProxies(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	cases := []pharox.Filters{
		{Country: "AR"},
		{Tags: []string{"res"}},
		{Tags: []string{"res", "fast"}},
		{Latitude: ptrutil.Ptr(-34.6), Longitude: ptrutil.Ptr(-58.4), RadiusKM: ptrutil.Ptr(250.0)},
		{Latitude: ptrutil.Ptr(-34.6), Longitude: ptrutil.Ptr(-58.4), RadiusKM: ptrutil.Ptr(100.0)},
		{Latitude: ptrutil.Ptr(-34.6), Longitude: ptrutil.Ptr(-58.4)},
		{Latitude: ptrutil.Ptr(-17.8), Longitude: ptrutil.Ptr(-179.9), RadiusKM: ptrutil.Ptr(50.0)}, // across the antimeridian
		{Latitude: ptrutil.Ptr(89.0), Longitude: ptrutil.Ptr(0.0), RadiusKM: ptrutil.Ptr(20000.0)},
		{AnyOf: []pharox.Filters{{Country: "US"}, {City: "Montevideo"}}},
		{NoneOf: []pharox.Filters{{Country: "AR"}}, Protocol: pharox.ProtocolSOCKS5},
		{AllOf: []pharox.Filters{{Country: "AR"}, {Tags: []string{"fast"}}}},
		{Predicate: func(p *pharox.Proxy) bool { return p.Host == "1.1.1.4" }},
		{Protocol: pharox.ProtocolHTTP},
	}
	for i, fl := range cases {
		want := map[uuid.UUID]bool{}
		for _, p := range stored {
			if fl.Match(p) {
				want[p.ID] = true
			}
		}
		got, err := s.FindAvailableProxy(ctx, "geo", &fl, pharox.FirstAvailable)
		if len(want) == 0 {
			if !errors.Is(err, pharox.ErrNoProxyAvailable) {
				t.Errorf("case %d: FindAvailableProxy = %v, %v; want ErrNoProxyAvailable", i, got, err)
			}
			continue
		}
		if err != nil || !want[got.ID] {
			t.Errorf("case %d: FindAvailableProxy = %v, %v; want one of %v", i, got, err, want)
		}
		// Random must pick only matching proxies and, over draws, all of them.
		hit := map[uuid.UUID]bool{}
		for range 60 {
			p, err := s.FindAvailableProxy(ctx, "geo", &fl, pharox.Random)
			if err != nil || !want[p.ID] {
				t.Fatalf("case %d: random FindAvailableProxy = %v, %v", i, p, err)
			}
			hit[p.ID] = true
		}
		if len(hit) != len(want) {
			t.Errorf("case %d: random reached %d of %d matches", i, len(hit), len(want))
		}
	}
}

func TestStickySession(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, sqlite.WithClock(clock.Now))
	testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("p")}, 3, nil)
	c := testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("c")})
	r := req("p", c)
	r.Strategy, r.SessionKey, r.SessionTTL = pharox.RoundRobin, "user-1", time.Minute
	first, err := s.AcquireLease(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		l, err := s.AcquireLease(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if l.ProxyID != first.ProxyID || l.SessionKey != "user-1" {
			t.Fatalf("sticky lease went to %s, want %s", l.ProxyID, first.ProxyID)
		}
	}
	// A binding to a proxy that is no longer a candidate moves.
	if _, err := s.SetProxyStatus(ctx, first.ProxyID, pharox.StatusBanned); err != nil {
		t.Fatal(err)
	}
	moved, err := s.AcquireLease(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if moved.ProxyID == first.ProxyID {
		t.Fatal("session stayed on a banned proxy")
	}
	again, err := s.AcquireLease(ctx, r)
	if err != nil || again.ProxyID != moved.ProxyID {
		t.Fatalf("rebound session: %v, %v; want %s", again, err, moved.ProxyID)
	}
	// After the TTL the binding is dead: round robin chooses afresh.
	clock.Advance(2 * time.Minute)
	if _, err := s.CleanupExpiredLeases(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := s.AcquireLease(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := s.AcquireLease(ctx, r)
	if err != nil || back.ProxyID != after.ProxyID {
		t.Fatalf("new binding not kept: %v, %v", back, err)
	}
}

func TestDeleteRules(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	pool, proxies := testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("p")}, 2, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(1)})
	c := testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("c")})
	l, err := s.AcquireLease(ctx, req("p", c))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteProxy(ctx, l.ProxyID); !errors.Is(err, pharox.ErrInUse) {
		t.Errorf("DeleteProxy in use: %v", err)
	}
	if err := s.DeletePool(ctx, pool.ID); !errors.Is(err, pharox.ErrInUse) {
		t.Errorf("DeletePool in use: %v", err)
	}
	if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteProxy(ctx, l.ProxyID); err != nil {
		t.Errorf("DeleteProxy: %v", err)
	}
	if _, err := s.GetLease(ctx, l.ID); !errors.Is(err, pharox.ErrLeaseNotFound) {
		t.Errorf("ended lease of a deleted proxy: %v", err)
	}
	if err := s.DeletePool(ctx, pool.ID); err != nil {
		t.Errorf("DeletePool: %v", err)
	}
	if _, err := s.GetProxy(ctx, proxies[1].ID); !errors.Is(err, pharox.ErrProxyNotFound) {
		t.Errorf("proxy of a deleted pool: %v", err)
	}
	if err := s.DeletePool(ctx, pool.ID); !errors.Is(err, pharox.ErrPoolNotFound) {
		t.Errorf("DeletePool twice: %v", err)
	}
}

func TestAddProxiesAllOrNothing(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	pool, seeded := testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("p")}, 1, nil)
	batch := []pharox.Proxy{
		{PoolID: pool.ID, Host: "9.9.9.9", Port: 1, Protocol: pharox.ProtocolHTTP},
		{PoolID: pool.ID, Host: seeded[0].Host, Port: seeded[0].Port, Protocol: pharox.ProtocolHTTP},
	}
	if _, err := s.AddProxies(ctx, batch); !errors.Is(err, pharox.ErrAlreadyExists) {
		t.Fatalf("duplicate: %v", err)
	}
	list, err := s.ListProxies(ctx, pool.ID)
	if err != nil || len(list) != 1 {
		t.Fatalf("after failed batch: %d proxies, %v; want 1", len(list), err)
	}
	batch[1] = pharox.Proxy{PoolID: uuid.New(), Host: "9.9.9.8", Port: 1, Protocol: pharox.ProtocolHTTP}
	if _, err := s.AddProxies(ctx, batch); !errors.Is(err, pharox.ErrPoolNotFound) {
		t.Fatalf("unknown pool: %v", err)
	}
	batch[1] = pharox.Proxy{PoolID: pool.ID, Host: "9.9.9.8", Port: 0, Protocol: pharox.ProtocolHTTP}
	if _, err := s.AddProxies(ctx, batch); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("invalid port: %v", err)
	}
	batch[1] = pharox.Proxy{PoolID: pool.ID, Host: "9.9.9.9", Port: 1, Protocol: pharox.ProtocolHTTP, Credentials: &pharox.Credentials{User: "", Password: "secret"}}
	_, err = s.AddProxies(ctx, batch)
	if !errors.Is(err, pharox.ErrAlreadyExists) {
		t.Fatalf("same identity in one batch: %v", err)
	}
	if err != nil && containsSecret(err.Error()) {
		t.Errorf("error leaks the password: %v", err)
	}
}

func containsSecret(s string) bool {
	for i := 0; i+6 <= len(s); i++ {
		if s[i:i+6] == "secret" {
			return true
		}
	}
	return false
}

// TestConcurrentStoresNoOverLease runs goroutines against two stores on one
// file (two independent sets of SQLite connections, so the file lock is what
// serialises them) and checks, at every moment, that no proxy is held beyond
// its max concurrency.
func TestConcurrentStoresNoOverLease(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "pharox.db")
	a := openPath(t, path)
	b := openPath(t, path)
	_, proxies := testfactory.PoolWithProxies(t.Context(), t, a, &testfactory.PoolOpts{Name: ptrutil.Ptr("p")}, 5, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(2)})
	limit := map[uuid.UUID]int{}
	holders := map[uuid.UUID]*atomic.Int32{}
	for _, p := range proxies {
		limit[p.ID] = 2
		holders[p.ID] = new(atomic.Int32)
	}
	ca := testfactory.Consumer(t.Context(), t, a, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("a")})
	cb := testfactory.Consumer(t.Context(), t, b, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("b")})
	var (
		wg       sync.WaitGroup
		over     atomic.Int32
		acquired atomic.Int32
	)
	strategies := []pharox.Strategy{pharox.FirstAvailable, pharox.LeastUsed, pharox.RoundRobin, pharox.Random}
	for g := range 8 {
		s, c := pharox.Storage(a), ca
		if g%2 == 1 {
			s, c = b, cb
		}
		wg.Go(func() {
			r := req("p", c)
			r.Strategy = strategies[g%len(strategies)]
			for range 60 {
				l, err := s.AcquireLease(ctx, r)
				if errors.Is(err, pharox.ErrNoProxyAvailable) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				acquired.Add(1)
				if n := holders[l.ProxyID].Add(1); int(n) > limit[l.ProxyID] {
					over.Add(1)
				}
				holders[l.ProxyID].Add(-1)
				if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if over.Load() > 0 {
		t.Errorf("%d acquisitions exceeded max concurrency", over.Load())
	}
	if acquired.Load() == 0 {
		t.Fatal("no acquisition succeeded")
	}
	if bad := counterMismatches(t, path); len(bad) > 0 {
		t.Errorf("counters: %v", bad)
	}
	leases, err := a.ListLeases(ctx, pharox.LeaseQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != int(acquired.Load()) {
		t.Errorf("%d lease rows, %d acquisitions", len(leases), acquired.Load())
	}
}

func TestCopies(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	_, proxies := testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("p")}, 1, nil)
	proxies[0].Host = "mutated"
	got, err := s.GetProxy(ctx, proxies[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Host == "mutated" {
		t.Error("mutating a returned proxy changed the store")
	}
}

// TestSchemaGuards checks the invariants the schema itself enforces, so
// that even a write that bypasses the store (a bug, a hand-run SQL shell)
// cannot break them.
func TestSchemaGuards(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	pool, proxies := testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("p")}, 1, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(1)})
	c := testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("c")})
	l, err := s.AcquireLease(ctx, req("p", c))
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", s.Path()+"?_pragma=foreign_keys(1)&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// A second lease on the exclusive proxy: the counting trigger runs
	// into the max_concurrency CHECK.
	_, err = db.Exec(`INSERT INTO leases (id, proxy_id, pool_id, pool_name, consumer_id, consumer_name,
		status, acquired_at, expires_at) VALUES (?, ?, ?, 'p', ?, 'c', 'active', 0, 9e15)`,
		uuid.NewString(), proxies[0].ID.String(), pool.ID.String(), c.ID.String())
	if err == nil {
		t.Error("raw insert of a lease beyond max_concurrency succeeded")
	}
	if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE leases SET status = 'active' WHERE id = ?`, l.ID.String()); err == nil {
		t.Error("an ended lease became active again")
	}
	if _, err := db.Exec(`UPDATE proxies SET current_leases = -1 WHERE id = ?`, proxies[0].ID.String()); err == nil {
		t.Error("a negative counter was accepted")
	}
	// Counting is done by the database: a raw insert and delete keep the
	// counter right.
	id := uuid.NewString()
	if _, err := db.Exec(`INSERT INTO leases (id, proxy_id, pool_id, pool_name, consumer_id, consumer_name,
		status, acquired_at, expires_at) VALUES (?, ?, ?, 'p', ?, 'c', 'active', 0, 9e15)`,
		id, proxies[0].ID.String(), pool.ID.String(), c.ID.String()); err != nil {
		t.Fatal(err)
	}
	if bad := counterMismatches(t, s.Path()); len(bad) > 0 {
		t.Errorf("after raw insert: %v", bad)
	}
	if _, err := db.Exec(`DELETE FROM leases WHERE id = ?`, id); err != nil {
		t.Fatal(err)
	}
	if bad := counterMismatches(t, s.Path()); len(bad) > 0 {
		t.Errorf("after raw delete: %v", bad)
	}
}

func TestListLeasesFilters(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	a, pa := testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("a")}, 2, nil)
	if _, err := s.CreatePool(ctx, pharox.Pool{Name: "b"}); err != nil {
		t.Fatal(err)
	}
	b, err := s.GetPoolByName(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: b.ID, Host: "b.example", Port: 1, Protocol: pharox.ProtocolHTTP}}); err != nil {
		t.Fatal(err)
	}
	c1, c2 := testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("c1")}), testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("c2")})
	var inA []*pharox.Lease
	for i := range 6 {
		c := c1
		if i%2 == 1 {
			c = c2
		}
		l, err := s.AcquireLease(ctx, req("a", c))
		if err != nil {
			t.Fatal(err)
		}
		inA = append(inA, l)
		if _, err := s.AcquireLease(ctx, req("b", c)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.ReleaseLease(ctx, inA[0].ID, nil); err != nil {
		t.Fatal(err)
	}
	got, err := s.ListLeases(ctx, pharox.LeaseQuery{PoolID: a.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(inA) {
		t.Fatalf("pool a: %d leases, want %d", len(got), len(inA))
	}
	for i := range got {
		if got[i].ID != inA[i].ID {
			t.Errorf("pool a lease #%d = %s, want %s (oldest first)", i, got[i].ID, inA[i].ID)
		}
	}
	for _, q := range []struct {
		q    pharox.LeaseQuery
		want int
	}{
		{pharox.LeaseQuery{PoolID: a.ID, Status: pharox.LeaseActive}, 5},
		{pharox.LeaseQuery{PoolID: a.ID, ConsumerID: c1.ID}, 3},
		{pharox.LeaseQuery{ProxyID: pa[0].ID}, -1},
		{pharox.LeaseQuery{ConsumerID: c2.ID}, 6},
		{pharox.LeaseQuery{Status: pharox.LeaseReleased}, 1},
		{pharox.LeaseQuery{Limit: 4}, 4},
		{pharox.LeaseQuery{}, 12},
	} {
		got, err := s.ListLeases(ctx, q.q)
		if err != nil {
			t.Fatal(err)
		}
		want := q.want
		if want < 0 { // every lease of that proxy
			want = 0
			for _, l := range inA {
				if l.ProxyID == pa[0].ID {
					want++
				}
			}
		}
		if len(got) != want {
			t.Errorf("ListLeases(%+v) = %d leases, want %d", q.q, len(got), want)
		}
	}
}

func TestPurgeEndedLeasesByTime(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, sqlite.WithClock(clock.Now))
	testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("p")}, 1, nil)
	c := testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("c")})
	acquire := func() *pharox.Lease {
		t.Helper()
		l, err := s.AcquireLease(ctx, req("p", c))
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	old := acquire()  // released at +1s
	long := acquire() // acquired early, still active at the purge
	clock.Advance(time.Second)
	if _, err := s.ReleaseLease(ctx, old.ID, nil); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	cut := clock.Now()
	recent := acquire() // released after the cut
	clock.Advance(time.Second)
	if _, err := s.ReleaseLease(ctx, recent.ID, nil); err != nil {
		t.Fatal(err)
	}
	n, err := s.PurgeEndedLeases(ctx, cut)
	if err != nil || n != 1 {
		t.Fatalf("PurgeEndedLeases = %d, %v; want 1", n, err)
	}
	if _, err := s.GetLease(ctx, old.ID); !errors.Is(err, pharox.ErrLeaseNotFound) {
		t.Errorf("old lease: %v, want purged", err)
	}
	for _, l := range []*pharox.Lease{long, recent} {
		if _, err := s.GetLease(ctx, l.ID); err != nil {
			t.Errorf("lease %s: %v, want kept", l.ID, err)
		}
	}
}

func TestPanickingPredicate(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("p")}, 2, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(1)})
	c := testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("c")})
	r := req("p", c)
	r.Filters = &pharox.Filters{Predicate: func(*pharox.Proxy) bool { panic("boom") }}
	for _, st := range pharox.AllStrategies {
		r.Strategy = st
		if _, err := s.AcquireLease(ctx, r); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", st, err)
		}
	}
	// The write connection was released: the store still works.
	if _, err := s.AcquireLease(ctx, req("p", c)); err != nil {
		t.Fatalf("acquire after a panicking predicate: %v", err)
	}
}
