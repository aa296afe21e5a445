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

	"github.com/pharox/pharox/storage/mysql"
	"github.com/pharox/pharox/storage/postgres"
	"github.com/pharox/pharox/storage/sqlite"
)

// sqlExec runs one statement on the store's database and returns the
// single integer a query answers (0 for a statement).
type sqlExec func(t *testing.T, query string) int

// checkMigrate runs the migrate life cycle on a store that does not exist
// yet: print shows every migration, Migrate applies them, print then shows
// none and Open works; a version row above the latest makes Migrate, print
// and Open refuse the store with ErrSchemaTooNew naming both versions.
func checkMigrate(t *testing.T, url, versionTable string, db sqlExec) {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	if err := WritePendingMigrations(ctx, &b, url); err != nil {
		t.Fatalf("WritePendingMigrations on a new store: %v", err)
	}
	if !strings.Contains(b.String(), "\n-- 0001_init.sql\n") || !strings.Contains(b.String(), "schema_migrations") {
		t.Fatalf("pending SQL of a new store lacks 0001_init.sql or its record:\n%s", b.String())
	}
	if err := Migrate(ctx, url); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	b.Reset()
	if err := WritePendingMigrations(ctx, &b, url); err != nil || !strings.Contains(b.String(), "No pending migration") {
		t.Fatalf("WritePendingMigrations after Migrate: %q, %v", b.String(), err)
	}
	s, err := Open(ctx, url)
	if err != nil {
		t.Fatalf("Open after Migrate: %v", err)
	}
	s.Close()

	latest := db(t, "SELECT max(version) FROM "+versionTable)
	db(t, fmt.Sprintf("INSERT INTO %s (version, name, applied_at) VALUES (%d, 'from_the_future', %s)", versionTable, latest+1,
		map[bool]string{true: "0", false: "CURRENT_TIMESTAMP"}[strings.HasPrefix(url, "sqlite")]))
	wantNewer := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, postgres.ErrSchemaTooNew) || !errors.Is(err, sqlite.ErrSchemaTooNew) || !errors.Is(err, mysql.ErrSchemaTooNew) {
			t.Fatalf("%s on a schema at version %d: %v; want ErrSchemaTooNew", what, latest+1, err)
		}
		for _, part := range []string{fmt.Sprintf("version %d", latest+1), fmt.Sprintf("up to %d", latest)} {
			if !strings.Contains(err.Error(), part) {
				t.Errorf("%s: %q does not name %q", what, err, part)
			}
		}
	}
	wantNewer("Migrate", Migrate(ctx, url))
	wantNewer("WritePendingMigrations", WritePendingMigrations(ctx, &b, url))
	_, err = Open(ctx, url)
	wantNewer("Open", err)
}

func TestMigrateSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.db")
	checkMigrate(t, "sqlite://"+path, "schema_migrations", func(t *testing.T, query string) int {
		db, err := sql.Open("sqlite", path)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		return queryInt(t, db, query)
	})
}

func TestMigratePostgres(t *testing.T) {
	url := os.Getenv("PHAROX_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("PHAROX_TEST_POSTGRES_URL is not set; set it to a PostgreSQL URL to run this test")
	}
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	schema := fmt.Sprintf("migrate_test_%d", time.Now().UnixNano())
	t.Cleanup(func() { pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE") })
	sep := map[bool]string{true: "&", false: "?"}[strings.Contains(url, "?")]
	checkMigrate(t, url+sep+"schema="+schema, schema+".schema_migrations", func(t *testing.T, query string) int {
		var n int
		if strings.HasPrefix(query, "SELECT") {
			if err := pool.QueryRow(context.Background(), query).Scan(&n); err != nil {
				t.Fatalf("%s: %v", query, err)
			}
			return n
		}
		if _, err := pool.Exec(context.Background(), query); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		return 0
	})
}

func TestMigrateMySQL(t *testing.T) {
	url := os.Getenv("PHAROX_TEST_MYSQL_URL")
	if url == "" {
		t.Skip("PHAROX_TEST_MYSQL_URL is not set; set it to a MySQL URL (mysql://root@127.0.0.1:3306/test) to run this test")
	}
	dsn, err := mysql.DSNFromURL(url)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	prefix := fmt.Sprintf("migtest%d_", time.Now().UnixNano())
	t.Cleanup(func() {
		rows, err := db.Query(`SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name LIKE ?`, prefix+"%")
		if err != nil {
			return
		}
		var tables []string
		for rows.Next() {
			var n string
			rows.Scan(&n)
			tables = append(tables, n)
		}
		rows.Close()
		db.Exec("SET FOREIGN_KEY_CHECKS = 0")
		for _, n := range tables {
			db.Exec("DROP TABLE IF EXISTS " + n)
		}
	})
	sep := map[bool]string{true: "&", false: "?"}[strings.Contains(url, "?")]
	checkMigrate(t, url+sep+"prefix="+prefix, prefix+"schema_migrations", func(t *testing.T, query string) int {
		return queryInt(t, db, query)
	})
}

func TestMigrateStoresWithoutSchema(t *testing.T) {
	for _, url := range []string{"memory://", "redis://127.0.0.1:1/0"} {
		if err := Migrate(context.Background(), url); !errors.Is(err, ErrNoMigrations) {
			t.Errorf("Migrate(%s) = %v, want ErrNoMigrations", url, err)
		}
	}
}

func queryInt(t *testing.T, db *sql.DB, query string) int {
	t.Helper()
	if !strings.HasPrefix(query, "SELECT") {
		if _, err := db.Exec(query); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		return 0
	}
	var n int
	if err := db.QueryRow(query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}
