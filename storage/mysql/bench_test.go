package mysql

import (
	"context"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/storagetest"
)

// BenchmarkAcquireRelease runs storagetest.Benchmark (acquire+release
// pairs per second and CPU per pair on a pool of 1,000 proxies,
// max_concurrency 1, first_available) with 1, 8 and 32 concurrent workers.
// Each sub-benchmark runs the same b.N units three times on one set of
// tables, alternating in four rounds so that a change in the machine's
// load hits all three alike:
//
//   - the store (FOR UPDATE SKIP LOCKED),
//   - the same store with a plain FOR UPDATE that waits for a locked
//     candidate (the naive acquisition: every worker queues behind the
//     best candidate's row lock),
//   - trivial transactions, mysqlslap style: START TRANSACTION, one
//     single-row UPDATE of the worker's own counter row, COMMIT, sent the
//     way the store sends its own (in one round trip on Open's pool). That
//     is the floor of any durable write on this server (one round trip,
//     one redo log flush), and a pair is two transactions.
//
// It reports
//
//	pairs/s          the store
//	cpu-µs/pair      this process's CPU per pair (not the server's)
//	naive-pairs/s    the naive FOR UPDATE acquisition
//	x-naive          pairs/s divided by naive-pairs/s
//	trivial-tx/s     trivial transactions per second
//	x-trivial-tx     pairs/s divided by trivial-tx/s / 2: 1.0 would mean a
//	                 pair costs no more than two empty commits
//	capped-pairs/s   the store's pairs by one consumer with a
//	                 max_concurrent_leases quota (never reached)
//	cap/plain        a capped pair's time over a plain one's: the capped
//	                 acquisitions take turns on the quota row's lock
//
// ns/op covers all three and is not meaningful on its own.
//
//	PHAROX_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test go test -run '^$' -bench AcquireRelease -benchtime 2000x ./storage/mysql/
func BenchmarkAcquireRelease(b *testing.B) {
	store := newTestStore(b, WithMaxConns(32))
	naive := &Store{db: store.db, cfg: store.cfg, txOpts: store.txOpts, naive: true}
	ctx := context.Background()
	if _, err := store.db.ExecContext(ctx, store.q(`CREATE TABLE {p}bench_trivial (id INT PRIMARY KEY, n BIGINT NOT NULL) ENGINE = InnoDB`)); err != nil {
		b.Fatal(err)
	}
	for i := range 64 {
		if _, err := store.db.ExecContext(ctx, store.q(`INSERT INTO {p}bench_trivial VALUES (?, 0)`), i); err != nil {
			b.Fatal(err)
		}
	}
	trivial := store.q(`UPDATE {p}bench_trivial SET n = n + 1 WHERE id = ?`)
	storagetest.Benchmark(b, func(*testing.B) pharox.Storage { return store },
		storagetest.BenchWithBaseline(storagetest.BenchBaseline{Name: "naive", Store: naive}),
		storagetest.BenchWithBaseline(storagetest.BenchBaseline{Name: "trivial-tx", OpsPerPair: 2,
			Op: func(ctx context.Context, worker int) error {
				return store.run(ctx, func(tx execer) error { return tx.later(ctx, trivial, worker) })
			}}))
}

// BenchmarkScale is the shared scale harness: ns/acquire per strategy, pool
// size and occupancy, with x-smallest-free on the largest busy pool. The
// sizes stop at 20,000, the large-pool section's size: filling a pool
// takes one durable acquisition per proxy.
func BenchmarkScale(b *testing.B) {
	storagetest.BenchmarkScale(b, func(b *testing.B) pharox.Storage { return newTestStore(b, WithMaxConns(8)) }, 1000, 20000)
}

// BenchmarkTargets runs storagetest.BenchmarkTargets: on a 10,000-proxy
// pool (1,000 with -short) with half the proxies cooling down for a
// target, an acquire+release pair for that target against one without a
// target, same run (x-target-cost, goal at most 1.5).
//
//	PHAROX_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test go test -run '^$' -bench Targets -benchtime 2000x ./storage/mysql/
func BenchmarkTargets(b *testing.B) {
	storagetest.BenchmarkTargets(b, func(b *testing.B) pharox.Storage { return newTestStore(b) })
}
