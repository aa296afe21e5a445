package mysql

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/storagetest"
)

// BenchmarkAcquireRelease measures acquire+release pairs per second against
// a pool of 1,000 proxies (max_concurrency 1, FirstAvailable) with 1, 8 and
// 32 concurrent workers. Each sub-benchmark runs the same b.N units three
// times on one set of tables, alternating in four rounds so that a change
// in the machine's load hits all three alike:
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
//	naive-pairs/s    the naive FOR UPDATE acquisition
//	x-naive          pairs/s divided by naive-pairs/s
//	trivial-tx/s     trivial transactions per second
//	x-trivial-pairs  pairs/s divided by trivial-tx/s / 2: 1.0 would mean a
//	                 pair costs no more than two empty commits
//
// ns/op covers all three and is not meaningful on its own.
//
//	PHAROX_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test go test -run '^$' -bench AcquireRelease -benchtime 2000x ./storage/mysql/
func BenchmarkAcquireRelease(b *testing.B) {
	store := newTestStore(b, WithMaxConns(32))
	naive := &Store{db: store.db, cfg: store.cfg, txOpts: store.txOpts, naive: true}
	consumer := seedBench(b, store, "bench", 1000)
	ctx := context.Background()
	if _, err := store.db.ExecContext(ctx, store.q(`CREATE TABLE {p}bench_trivial (id INT PRIMARY KEY, n BIGINT NOT NULL) ENGINE = InnoDB`)); err != nil {
		b.Fatal(err)
	}
	for i := range 64 {
		if _, err := store.db.ExecContext(ctx, store.q(`INSERT INTO {p}bench_trivial VALUES (?, 0)`), i); err != nil {
			b.Fatal(err)
		}
	}
	// Warm every connection before timing anything.
	runPairs(b, store, consumer, 32, 128)
	runPairs(b, naive, consumer, 32, 128)
	runTrivial(b, store, 32, 128)
	for _, workers := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			const rounds = 4
			var storeTime, naiveTime, trivialTime time.Duration
			for r := range rounds {
				n := b.N / rounds
				if r < b.N%rounds {
					n++
				}
				storeTime += runPairs(b, store, consumer, workers, n)
				naiveTime += runPairs(b, naive, consumer, workers, n)
				trivialTime += runTrivial(b, store, workers, n)
			}
			rate := float64(b.N) / storeTime.Seconds()
			naiveRate := float64(b.N) / naiveTime.Seconds()
			trivialRate := float64(b.N) / trivialTime.Seconds()
			b.ReportMetric(rate, "pairs/s")
			b.ReportMetric(naiveRate, "naive-pairs/s")
			b.ReportMetric(rate/naiveRate, "x-naive")
			b.ReportMetric(trivialRate, "trivial-tx/s")
			b.ReportMetric(rate/(trivialRate/2), "x-trivial-pairs")
		})
	}
}

// BenchmarkScale is the shared scale harness: ns/acquire per strategy, pool
// size and occupancy, with x-smallest-free on the largest busy pool. The
// sizes stop at 20,000, the large-pool section's size: filling a pool
// takes one durable acquisition per proxy.
func BenchmarkScale(b *testing.B) {
	storagetest.BenchmarkScale(b, func(b *testing.B) pharox.Storage { return newTestStore(b, WithMaxConns(8)) }, 1000, 20000)
}

// seedBench creates pool name with n exclusive proxies and a consumer.
func seedBench(b *testing.B, s *Store, name string, n int) *pharox.Consumer {
	b.Helper()
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: name})
	if err != nil {
		b.Fatal(err)
	}
	one := 1
	ps := make([]pharox.Proxy, n)
	for i := range ps {
		ps[i] = pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.9.%d.%d", i/250, i%250+1), Port: 1000 + i,
			Protocol: pharox.ProtocolHTTP, MaxConcurrency: &one}
	}
	if _, err := s.AddProxies(ctx, ps); err != nil {
		b.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// runPairs performs n acquire+release pairs on workers goroutines and
// returns how long they took.
func runPairs(b testing.TB, s *Store, c *pharox.Consumer, workers, n int) time.Duration {
	b.Helper()
	ctx := context.Background()
	req := pharox.AcquireRequest{PoolName: "bench", ConsumerID: c.ID, ConsumerName: c.Name,
		Duration: time.Minute, Strategy: pharox.FirstAvailable}
	return parallel(b, workers, n, func(int) error {
		l, err := s.AcquireLease(ctx, req)
		if err != nil {
			return err
		}
		_, err = s.ReleaseLease(ctx, l.ID)
		return err
	})
}

// runTrivial performs n trivial write transactions on workers goroutines,
// each worker on its own row, and returns how long they took.
func runTrivial(b testing.TB, s *Store, workers, n int) time.Duration {
	b.Helper()
	ctx := context.Background()
	query := s.q(`UPDATE {p}bench_trivial SET n = n + 1 WHERE id = ?`)
	return parallel(b, workers, n, func(w int) error {
		return s.run(ctx, func(tx execer) error { return tx.later(ctx, query, w) })
	})
}

// parallel runs fn n times over workers goroutines (fn gets the worker's
// index) and returns the elapsed time.
func parallel(b testing.TB, workers, n int, fn func(worker int) error) time.Duration {
	b.Helper()
	var (
		next   atomic.Int64
		failed atomic.Value
		wg     sync.WaitGroup
	)
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := fn(w); err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	return elapsed
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
