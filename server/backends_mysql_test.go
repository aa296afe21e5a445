package server_test

import (
	"context"
	"database/sql"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/server/servertest"
	"github.com/pharox/pharox/storage/mysql"
	"github.com/pharox/pharox/storage/open"
)

// envMySQLURL points the tests at a MySQL or MariaDB server.
const envMySQLURL = "PHAROX_TEST_MYSQL_URL"

// TestContractMySQL runs the HTTP contract over MySQL/MariaDB, each store
// under its own table prefix, its tables dropped afterwards.
func TestContractMySQL(t *testing.T) {
	base := backendMySQLURL(t)
	admin := backendMySQLAdmin(t, base)
	servertest.Run(t, func(t *testing.T) pharox.Storage {
		return backendOpenMySQL(t, admin, base, backendNamespace("pxsrv_")+"_")
	})
}

// TestMultiProcessMySQL checks that two service processes sharing one set
// of MySQL tables never over-lease under concurrent load through HTTP.
func TestMultiProcessMySQL(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	base := backendMySQLURL(t)
	admin := backendMySQLAdmin(t, base)
	prefix := backendNamespace("pxsrvmp_") + "_"
	// The parent migrates the tables before the children open them.
	s := backendOpenMySQL(t, admin, base, prefix)
	mpRun(t, s, backendWithParams(t, base, "prefix", prefix))
}

// backendMySQLURL returns PHAROX_TEST_MYSQL_URL or skips the test.
func backendMySQLURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(envMySQLURL)
	if u == "" {
		t.Skipf("%s is not set: skipping MySQL server tests (e.g. %s=mysql://root@127.0.0.1:3306/test)", envMySQLURL, envMySQLURL)
	}
	return u
}

// backendMySQLAdmin returns a small pool, closed when t ends, for dropping
// tables.
func backendMySQLAdmin(t testing.TB, base string) *sql.DB {
	t.Helper()
	dsn, err := mysql.DSNFromURL(base)
	if err != nil {
		t.Fatalf("%s: %v", envMySQLURL, err)
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatalf("connect to %s: %v", envMySQLURL, err)
	}
	db.SetMaxOpenConns(2)
	// Registered first, so it runs after every table has been dropped.
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// backendDropMySQLTables drops the tables of the store under prefix.
func backendDropMySQLTables(t testing.TB, admin *sql.DB, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := admin.QueryContext(ctx, `SELECT table_name FROM information_schema.tables
		WHERE table_schema = DATABASE() AND table_name LIKE ? ORDER BY table_name = ? DESC, table_name = ? DESC`,
		strings.ReplaceAll(prefix, "_", `\_`)+"%", prefix+"proxy_targets", prefix+"proxies")
	if err != nil {
		t.Errorf("list tables %s*: %v", prefix, err)
		return
	}
	var names []string
	for rows.Next() {
		var n string
		if rows.Scan(&n) == nil {
			names = append(names, "`"+n+"`")
		}
	}
	rows.Close()
	if len(names) == 0 {
		return
	}
	// proxy_targets, then proxies first: their foreign keys refer to
	// proxies and pools.
	if _, err := admin.ExecContext(ctx, "DROP TABLE IF EXISTS "+strings.Join(names, ", ")); err != nil {
		t.Errorf("drop tables %s*: %v", prefix, err)
	}
}

// backendOpenMySQL opens (and migrates) a store under prefix through
// open.Open; the store is closed and its tables dropped when t ends.
func backendOpenMySQL(t testing.TB, admin *sql.DB, base, prefix string) pharox.Storage {
	t.Helper()
	// Registered before the store's Close, so it runs after it.
	t.Cleanup(func() { backendDropMySQLTables(t, admin, prefix) })
	s, err := open.Open(backendOpenContext(t), backendWithParams(t, base, "prefix", prefix))
	if err != nil {
		t.Fatalf("open mysql prefix %s: %v", prefix, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}
