package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/storage/storagetest"
)

// TestFilterSQLMatchesReference checks the generated SQL against
// pharox.Filters.Match, the reference semantics, on random proxies and
// random nested filters.
func TestFilterSQLMatchesReference(t *testing.T) {
	s := newTestStore(t)
	storagetest.CheckFilterTranslation(t, s, func(ctx context.Context, poolID uuid.UUID, f *pharox.Filters) ([]uuid.UUID, error) {
		a := &args{}
		a.add(poolID)
		sql := s.q(`SELECT p.id FROM {s}.proxies p WHERE p.pool_id = $1 AND ` + filterSQL(f, "p", a))
		rows, err := s.pool.Query(ctx, sql, a.vals...)
		if err != nil {
			return nil, fmt.Errorf("%w\n%s", err, sql)
		}
		return pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	})
}

func TestFilterPredicateUnsupported(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	if _, err := s.CreatePool(ctx, pharox.Pool{Name: "p"}); err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	f := &pharox.Filters{AnyOf: []pharox.Filters{{Predicate: func(*pharox.Proxy) bool { return true }}}}
	_, err = s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Minute,
		Strategy: pharox.FirstAvailable, Filters: f})
	if !errors.Is(err, pharox.ErrUnsupported) {
		t.Fatalf("AcquireLease with a nested predicate: %v, want ErrUnsupported", err)
	}
	if _, err := s.FindAvailableProxy(ctx, "p", f, pharox.FirstAvailable); !errors.Is(err, pharox.ErrUnsupported) {
		t.Fatalf("FindAvailableProxy with a nested predicate: %v, want ErrUnsupported", err)
	}
}

// TestMigrateConcurrently starts several Migrate calls on one new schema at
// once: the advisory lock must make all of them succeed and apply each
// migration once.
func TestMigrateConcurrently(t *testing.T) {
	pool := testPool(t)
	schema := uniqueSchema()
	dropSchemaOnCleanup(t, pool, schema)
	ctx := context.Background()
	const n = 6
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = Migrate(ctx, pool, WithSchema(schema))
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Migrate #%d: %v", i, err)
		}
	}
	ms := migrations
	var rows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+quoteIdent(schema)+`.schema_migrations`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != len(ms) {
		t.Fatalf("schema_migrations has %d rows, want %d", rows, len(ms))
	}
	// Again, now with nothing to do.
	if err := Migrate(ctx, pool, WithSchema(schema)); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	if _, err := New(ctx, pool, WithSchema(schema)); err != nil {
		t.Fatalf("New after Migrate: %v", err)
	}
}

func TestNewNeedsMigrate(t *testing.T) {
	pool := testPool(t)
	schema := uniqueSchema()
	_, err := New(context.Background(), pool, WithSchema(schema))
	if err == nil || !strings.Contains(err.Error(), "Migrate") {
		t.Fatalf("New on an unmigrated schema: %v, want an error that says to call Migrate", err)
	}
}

// TestNewerSchemaRefused: a schema that a newer pharox migrated further is
// refused by New and Migrate, with both versions in the message.
func TestNewerSchemaRefused(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	want := latestVersion()
	if _, err := s.pool.Exec(ctx, s.q(`INSERT INTO {s}.schema_migrations (version, name) VALUES ($1, 'from_the_future.sql')`), want+1); err != nil {
		t.Fatal(err)
	}
	_, err := New(ctx, s.pool, WithSchema(s.Schema()))
	for _, part := range []string{fmt.Sprintf("version %d", want+1), fmt.Sprintf("up to %d", want)} {
		if !errors.Is(err, ErrSchemaTooNew) || !strings.Contains(err.Error(), part) {
			t.Fatalf("New on a schema at version %d: %v; want ErrSchemaTooNew naming %q", want+1, err, part)
		}
	}
	if err := Migrate(ctx, s.pool, WithSchema(s.Schema())); !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Migrate on a schema at version %d: %v; want ErrSchemaTooNew", want+1, err)
	}
}

func TestWithSchemaRejectsBadNames(t *testing.T) {
	for _, name := range []string{"", "Upper", "1abc", "a-b", `x"; DROP TABLE y; --`, strings.Repeat("a", 64)} {
		if _, err := buildConfig([]Option{WithSchema(name)}); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("WithSchema(%q): %v, want ErrInvalidArgument", name, err)
		}
	}
	if _, err := buildConfig([]Option{WithSchema("tenant_42")}); err != nil {
		t.Errorf("WithSchema(tenant_42): %v", err)
	}
}

func TestWithMaxBatchRange(t *testing.T) {
	for _, n := range []int{-1, 0, 1001} {
		if _, err := buildConfig([]Option{WithMaxBatch(n)}); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("WithMaxBatch(%d): %v, want ErrInvalidArgument", n, err)
		}
	}
	for _, n := range []int{1, 64, 1000} {
		if c, err := buildConfig([]Option{WithMaxBatch(n)}); err != nil || c.maxBatch != n {
			t.Errorf("WithMaxBatch(%d): %+v, %v", n, c, err)
		}
	}
	if c, _ := buildConfig(nil); c.maxBatch != DefaultMaxBatch {
		t.Errorf("default max batch %d, want %d", c.maxBatch, DefaultMaxBatch)
	}
}

