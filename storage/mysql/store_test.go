package mysql

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/storagetest"
)

// envURL names the variable that points the tests at a MySQL or MariaDB
// server.
const envURL = "PHAROX_TEST_MYSQL_URL"

// testDSN returns the driver DSN of PHAROX_TEST_MYSQL_URL, or skips.
func testDSN(t testing.TB) string {
	t.Helper()
	raw := os.Getenv(envURL)
	if raw == "" {
		t.Skipf("%s is not set: skipping MySQL tests (e.g. %s=mysql://root@127.0.0.1:3306/test)", envURL, envURL)
	}
	dsn, err := DSNFromURL(raw)
	if err != nil {
		t.Fatalf("%s: %v", envURL, err)
	}
	return dsn
}

var (
	adminOnce sync.Once
	adminDB   *sql.DB
	adminErr  error
)

// testAdmin returns a small pool, shared by the package's tests, for
// dropping tables.
func testAdmin(t testing.TB) *sql.DB {
	t.Helper()
	dsn := testDSN(t)
	adminOnce.Do(func() {
		cfg, err := mysql.ParseDSN(dsn)
		if err != nil {
			adminErr = err
			return
		}
		cfg.ParseTime = true
		cfg.Loc = time.UTC
		conn, err := mysql.NewConnector(cfg)
		if err != nil {
			adminErr = err
			return
		}
		adminDB = sql.OpenDB(conn)
		adminDB.SetMaxOpenConns(4)
	})
	if adminErr != nil {
		t.Fatalf("connect to %s: %v", envURL, adminErr)
	}
	return adminDB
}

// uniquePrefix returns a fresh table prefix for one test.
func uniquePrefix() string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return "pxt_" + hex.EncodeToString(b[:]) + "_"
}

// dropTablesOnCleanup drops every table whose name starts with prefix when
// t ends.
func dropTablesOnCleanup(t testing.TB, prefix string) {
	admin := testAdmin(t)
	t.Cleanup(func() { dropTables(t, admin, prefix) })
}

func dropTables(t testing.TB, admin *sql.DB, prefix string) {
	ctx := context.Background()
	rows, err := admin.QueryContext(ctx, `SELECT table_name FROM information_schema.tables
		WHERE table_schema = DATABASE() AND table_name LIKE ?
		ORDER BY table_name = ? DESC, table_name = ? DESC`, strings.ReplaceAll(prefix, "_", `\_`)+"%", prefix+"proxy_targets", prefix+"proxies")
	if err != nil {
		t.Errorf("list tables %s*: %v", prefix, err)
		return
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err == nil {
			names = append(names, "`"+n+"`")
		}
	}
	rows.Close()
	if len(names) == 0 {
		return
	}
	// proxy_targets, then proxies first: their foreign keys refer to
	// proxies and pools.
	stmt := "DROP TABLE IF EXISTS "
	for i, n := range names {
		if i > 0 {
			stmt += ", "
		}
		stmt += n
	}
	if _, err := admin.ExecContext(ctx, stmt); err != nil {
		t.Errorf("drop tables %s*: %v", prefix, err)
	}
}

// newTestStore opens a store on fresh tables, dropped when t ends.
func newTestStore(t testing.TB, opts ...Option) *Store {
	t.Helper()
	dsn := testDSN(t)
	prefix := uniquePrefix()
	dropTablesOnCleanup(t, prefix)
	opts = append([]Option{WithTablePrefix(prefix), WithMaxConns(4)}, opts...)
	s, err := Open(context.Background(), dsn, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	testDSN(t)
	storagetest.Run(t, func(t *testing.T) pharox.Storage { return newTestStore(t) }, storagetest.WithCapabilities(capabilities))
}

// runConformance runs the suite with a 1,000-proxy large pool, for the
// extra store configurations: TestConformance runs the full 20,000.
func runConformance(t *testing.T, newStore func(t *testing.T) pharox.Storage) {
	testDSN(t)
	storagetest.Run(t, newStore, storagetest.WithCapabilities(capabilities), storagetest.WithLargePoolSize(1000,
		"TestConformance runs the 20,000-proxy section on the same SQL; this run covers another store configuration"))
}

// TestMultiProcess runs storagetest's multi-process audit: 4 worker
// processes of 16 goroutines each lease from one pool of 10 proxies with
// max_concurrency 2 through one shared set of tables, some of them as
// consumers capped at 2 concurrent leases.
func TestMultiProcess(t *testing.T) {
	dsn := testDSN(t)
	storagetest.RunMultiProcess(t, storagetest.MultiProcessConfig{
		Processes:      4,
		Goroutines:     16,
		Proxies:        10,
		MaxConcurrency: 2,
		Duration:       4 * time.Second,
		ConsumerCap:    2,
		Open: func(t testing.TB, namespace string) pharox.Storage {
			prefix := namespace + "_"
			if !storagetest.IsWorkerProcess() {
				dropTablesOnCleanup(t, prefix)
			}
			// Workers open (and so migrate) too: concurrent Migrate calls
			// are safe. 8 connections for 16 goroutines.
			s, err := Open(context.Background(), dsn, WithTablePrefix(prefix), WithMaxConns(8))
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			t.Cleanup(func() { _ = s.Close() })
			return s
		},
	})
}

// capabilities are the MySQL store's answers where the contract lets
// stores differ.
var capabilities = storagetest.Capabilities{
	LateRelease: storagetest.LateReleaseReleases,
	Predicates:  storagetest.PredicatesRefused,
}
