package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/sqlite"
)

// testClock is a settable clock for WithClock.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// wantRefusal checks that err is a *QuotaError for limit, retrying after
// retry (the clock stands still; the request bucket's float arithmetic
// may add a nanosecond).
func wantRefusal(t *testing.T, what string, err error, limit string, retry time.Duration) {
	t.Helper()
	qe, ok := errors.AsType[*pharox.QuotaError](err)
	if !ok {
		t.Fatalf("%s: err = %v, want a *QuotaError (%s)", what, err, limit)
	}
	if qe.Limit != limit || (qe.RetryAfter-retry).Abs() > time.Microsecond {
		t.Fatalf("%s: refused by %s retrying after %v, want %s after %v", what, qe.Limit, qe.RetryAfter, limit, retry)
	}
}

// TestQuotaPeriodsFollowTheClock runs the byte and request limits across
// the end of a day and of a month on the store's clock: the counters roll
// as pharox.Quota.RollPeriods says, a proxy whose allowance was used up is
// leased again once its period ended (its stale allowance_until no longer
// holds it back), and a new quota counts only the buckets of its day and
// month.
func TestQuotaPeriodsFollowTheClock(t *testing.T) {
	ctx := context.Background()
	clock := &testClock{t: time.Date(2026, 1, 31, 23, 30, 0, 0, time.UTC)}
	s := open(t, sqlite.WithClock(clock.now))
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "clock"})
	if err != nil {
		t.Fatal(err)
	}
	one := 1
	ps, err := s.AddProxies(ctx, []pharox.Proxy{
		{PoolID: pool.ID, Host: "10.9.0.1", Port: 80, Protocol: pharox.ProtocolHTTP, MaxConcurrency: &one},
		{PoolID: pool.ID, Host: "10.9.0.2", Port: 80, Protocol: pharox.ProtocolHTTP, MaxConcurrency: &one},
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "clocked")
	if err != nil {
		t.Fatal(err)
	}
	r := req("clock", c)
	setQuota := func(q pharox.Quota) *pharox.Quota {
		t.Helper()
		out, err := s.SetQuota(ctx, q)
		if err != nil {
			t.Fatalf("SetQuota(%s): %v", q.Subject, err)
		}
		return out
	}
	setQuota(pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: c.ID,
		QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1000, BytesPerMonth: 1500}})
	for _, p := range ps {
		setQuota(pharox.Quota{Subject: pharox.QuotaProxy, SubjectID: p.ID, QuotaLimits: pharox.QuotaLimits{BytesPerDay: 100}})
	}

	// 23:30 on January 31: one lease spends both the consumer's day and
	// its proxy's allowance.
	l, err := s.AcquireLease(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	spent := l.ProxyID
	if _, err := s.ReleaseLease(ctx, l.ID, &pharox.Usage{Requests: 1, BytesSent: 200, BytesReceived: 1000}); err != nil {
		t.Fatal(err)
	}
	_, err = s.AcquireLease(ctx, r)
	wantRefusal(t, "at 23:30, 1200 bytes at 1000 a day", err, pharox.LimitBytesPerDay, 30*time.Minute)
	q, err := s.GetQuota(ctx, pharox.QuotaProxy, spent)
	if err != nil {
		t.Fatal(err)
	}
	if until := q.ExhaustedUntil(clock.now()); !until.Equal(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("the spent proxy's allowance resets at %v, want midnight", until)
	}

	// 00:00 on February 1: a new day and month. The consumer is admitted
	// and the spent proxy is a candidate again.
	clock.set(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC))
	got, err := s.GetQuota(ctx, pharox.QuotaConsumer, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.BytesToday != 0 || got.BytesThisMonth != 0 || !got.Day.Equal(clock.now()) || !got.Month.Equal(clock.now()) {
		t.Fatalf("GetQuota after midnight = day %v %d bytes, month %v %d bytes; want both rolled to 0", got.Day, got.BytesToday, got.Month, got.BytesThisMonth)
	}
	held := map[uuid.UUID]bool{}
	var leases []*pharox.Lease
	for range 2 {
		l, err := s.AcquireLease(ctx, r)
		if err != nil {
			t.Fatalf("AcquireLease after midnight: %v", err)
		}
		held[l.ProxyID] = true
		leases = append(leases, l)
	}
	if !held[spent] {
		t.Fatalf("after midnight the proxy spent yesterday was not leased: %v", held)
	}
	// 700 bytes on each: 1400 today, then 1400 this month.
	for _, l := range leases {
		if _, err := s.ReleaseLease(ctx, l.ID, &pharox.Usage{BytesReceived: 700}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = s.AcquireLease(ctx, r)
	wantRefusal(t, "1400 bytes on February 1", err, pharox.LimitBytesPerDay, 24*time.Hour)
	_, err = s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "clock", ConsumerID: uuid.New(), Duration: time.Minute, Strategy: pharox.FirstAvailable})
	if !errors.Is(err, pharox.ErrConsumerNotFound) {
		t.Fatalf("AcquireLease for an unknown consumer: %v", err)
	}
	other, err := s.EnsureConsumer(ctx, "unlimited")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AcquireLease(ctx, req("clock", other)); !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("AcquireLease with both proxies over their allowance: %v, want ErrNoProxyAvailable", err)
	}

	// The next day the day's limit is back but the month's (1500) is not
	// far: 200 more bytes cross it, and the month's end is the wait.
	clock.set(time.Date(2026, 2, 2, 12, 0, 0, 0, time.UTC))
	l, err = s.AcquireLease(ctx, r)
	if err != nil {
		t.Fatalf("AcquireLease on February 2: %v", err)
	}
	if _, err := s.ReleaseLease(ctx, l.ID, &pharox.Usage{BytesSent: 200}); err != nil {
		t.Fatal(err)
	}
	_, err = s.AcquireLease(ctx, r)
	wantRefusal(t, "1600 bytes in February at 1500 a month", err, pharox.LimitBytesPerMonth,
		time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC).Sub(clock.now()))

	// A new quota counts the buckets of its day and month only: January's
	// 1200 bytes are not February's.
	clock.set(time.Date(2026, 2, 2, 13, 0, 0, 0, time.UTC))
	pq := setQuota(pharox.Quota{Subject: pharox.QuotaPool, SubjectID: pool.ID, QuotaLimits: pharox.QuotaLimits{BytesPerMonth: 1 << 40}})
	if pq.BytesToday != 200 || pq.BytesThisMonth != 1600 {
		t.Fatalf("new pool quota on February 2: %d bytes today, %d this month; want 200, 1600", pq.BytesToday, pq.BytesThisMonth)
	}
}