// TestAcquireSkipsLockedProxy holds a row lock on the preferred proxy in an
// open transaction (as a slow cleanup or release would) and checks that an
// acquisition takes the next proxy instead of waiting.
func TestAcquireSkipsLockedProxy(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, c := seedPool(t, s, "skip", 2, 1)
	ps, err := s.ListProxies(ctx, pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.FindAvailableProxy(ctx, "skip", nil, pharox.FirstAvailable)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, s.q(`SELECT 1 FROM {s}.proxies WHERE id = $1 FOR UPDATE`), first.ID); err != nil {
		t.Fatal(err)
	}
	// Were the acquisition to wait for the lock, this deadline would end it.
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	l, err := s.AcquireLease(actx, pharox.AcquireRequest{PoolName: "skip", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.FirstAvailable})
	if err != nil {
		t.Fatalf("AcquireLease while the preferred proxy is locked: %v", err)
	}
	if l.ProxyID == first.ID || !slices.ContainsFunc(ps, func(p *pharox.Proxy) bool { return p.ID == l.ProxyID }) {
		t.Fatalf("leased %s; want the other proxy than the locked %s", l.ProxyID, first.ID)
	}
}

// TestAcquireRetriesWhileCandidateLocked: when the only free proxy is
// row-locked, one try misses, but with the default attempts the
// acquisition gets it once the lock is gone: its last try waits for the
// lock. The lock is released only once the acquisition is seen waiting
// for it, so the test depends on no timing.
func TestAcquireRetriesWhileCandidateLocked(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, c := seedPool(t, s, "retry", 1, 1)
	ps, err := s.ListProxies(ctx, pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	one, err := New(ctx, s.pool, WithSchema(s.Schema()), WithAcquireAttempts(1))
	if err != nil {
		t.Fatal(err)
	}
	req := pharox.AcquireRequest{PoolName: "retry", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.LeastUsed}

	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, s.q(`SELECT 1 FROM {s}.proxies WHERE id = $1 FOR UPDATE`), ps[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := one.AcquireLease(ctx, req); !errors.Is(err, pharox.ErrNoProxyAvailable) {
		_ = tx.Rollback(ctx)
		t.Fatalf("single try while the only proxy is locked: %v, want ErrNoProxyAvailable", err)
	}
	done := make(chan error, 1)
	go func() {
		l, err := s.AcquireLease(ctx, req)
		if err == nil && l.ProxyID != ps[0].ID {
			err = fmt.Errorf("leased %s, want %s", l.ProxyID, ps[0].ID)
		}
		done <- err
	}()
	waitForLockWaiter(t, s, tx)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("AcquireLease with retries: %v", err)
	}
}

// waitForLockWaiter returns once some other backend waits for a lock that
// the transaction tx holds (the test fails if none does within a minute).
func waitForLockWaiter(t *testing.T, s *Store, tx pgx.Tx) {
	t.Helper()
	var pid int
	if err := tx.QueryRow(context.Background(), `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	for range 6000 {
		var waiting bool
		if err := s.pool.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid)))`, pid).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no acquisition waited for the locked proxy within a minute")
}

// TestNaiveBaselineIsCorrect keeps the benchmark honest: the plain FOR
// UPDATE variant must be a correct store too, just slower. Like the
// benchmark it uses one strategy: with plain FOR UPDATE, acquisitions that
// lock rows in different orders can deadlock, one more reason for SKIP
// LOCKED.
func TestNaiveBaselineIsCorrect(t *testing.T) {
	s := newTestStore(t)
	s.naive = true
	ctx := context.Background()
	pool, c := seedPool(t, s, "naive", 3, 1)
	var wg sync.WaitGroup
	var failed sync.Map
	for g := range 8 {
		wg.Go(func() {
			for range 25 {
				l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "naive", ConsumerID: c.ID,
					Duration: time.Minute, Strategy: pharox.FirstAvailable})
				if errors.Is(err, pharox.ErrNoProxyAvailable) {
					continue
				}
				if err != nil {
					failed.Store(g, err)
					return
				}
				if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
					failed.Store(g, err)
					return
				}
			}
		})
	}
	wg.Wait()
	failed.Range(func(k, v any) bool { t.Errorf("goroutine %v: %v", k, v); return true })
	leases, err := s.ListLeases(ctx, pharox.LeaseQuery{PoolID: pool.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) == 0 {
		t.Fatal("no lease was taken")
	}
	maxc := map[uuid.UUID]int{}
	for _, l := range leases {
		maxc[l.ProxyID] = 1
	}
	storagetest.AuditLeases(t, leases, maxc)
}

