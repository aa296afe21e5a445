package mysql

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// TestMigrateConcurrently starts several Migrate calls on one prefix at
// once, each on its own connection pool as separate processes would: the
// named lock makes exactly one apply each migration.
func TestMigrateConcurrently(t *testing.T) {
	dsn := testDSN(t)
	prefix := uniquePrefix()
	dropTablesOnCleanup(t, prefix)
	ctx := context.Background()
	const n = 6
	dbs := make([]*sql.DB, n)
	for i := range dbs {
		db, err := sql.Open("mysql", dsn)
		if err != nil {
			t.Fatal(err)
		}
		db.SetMaxOpenConns(2)
		t.Cleanup(func() { db.Close() })
		dbs[i] = db
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = Migrate(ctx, dbs[i], WithTablePrefix(prefix))
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Migrate #%d: %v", i, err)
		}
	}
	var rows int
	if err := dbs[0].QueryRowContext(ctx, `SELECT count(*) FROM `+prefix+`schema_migrations`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if want := latestVersion(); rows != want {
		t.Fatalf("schema_migrations has %d rows, want %d", rows, want)
	}
	if err := Migrate(ctx, dbs[0], WithTablePrefix(prefix)); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
}

func TestNewNeedsMigrate(t *testing.T) {
	db := testAdmin(t)
	_, err := New(context.Background(), db, WithTablePrefix(uniquePrefix()))
	if err == nil || !strings.Contains(err.Error(), "Migrate") {
		t.Fatalf("New on unmigrated tables: %v, want an error that says to call Migrate", err)
	}
}

func TestNewNeedsParseTime(t *testing.T) {
	db, err := sql.Open("mysql", testDSN(t)) // no parseTime
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	_, err = New(context.Background(), db)
	if !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), "parseTime") {
		t.Fatalf("New without parseTime: %v, want ErrInvalidArgument naming parseTime", err)
	}
}

