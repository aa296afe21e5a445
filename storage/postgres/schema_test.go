package postgres

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"
)

// Test schemas, in the manner of River's riverdbtest.TestSchema. Creating
// and migrating a schema costs tens of milliseconds, more than most tests,
// so a test takes a migrated schema from the process's free list and gives
// it back emptied (every table but schema_migrations truncated) when it
// ends; only when the list is empty is a new one made. The names carry the
// process's start time, pharox_test_YYYYMMDD_HHMMSS_PID_N, so that the
// first test of a run drops the schemas that crashed runs left behind
// (older than staleSchemaAge, whatever their process) without touching
// those of runs still going. TestMain drops the process's own at the end.

// staleSchemaAge is how old a dated test schema must be before another
// run drops it: longer than any test run.
const staleSchemaAge = 3 * time.Hour

// testSchemaPrefix starts every dated test schema's name.
const testSchemaPrefix = "pharox_test_"

var testSchemas = &schemaPool{
	run: fmt.Sprintf("%s%s_%d_", testSchemaPrefix, time.Now().UTC().Format("20060102_150405"), os.Getpid()),
}

// schemaPool holds this process's migrated test schemas.
type schemaPool struct {
	run       string // name prefix of this process's schemas
	n         atomic.Int64
	dropStale sync.Once

	mu   sync.Mutex
	free []string
	all  []string
}

// take returns a migrated, empty schema for t and gives it back when t
// ends.
func (p *schemaPool) take(t testing.TB, pool *pgxpool.Pool) string {
	t.Helper()
	ctx := context.Background()
	p.dropStale.Do(func() { dropStaleSchemas(t, pool) })
	p.mu.Lock()
	var schema string
	if n := len(p.free); n > 0 {
		schema, p.free = p.free[n-1], p.free[:n-1]
	}
	p.mu.Unlock()
	if schema == "" {
		schema = fmt.Sprintf("%s%d", p.run, p.n.Add(1))
		if err := Migrate(ctx, pool, WithSchema(schema)); err != nil {
			t.Fatalf("Migrate %s: %v", schema, err)
		}
		p.mu.Lock()
		p.all = append(p.all, schema)
		p.mu.Unlock()
	}
	t.Cleanup(func() { p.give(t, pool, schema) })
	return schema
}

// give empties schema and puts it back on the free list; a schema a test
// changed beyond its rows (a schema_migrations row from the future, a
// dropped table) is dropped instead.
func (p *schemaPool) give(t testing.TB, pool *pgxpool.Pool, schema string) {
	ctx := context.Background()
	if err := resetSchema(ctx, pool, schema); err != nil {
		t.Logf("test schema %s not reused (%v): dropped", schema, err)
		if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+quoteIdent(schema)+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
		return
	}
	p.mu.Lock()
	p.free = append(p.free, schema)
	p.mu.Unlock()
}

// resetSchema truncates every table of schema but schema_migrations, after
// checking that the schema is still at this binary's version.
func resetSchema(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	v, err := schemaVersion(ctx, pool, schema)
	if err != nil {
		return err
	}
	if v != latestVersion() {
		return fmt.Errorf("at version %d, not %d", v, latestVersion())
	}
	rows, err := pool.Query(ctx, `SELECT quote_ident(table_name) FROM information_schema.tables
		WHERE table_schema = $1 AND table_type = 'BASE TABLE' AND table_name <> 'schema_migrations'`, schema)
	if err != nil {
		return err
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	if len(tables) == 0 {
		return fmt.Errorf("no tables")
	}
	q := quoteIdent(schema) + "."
	_, err = pool.Exec(ctx, "TRUNCATE "+q+strings.Join(tables, ", "+q)+" RESTART IDENTITY CASCADE")
	return err
}

// dropAll drops this process's schemas (TestMain, after the tests).
func (p *schemaPool) dropAll(pool *pgxpool.Pool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.all {
		_, _ = pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+quoteIdent(s)+" CASCADE")
	}
	p.all, p.free = nil, nil
}

// dropStaleSchemas drops the dated test schemas older than staleSchemaAge:
// what crashed runs left.
func dropStaleSchemas(t testing.TB, pool *pgxpool.Pool) {
	ctx := context.Background()
	rows, err := pool.Query(ctx, `SELECT nspname FROM pg_namespace WHERE nspname LIKE $1`, testSchemaPrefix+"%")
	if err != nil {
		t.Logf("list stale test schemas: %v", err)
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Logf("list stale test schemas: %v", err)
		return
	}
	for _, name := range names {
		if !staleSchema(name, time.Now()) {
			continue
		}
		if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+quoteIdent(name)+" CASCADE"); err != nil {
			t.Logf("drop stale test schema %s: %v", name, err)
		}
	}
}

// staleSchema reports whether name is a dated test schema made more than
// staleSchemaAge before now. Undated names (from older test code, or
// other uses) are never stale: nothing tells their age.
func staleSchema(name string, now time.Time) bool {
	rest, ok := strings.CutPrefix(name, testSchemaPrefix)
	if !ok || len(rest) < len("20060102_150405") {
		return false
	}
	at, err := time.Parse("20060102_150405", rest[:len("20060102_150405")])
	return err == nil && now.Sub(at) > staleSchemaAge
}

func TestStaleSchema(t *testing.T) {
	now := time.Date(2026, 12, 3, 16, 0, 0, 0, time.UTC)
	for name, want := range map[string]bool{
		"pharox_test_20261203_120000_77_3": true,  // four hours old
		"pharox_test_20261203_150000_77_3": false, // one hour old: a run may still use it
		"pharox_test_5e0f7a2b9c1d":         false, // undated
		"pharox":                           false,
		"other_20261201_000000":            false,
	} {
		if got := staleSchema(name, now); got != want {
			t.Errorf("staleSchema(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestMain drops the process's test schemas after the tests, closes the
// shared pool, and fails the run if any goroutine outlives them.
func TestMain(m *testing.M) {
	code := m.Run()
	if sharedPool != nil {
		testSchemas.dropAll(sharedPool)
		sharedPool.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: goroutines outlived the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