// TestRequestBucketFollowsTheClock: a bucket of 2 per minute, emptied,
// refuses for exactly the time one token takes to come back, and a
// refused acquisition takes nothing.
func TestRequestBucketFollowsTheClock(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2026, 3, 10, 8, 0, 0, 0, time.UTC)
	clock := &testClock{t: start}
	s := open(t, sqlite.WithClock(clock.now))
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "rpm"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: "10.9.1.1", Port: 80, Protocol: pharox.ProtocolHTTP}}); err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "rated")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: c.ID,
		QuotaLimits: pharox.QuotaLimits{RequestsPerMinute: 2}}); err != nil {
		t.Fatal(err)
	}
	r := req("rpm", c)
	for range 2 {
		if _, err := s.AcquireLease(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		_, err = s.AcquireLease(ctx, r)
		wantRefusal(t, "a third acquisition in the minute", err, pharox.LimitRequestsPerMinute, 30*time.Second)
	}
	clock.set(start.Add(20 * time.Second))
	_, err = s.AcquireLease(ctx, r)
	wantRefusal(t, "20s later", err, pharox.LimitRequestsPerMinute, 10*time.Second)
	clock.set(start.Add(30 * time.Second))
	if _, err := s.AcquireLease(ctx, r); err != nil {
		t.Fatalf("AcquireLease once a token is back: %v", err)
	}
	q, err := s.GetQuota(ctx, pharox.QuotaConsumer, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if q.Tokens != 0 || !q.TokensAt.Equal(clock.now()) {
		t.Fatalf("bucket after the token was taken: %v tokens at %v, want 0 at %v", q.Tokens, q.TokensAt, clock.now())
	}
}

// TestMigrationKeepsLeases migrates a file written at schema version 5:
// its leases read with no target and no usage, and one of them released
// with a report counts.
func TestMigrationKeepsLeases(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "pharox.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join("migrations", "*.sql"))
	if err != nil {
		t.Fatal(err)
	}
	for v, name := range files[:5] {
		body, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(string(body)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := db.Exec(`INSERT INTO schema_migrations VALUES (?, ?, 0)`, v+1, filepath.Base(name)); err != nil {
			t.Fatal(err)
		}
	}
	poolID, proxyID, consumerID, leaseID := uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString()
	far := time.Now().Add(time.Hour).UnixMicro()
	for _, stmt := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO pools (id, name, created_at) VALUES (?, 'old', 0)`, []any{poolID}},
		{`INSERT INTO proxies (id, pool_id, host, port, protocol, status, created_at) VALUES (?, ?, '10.9.2.1', 80, 'http', 'active', 0)`, []any{proxyID, poolID}},
		{`INSERT INTO consumers (id, name, created_at) VALUES (?, 'old', 0)`, []any{consumerID}},
		{`INSERT INTO leases (id, proxy_id, pool_id, pool_name, consumer_id, consumer_name, status, acquired_at, expires_at)
			VALUES (?, ?, ?, 'old', ?, 'old', 'active', 0, ?)`, []any{leaseID, proxyID, poolID, consumerID, far}},
	} {
		if _, err := db.Exec(stmt.sql, stmt.args...); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	s := openPath(t, path)
	if v, err := s.SchemaVersion(ctx); err != nil || v != len(files) {
		t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, len(files))
	}
	l, err := s.GetLease(ctx, uuid.MustParse(leaseID))
	if err != nil {
		t.Fatal(err)
	}
	if l.Target != "" || l.Usage != nil {
		t.Fatalf("a lease from before the migration reads Target %q, Usage %v; want none", l.Target, l.Usage)
	}
	u := pharox.Usage{Requests: 2, BytesSent: 30, BytesReceived: 40}
	rel, err := s.ReleaseLease(ctx, l.ID, &u)
	if err != nil {
		t.Fatal(err)
	}
	if rel.Usage == nil || *rel.Usage != u {
		t.Fatalf("released lease Usage = %v, want %+v", rel.Usage, u)
	}
	rows, err := s.QueryUsage(ctx, pharox.UsageQuery{GroupBy: pharox.UsageByPool})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].Key != poolID || rows[0].Leases != 1 || rows[0].Usage != u {
		t.Fatalf("QueryUsage by pool = %+v, want one row for %s with %+v", rows, poolID, u)
	}
}

// TestCapAddedToAQuota: leases taken while a consumer's quota had no cap
// count once a cap is set on it, in whatever pool they were taken (their
// acquisitions did not mark them for the count; SetQuota does).
func TestCapAddedToAQuota(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	c, err := s.EnsureConsumer(ctx, "later-capped")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b"} {
		pool, err := s.CreatePool(ctx, pharox.Pool{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.AddProxies(ctx, []pharox.Proxy{
			{PoolID: pool.ID, Host: "10.9.3.1", Port: 80, Protocol: pharox.ProtocolHTTP},
		}); err != nil {
			t.Fatal(err)
		}
	}
	quota := func(l pharox.QuotaLimits) {
		t.Helper()
		if _, err := s.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: c.ID, QuotaLimits: l}); err != nil {
			t.Fatal(err)
		}
	}
	quota(pharox.QuotaLimits{BytesPerDay: 1 << 40})
	for _, pool := range []string{"a", "b"} {
		if _, err := s.AcquireLease(ctx, req(pool, c)); err != nil {
			t.Fatal(err)
		}
	}
	quota(pharox.QuotaLimits{BytesPerDay: 1 << 40, MaxConcurrentLeases: 2})
	_, err = s.AcquireLease(ctx, req("a", c))
	wantRefusal(t, "two leases held, taken before the cap", err, pharox.LimitMaxConcurrentLeases, time.Second)
	quota(pharox.QuotaLimits{MaxConcurrentLeases: 3})
	if _, err := s.AcquireLease(ctx, req("b", c)); err != nil {
		t.Fatalf("AcquireLease under a cap of 3 with 2 held: %v", err)
	}
	_, err = s.AcquireLease(ctx, req("a", c))
	wantRefusal(t, "three leases held", err, pharox.LimitMaxConcurrentLeases, time.Second)
}
