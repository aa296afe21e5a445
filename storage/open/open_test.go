package open

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	goredis "github.com/redis/go-redis/v9"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/redistest"
	"github.com/pharox/pharox/storage/mysql"
	"github.com/pharox/pharox/storage/sqlite"
)

// roundTrip proves the store behind url works and, when reopen is set,
// that a second Open of the same URL sees the same data.
func roundTrip(t *testing.T, url string, reopen bool) {
	t.Helper()
	ctx := context.Background()
	s, err := Open(ctx, url)
	if err != nil {
		t.Fatalf("Open(%s): %v", Redact(url), err)
	}
	name := fmt.Sprintf("open-%d", time.Now().UnixNano())
	pool, err := pharox.BootstrapPool(ctx, s, name, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pharox.BootstrapProxy(ctx, s, pool, pharox.Proxy{Host: "10.0.0.1", Port: 8080, Protocol: pharox.ProtocolHTTP}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !reopen {
		return
	}
	s2, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		s2.DeletePool(ctx, pool.ID)
		s2.Close()
	}()
	lease, err := pharox.NewManager(s2).Acquire(ctx, name, nil)
	if err != nil {
		t.Fatalf("reopened store lost the pool: %v", err)
	}
	if lease.Proxy.Host != "10.0.0.1" {
		t.Fatalf("reopened store: %+v", lease.Proxy)
	}
	if _, err := s2.ReleaseLease(ctx, lease.ID, nil); err != nil {
		t.Fatal(err)
	}
}

func TestOpenMemoryAndSQLite(t *testing.T) {
	roundTrip(t, "memory://", false)
	roundTrip(t, "sqlite://"+filepath.Join(t.TempDir(), "p.db"), true)
}

func TestOpenPostgres(t *testing.T) {
	url := os.Getenv("PHAROX_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("PHAROX_TEST_POSTGRES_URL is not set; set it to a PostgreSQL URL to run this test")
	}
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	schema := fmt.Sprintf("open_test_%d", time.Now().UnixNano())
	t.Cleanup(func() {
		pool, err := pgxpool.New(context.Background(), url)
		if err != nil {
			return
		}
		defer pool.Close()
		pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
	})
	// max_batch is pharox's own: passed on, the server would refuse it as
	// an unknown run-time parameter.
	roundTrip(t, url+sep+"schema="+schema+"&max_batch=8", true)
}

func TestOpenRedis(t *testing.T) {
	url := os.Getenv("PHAROX_TEST_REDIS_URL")
	if url == "" {
		t.Skip("PHAROX_TEST_REDIS_URL is not set; set it to a Redis URL to run this test")
	}
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	prefix := fmt.Sprintf("opentest%d:", time.Now().UnixNano())
	t.Cleanup(func() {
		// Consumers outlive pools by design, so remove every key of the run.
		opt, err := goredis.ParseURL(url)
		if err != nil {
			return
		}
		rdb := goredis.NewClient(opt)
		defer rdb.Close()
		redistest.DeletePrefix(t, rdb, prefix)
	})
	// goredis.ParseURL refuses parameters it does not know: max_batch is
	// taken out before.
	roundTrip(t, url+sep+"prefix="+prefix+"&max_batch=8", true)
}

func TestOpenMySQL(t *testing.T) {
	url := os.Getenv("PHAROX_TEST_MYSQL_URL")
	if url == "" {
		t.Skip("PHAROX_TEST_MYSQL_URL is not set; set it to a MySQL URL (mysql://root@127.0.0.1:3306/test) to run this test")
	}
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	prefix := fmt.Sprintf("opentest%d_", time.Now().UnixNano())
	t.Cleanup(func() {
		dsn, err := mysql.DSNFromURL(url)
		if err != nil {
			return
		}
		db, err := sql.Open("mysql", dsn)
		if err != nil {
			return
		}
		defer db.Close()
		// proxies first: its foreign key refers to pools.
		for _, table := range []string{"proxies", "pools", "pool_cursors", "consumers", "leases", "sessions", "schema_migrations"} {
			db.Exec("DROP TABLE IF EXISTS " + prefix + table)
		}
	})
	// prefix is pharox's own: passed on, the server would take it for a
	// session variable and refuse it.
	roundTrip(t, url+sep+"prefix="+prefix, true)
}

func TestOpenRejectsBadURLs(t *testing.T) {
	ctx := context.Background()
	for _, u := range []string{"", "pharox.db", "mysql://x", "sqlite://", "postgres://u:secret@[bad",
		"postgres://u:secret@h/db?max_batch=0", "postgres://u:secret@h/db?max_batch=many", "redis://:secret@h/0?max_batch=-3",
		"mysql://u:secret@h", "mysql://u:secret@h/db?prefix=Bad-Prefix", "mysql://u:secret@h/db?max_batch=4",
		"mongodb://u:secret@h/db?prefix=Bad-Prefix", "mongodb://u:secret@h/db?max_batch=4", "mongodb://u:secret@h:port/db"} {
		_, err := Open(ctx, u)
		if !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("Open(%q): %v, want ErrInvalidArgument", u, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q) error leaks the password: %v", u, err)
		}
	}
	if got := Redact("postgres://u:pw@h/db"); got != "postgres://u:xxxxx@h/db" {
		t.Errorf("Redact: %s", got)
	}
}

// TestSQLiteSynchronousFull: the service's default store syncs every
// commit, so an OS crash or power loss cannot forget an acknowledged lease
// and hand its slot out again.
func TestSQLiteSynchronousFull(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "pharox.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, ok := s.(*sqlite.Store)
	if !ok {
		t.Fatalf("Open(sqlite://...) = %T, want *sqlite.Store", s)
	}
	if mode, err := st.Synchronous(ctx); err != nil || mode != "FULL" {
		t.Fatalf("sqlite store from Open: synchronous = %q, %v; want FULL", mode, err)
	}
}
