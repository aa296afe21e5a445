package postgres

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/storagetest"
)

// envURL names the variable that points the tests at a PostgreSQL server.
const envURL = "PHAROX_TEST_POSTGRES_URL"

var (
	sharedPoolOnce sync.Once
	sharedPool     *pgxpool.Pool
	sharedPoolErr  error
)

// testPool returns one connection pool shared by the package's tests, or
// skips the test when no server is configured.
func testPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	url := os.Getenv(envURL)
	if url == "" {
		t.Skipf("%s is not set: skipping PostgreSQL tests (e.g. %s=postgres://postgres@127.0.0.1:5432/test?sslmode=disable)", envURL, envURL)
	}
	sharedPoolOnce.Do(func() {
		cfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			sharedPoolErr = err
			return
		}
		cfg.MaxConns = 16
		// Commits need not wait for the WAL flush in tests: a test never
		// survives a server crash (the fault tests run servers of their
		// own), and on a busy disk the flushes were most of the suite's
		// time. The URL may still set it.
		if _, ok := cfg.ConnConfig.RuntimeParams["synchronous_commit"]; !ok {
			cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
		}
		sharedPool, sharedPoolErr = pgxpool.NewWithConfig(context.Background(), cfg)
	})
	if sharedPoolErr != nil {
		t.Fatalf("connect to %s: %v", envURL, sharedPoolErr)
	}
	return sharedPool
}

// uniqueSchema returns a fresh schema name for a test that makes and
// drops its own schema: dated like testSchemas' (see schema_test.go), so a
// crashed run's is dropped by a later one.
func uniqueSchema() string {
	return fmt.Sprintf("%s%d", testSchemas.run, testSchemas.n.Add(1))
}

// dropSchemaOnCleanup removes the schema and everything in it when t ends.
func dropSchemaOnCleanup(t testing.TB, pool *pgxpool.Pool, schema string) {
	t.Cleanup(func() {
		if _, err := pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+quoteIdent(schema)+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
}

// newTestStore returns a store on a migrated, empty schema of its own for
// the life of t: a schema from testSchemas, returned to it when t ends.
func newTestStore(t testing.TB, opts ...Option) *Store {
	t.Helper()
	pool := testPool(t)
	schema := testSchemas.take(t, pool)
	opts = append([]Option{WithSchema(schema)}, opts...)
	s, err := New(context.Background(), pool, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	testPool(t)
	storagetest.Run(t, func(t *testing.T) pharox.Storage { return newTestStore(t) }, storagetest.WithCapabilities(capabilities), storagetest.WithoutLargePoolInShort())
}

// TestConformanceUnbatched runs the suite with batching off, the path of
// every call when WithMaxBatch(1) is given.
func TestConformanceUnbatched(t *testing.T) {
	testPool(t)
	storagetest.Run(t, func(t *testing.T) pharox.Storage { return newTestStore(t, WithMaxBatch(1)) },
		storagetest.WithCapabilities(capabilities),
		storagetest.WithoutLargePoolInShort(),
		storagetest.WithLargePoolSize(2000, "TestConformance runs the section at full size with the same indexes and walks; "+
			"this run checks the unbatched statements' answers, which do not depend on the pool size, and filling 20,000 slots "+
			"one statement at a time would double the package's test time"))
}

// TestMultiProcess runs storagetest's multi-process audit: 4 worker
// processes of 16 goroutines each lease from one pool of 10 proxies with
// max_concurrency 2 through one shared schema, a quarter of them as
// consumers with max_concurrent_leases 2 (ConsumerCap), which the audit
// checks across the processes. (2 rather than more: the audit needs the
// cap reached, and a capped lease is held for only 3-12ms, while on a
// loaded machine an acquisition from this busy pool takes far longer, so
// three overlapping holds of one consumer are rare; two are reached in
// every run, with refusals.)
func TestMultiProcess(t *testing.T) {
	url := os.Getenv(envURL)
	if url == "" {
		t.Skipf("%s is not set: skipping the PostgreSQL multi-process audit", envURL)
	}
	storagetest.RunMultiProcess(t, storagetest.MultiProcessConfig{
		Processes:      4,
		Goroutines:     16,
		Proxies:        10,
		MaxConcurrency: 2,
		Duration:       4 * time.Second,
		ConsumerCap:    2,
		Open: func(t testing.TB, namespace string) pharox.Storage {
			ctx := context.Background()
			cfg, err := pgxpool.ParseConfig(url)
			if err != nil {
				t.Fatalf("parse %s: %v", envURL, err)
			}
			// Each worker gets its own pool, as separate hosts would; 8
			// connections for 16 goroutines keeps 4 workers, the parent and
			// the other packages' tests within max_connections 100.
			cfg.MaxConns = 16
			// Commits need not wait for the WAL flush in tests: a test never
			// survives a server crash (the fault tests run servers of their
			// own), and on a busy disk the flushes were most of the suite's
			// time. The URL may still set it.
			if _, ok := cfg.ConnConfig.RuntimeParams["synchronous_commit"]; !ok {
				cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
			}
			pool, err := pgxpool.NewWithConfig(ctx, cfg)
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			t.Cleanup(pool.Close)
			if !storagetest.IsWorkerProcess() {
				dropSchemaOnCleanup(t, pool, namespace)
			}
			// Workers migrate too: concurrent Migrate calls are safe.
			if err := Migrate(ctx, pool, WithSchema(namespace)); err != nil {
				t.Fatalf("Migrate: %v", err)
			}
			s, err := New(ctx, pool, WithSchema(namespace))
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			return s
		},
	})
}

// capabilities are the PostgreSQL store's answers where the contract lets
// stores differ.
var capabilities = storagetest.Capabilities{
	LateRelease: storagetest.LateReleaseReleases,
	Predicates:  storagetest.PredicatesRefused,
}
