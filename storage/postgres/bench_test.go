package postgres

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/storagetest"
)

// BenchmarkAcquireRelease runs storagetest.Benchmark (acquire+release
// pairs per second and CPU per pair on a pool of 1,000 proxies with
// max_concurrency 1, first_available) with 1, 8, 32 and 64 concurrent
// workers. Each sub-benchmark runs the same b.N pairs three times on one
// schema, alternating in four rounds: with the store as New configures it
// (FOR UPDATE SKIP LOCKED, concurrent calls sharing statements), with
// batching turned off (WithMaxBatch(1)), and with the identical single
// statement using a plain FOR UPDATE, the naive baseline in which every
// acquisition queues behind the row lock of the best candidate. It reports
//
//	pairs/s            the store
//	cpu-µs/pair        this process's CPU per pair (not the server's)
//	unbatched-pairs/s  the store without batching
//	naive-pairs/s      the baseline
//	x-naive            pairs/s divided by naive-pairs/s
//
// ns/op covers all three and is not meaningful on its own. The tables are
// vacuumed before every run, outside the timed part (see vacuum).
//
//	PHAROX_TEST_POSTGRES_URL=... go test -run '^$' -bench AcquireRelease -benchtime 3000x ./storage/postgres/
//
// PHAROX_BENCH_DURABLE_RELEASES=1 runs all three with WithDurableReleases.
// Appending &synchronous_commit=off to the URL takes WAL flushes out of the
// picture, which shows what the CPU alone allows.
func BenchmarkAcquireRelease(b *testing.B) {
	url := os.Getenv(envURL)
	if url == "" {
		b.Skipf("%s is not set: skipping the PostgreSQL benchmark", envURL)
	}
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 64 // one per worker at most; opened on demand
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close) // after the schema is dropped (cleanups run last-in first-out)
	schema := uniqueSchema()
	dropSchemaOnCleanup(b, pool, schema)
	if err := Migrate(ctx, pool, WithSchema(schema)); err != nil {
		b.Fatal(err)
	}
	opts := []Option{WithSchema(schema)}
	if os.Getenv("PHAROX_BENCH_DURABLE_RELEASES") != "" {
		opts = append(opts, WithDurableReleases())
	}
	open := func(extra ...Option) *Store {
		s, err := New(ctx, pool, append(opts, extra...)...)
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	store, unbatched, naive := open(), open(WithMaxBatch(1)), open()
	naive.naive = true
	storagetest.Benchmark(b, func(*testing.B) pharox.Storage { return store },
		storagetest.BenchWorkers(1, 8, 32, 64),
		storagetest.BenchWithBaseline(storagetest.BenchBaseline{Name: "unbatched", Store: unbatched}),
		storagetest.BenchWithBaseline(storagetest.BenchBaseline{Name: "naive", Store: naive}),
		storagetest.BenchBeforeEachRun(func(b *testing.B) { vacuum(b, pool, schema) }))
}

// vacuum cleans up after the previous run outside the timed part (and
// refreshes the planner statistics after the seed), as
// autovacuum would between them (it is off on the machines the figures
// come from): otherwise each variant pays for the dead rows of the one
// before, and the naive baseline, whose rounds hold row locks longest,
// leaves the most (the store's 64-worker rounds after it ran up to 8×
// slower in an unvacuumed run).
func vacuum(b *testing.B, pool *pgxpool.Pool, schema string) {
	b.Helper()
	s := quoteIdent(schema)
	if _, err := pool.Exec(context.Background(), "VACUUM ANALYZE "+s+".proxies, "+s+".leases"); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkScale runs storagetest.BenchmarkScale: ns per acquisition for
// each strategy on pools of 1,000, 20,000 and 100,000 exclusive proxies,
// every proxy free or all but one busy, each pool in a fresh schema. The
// x-smallest-free metric of the 100,000-proxy busy rows is the ratio to
// the 1,000-proxy free row of the same run.
//
//	PHAROX_TEST_POSTGRES_URL=... go test -run '^$' -bench 'Scale$' -benchtime 2000x ./storage/postgres/
//
// The test server runs without autovacuum, so the store is wrapped to do
// what autovacuum would after the bulk fill of a busy pool: the first
// ErrNoProxyAvailable (the fill is done) runs VACUUM ANALYZE on the
// proxies and leases tables, outside the timing.
//
// PHAROX_BENCH_SCALE_SIZES (e.g. "1000,20000") measures other pool sizes.
func BenchmarkScale(b *testing.B) {
	var sizes []int
	for _, f := range strings.FieldsFunc(os.Getenv("PHAROX_BENCH_SCALE_SIZES"), func(r rune) bool { return r == ',' }) {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			b.Fatalf("PHAROX_BENCH_SCALE_SIZES: %q is not a number", f)
		}
		sizes = append(sizes, n)
	}
	storagetest.BenchmarkScale(b, func(b *testing.B) pharox.Storage {
		return &vacuumAfterFill{Store: newTestStore(b)}
	}, sizes...)
}

// vacuumAfterFill is a Store that vacuums its tables once, when an
// acquisition first finds the pool full (see BenchmarkScale).
type vacuumAfterFill struct {
	*Store
	once sync.Once
}

func (v *vacuumAfterFill) AcquireLease(ctx context.Context, req pharox.AcquireRequest) (*pharox.Lease, error) {
	l, err := v.Store.AcquireLease(ctx, req)
	if errors.Is(err, pharox.ErrNoProxyAvailable) {
		v.once.Do(func() {
			_, _ = v.pool.Exec(ctx, "VACUUM ANALYZE "+v.schema+".proxies, "+v.schema+".leases")
		})
	}
	return l, err
}

// BenchmarkTargets runs storagetest.BenchmarkTargets: on a 10,000-proxy
// pool (1,000 with -short) with half the proxies cooling down for a
// target, an acquire+release pair for that target against one without a
// target, same run (x-target-cost, goal at most 1.5).
//
//	PHAROX_TEST_POSTGRES_URL=... go test -run '^$' -bench Targets -benchtime 2000x ./storage/postgres/
func BenchmarkTargets(b *testing.B) {
	storagetest.BenchmarkTargets(b, func(b *testing.B) pharox.Storage { return newTestStore(b) })
}