// TestConformanceNew runs the suite on stores from New, over one shared
// pool the caller owns: the path that sets READ COMMITTED per transaction.
func TestConformanceNew(t *testing.T) {
	admin := testAdmin(t)
	// (storagetest.Run is in store_test.go's TestConformance; this one
	// keeps the large pool small: the Open run already covers it.)
	runConformance(t, func(t *testing.T) pharox.Storage {
		prefix := uniquePrefix()
		dropTablesOnCleanup(t, prefix)
		ctx := context.Background()
		if err := Migrate(ctx, admin, WithTablePrefix(prefix)); err != nil {
			t.Fatalf("Migrate: %v", err)
		}
		s, err := New(ctx, admin, WithTablePrefix(prefix))
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

func TestWithTablePrefixRejectsBadNames(t *testing.T) {
	for _, p := range []string{"", "Pharox_", "1x", "a-b", "x y", strings.Repeat("a", 33)} {
		if _, err := buildConfig([]Option{WithTablePrefix(p)}); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("WithTablePrefix(%q): %v, want ErrInvalidArgument", p, err)
		}
	}
}

func TestDSNFromURL(t *testing.T) {
	for in, want := range map[string]string{
		"mysql://root@127.0.0.1:3306/test":         "root@tcp(127.0.0.1:3306)/test",
		"mysql://u:p%40ss@db/app?tls=true":         "u:p@ss@tcp(db:3306)/app?tls=true",
		"mariadb://u@[::1]:3307/x?charset=utf8mb4": "u@tcp([::1]:3307)/x?charset=utf8mb4",
	} {
		got, err := DSNFromURL(in)
		if err != nil || got != want {
			t.Errorf("DSNFromURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"mysql://", "mysql://h", "mysql://h/", "postgres://h/db", "mysql://h/db?tls=maybe"} {
		if _, err := DSNFromURL(in); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("DSNFromURL(%q): %v, want ErrInvalidArgument", in, err)
		}
	}
}

// TestLongFieldsAreInvalidArguments checks that a value longer than its
// column is refused with a sentence naming the field, not a database
// error.
func TestLongFieldsAreInvalidArguments(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "long", Description: strings.Repeat("d", 100000)})
	if err != nil {
		t.Fatalf("CreatePool with a long description: %v", err)
	}
	for name, p := range map[string]pharox.Proxy{
		"city":      {City: strings.Repeat("c", 300)},
		"user name": {Credentials: &pharox.Credentials{User: strings.Repeat("u", 300), Password: "pw"}},
	} {
		p.PoolID, p.Host, p.Port, p.Protocol = pool.ID, "10.0.0.1", 8080, pharox.ProtocolHTTP
		_, err := s.AddProxies(ctx, []pharox.Proxy{p})
		if !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), name) {
			t.Errorf("AddProxies with a long %s: %v, want ErrInvalidArgument naming it", name, err)
		}
	}
	// Long free text and passwords fit.
	p := pharox.Proxy{PoolID: pool.ID, Host: "10.0.0.2", Port: 8080, Protocol: pharox.ProtocolHTTP,
		Credentials: &pharox.Credentials{User: "u", Password: strings.Repeat("p", 5000)},
		Tags:        []string{strings.Repeat("t", 2000), "ünïcode", "a\"quote"}}
	got, err := s.AddProxies(ctx, []pharox.Proxy{p})
	if err != nil {
		t.Fatalf("AddProxies with long password and tags: %v", err)
	}
	back, err := s.GetProxy(ctx, got[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if back.Credentials.Password != p.Credentials.Password || len(back.Tags) != 3 || back.Tags[2] != "a\"quote" {
		t.Fatalf("round trip changed the proxy: %+v", back)
	}
}

// TestAcquireSkipsLockedProxy holds the row lock of the proxy
// first_available would choose and checks that an acquisition takes the
// next one instead of waiting for it.
func TestAcquireSkipsLockedProxy(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "skip"})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := s.AddProxies(ctx, []pharox.Proxy{
		{PoolID: pool.ID, Host: "10.0.0.1", Port: 1, Protocol: pharox.ProtocolHTTP},
		{PoolID: pool.ID, Host: "10.0.0.2", Port: 2, Protocol: pharox.ProtocolHTTP},
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.FindAvailableProxy(ctx, "skip", nil, pharox.FirstAvailable)
	if err != nil {
		t.Fatal(err)
	}
	holder, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	var id string
	if err := holder.QueryRowContext(ctx, s.q(`SELECT id FROM {p}proxies WHERE id = ? FOR UPDATE`), idArg(first.ID)).Scan(&id); err != nil {
		t.Fatal(err)
	}
	// Generous: the acquisition must not wait for the holder at all, and
	// the holder never lets go before it returns.
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	l, err := s.AcquireLease(actx, pharox.AcquireRequest{PoolName: "skip", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.FirstAvailable})
	if err != nil {
		t.Fatalf("AcquireLease while the first proxy is row-locked: %v", err)
	}
	other := ps[0].ID
	if other == first.ID {
		other = ps[1].ID
	}
	if l.ProxyID != other {
		t.Fatalf("leased %s, want the unlocked proxy %s", l.ProxyID, other)
	}
}

// TestNaiveBaselineIsCorrect checks the benchmarks' FOR UPDATE baseline
// leases correctly, so that comparing against it is fair.
func TestNaiveBaselineIsCorrect(t *testing.T) {
	s := newTestStore(t)
	s.naive = true
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "naive"})
	if err != nil {
		t.Fatal(err)
	}
	one := 1
	var in []pharox.Proxy
	for i := range 3 {
		in = append(in, pharox.Proxy{PoolID: pool.ID, Host: "10.0.0.1", Port: 100 + i, Protocol: pharox.ProtocolHTTP, MaxConcurrency: &one})
	}
	if _, err := s.AddProxies(ctx, in); err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	req := pharox.AcquireRequest{PoolName: "naive", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.LeastUsed}
	seen := map[uuid.UUID]bool{}
	for range 3 {
		l, err := s.AcquireLease(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		seen[l.ProxyID] = true
	}
	if len(seen) != 3 {
		t.Fatalf("3 exclusive leases on %d proxies, want 3", len(seen))
	}
	if _, err := s.AcquireLease(ctx, req); !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("4th lease: %v, want ErrNoProxyAvailable", err)
	}
}