// TestHealthSQLMatchesReference applies random result sequences both to a
// Go copy with pharox.Proxy.ApplyHealthCheck and through the store.
func TestHealthSQLMatchesReference(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, _ := seedPool(t, s, "health", 3, 1)
	ps, err := s.ListProxies(ctx, pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	base := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, p := range ps {
		ref := p.Clone()
		for i := range 40 {
			res := pharox.HealthCheckResult{
				ProxyID:          p.ID,
				Status:           pharox.AllProxyStatuses[r.IntN(4)],
				Latency:          time.Duration(r.IntN(5000)) * time.Millisecond,
				StatusCode:       []int{0, 200, 407, 503}[r.IntN(4)],
				CheckedAt:        base.Add(time.Duration(i) * time.Second),
				Error:            []string{"", "timeout", "refused"}[r.IntN(3)],
				FailureThreshold: r.IntN(4),
			}
			ref.ApplyHealthCheck(res)
			got, err := s.ApplyHealthCheckResult(ctx, res)
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != ref.Status || got.FailureStreak != ref.FailureStreak || got.LatencyMS != ref.LatencyMS ||
				got.LastError != ref.LastError || got.LastStatusCode != ref.LastStatusCode ||
				!got.CheckedAt.Equal(*ref.CheckedAt) || (got.StatusChangedAt == nil) != (ref.StatusChangedAt == nil) ||
				(got.StatusChangedAt != nil && !got.StatusChangedAt.Equal(*ref.StatusChangedAt)) {
				t.Fatalf("step %d (%+v):\nstore     %+v\nreference %+v", i, res, got, ref)
			}
		}
	}
	if p, err := s.ApplyHealthCheckResult(ctx, pharox.HealthCheckResult{ProxyID: uuid.New(), Status: pharox.StatusActive}); p != nil || err != nil {
		t.Fatalf("unknown proxy: %v, %v; want nil, nil", p, err)
	}
}

// TestLargeValues: 32-bit AS numbers above 2^31 round-trip and filter; a
// max_concurrency beyond the column's range is an invalid argument, not a
// driver error.
func TestLargeValues(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "big"})
	if err != nil {
		t.Fatal(err)
	}
	const asn = 4_200_000_000
	ps, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: "10.0.0.1", Port: 80, Protocol: pharox.ProtocolHTTP, ASN: ptrutil.Ptr(asn)}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.GetProxy(ctx, ps[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.ASN == nil || *got.ASN != asn {
		t.Fatalf("ASN = %v, want %d", got.ASN, asn)
	}
	p, err := s.FindAvailableProxy(ctx, "big", &pharox.Filters{ASN: ptrutil.Ptr(asn)}, pharox.FirstAvailable)
	if err != nil || p.ID != ps[0].ID {
		t.Fatalf("FindAvailableProxy(asn %d) = %v, %v", asn, p, err)
	}
	_, err = s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: "10.0.0.2", Port: 80, Protocol: pharox.ProtocolHTTP, MaxConcurrency: ptrutil.Ptr(1 << 40)}})
	if !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("AddProxies with max_concurrency 2^40: %v, want ErrInvalidArgument", err)
	}
}

// TestConcurrentCleanupsEndEachLeaseOnce runs several cleanups at once over
// many expired leases while acquisitions continue: every lease is ended by
// exactly one of them and every slot is freed exactly once.
func TestConcurrentCleanupsEndEachLeaseOnce(t *testing.T) {
	// With the default acquisition attempts: cleanup must never make an
	// acquisition fail.
	s := newTestStore(t)
	ctx := context.Background()
	pool, c := seedPool(t, s, "cleanup", 20, 3)
	req := pharox.AcquireRequest{PoolName: "cleanup", ConsumerID: c.ID, Duration: 50 * time.Millisecond, Strategy: pharox.Random}
	const n = 60 // every slot
	for range n {
		if _, err := s.AcquireLease(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(150 * time.Millisecond) // on the database clock too: same host
	var wg sync.WaitGroup
	counts := make([]int, 4)
	errs := make([]error, 4)
	for i := range counts {
		wg.Go(func() { counts[i], errs[i] = s.CleanupExpiredLeases(ctx) })
	}
	// Acquisitions meanwhile: each may reclaim expired leases itself.
	var acquired []*pharox.Lease
	for range 5 {
		l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "cleanup", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.FirstAvailable})
		if err != nil {
			t.Fatalf("AcquireLease during cleanup: %v", err)
		}
		acquired = append(acquired, l)
	}
	wg.Wait()
	total := 0
	for i := range counts {
		if errs[i] != nil {
			t.Fatalf("cleanup %d: %v", i, errs[i])
		}
		total += counts[i]
	}
	leases, err := s.ListLeases(ctx, pharox.LeaseQuery{PoolID: pool.ID, Status: pharox.LeaseExpired})
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != n {
		t.Fatalf("%d expired leases, want %d", len(leases), n)
	}
	// Cleanups report what they ended; acquisitions ended the rest.
	if total > n {
		t.Fatalf("cleanups reported %d leases ended, only %d expired", total, n)
	}
	ps, err := s.ListProxies(ctx, pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	sum := 0
	for _, p := range ps {
		sum += p.CurrentLeases
	}
	if sum != len(acquired) {
		t.Fatalf("proxies count %d leases, want the %d live ones", sum, len(acquired))
	}
}
