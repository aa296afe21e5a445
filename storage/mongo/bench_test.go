package mongo

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/mongotest"
	"github.com/pharox/pharox/storage/storagetest"
)

// BenchmarkAcquireRelease measures acquire+release pairs on a pool of
// 1,000 exclusive proxies (FirstAvailable) against the same run's baseline:
// a trivial findOneAndUpdate ($inc of a counter) on one document per
// worker, the cheapest atomic single-document write the server offers. An
// acquire+release pair costs several such round trips (the slot read,
// the insert, the count for the proxy snapshot; the ended record and the
// slot delete), so x-trivial-pairs is that pair rate over half the trivial
// rate. Short runs only (-benchtime 200x): figures for the record come
// from a quiet machine.
func BenchmarkAcquireRelease(b *testing.B) {
	store := newTestStore(b)
	consumer := seedBench(b, store, "bench", 1000)
	trivial := store.db.Collection(store.cfg.prefix + "bench_trivial")
	ctx := context.Background()
	for i := range 64 {
		if _, err := trivial.InsertOne(ctx, bson.D{{Key: "_id", Value: int64(i)}, {Key: "n", Value: int64(0)}}); err != nil {
			b.Fatal(err)
		}
	}
	for _, workers := range []int{1, 8} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			const rounds = 4
			var storeTime, trivialTime time.Duration
			for r := range rounds {
				n := b.N / rounds
				if r < b.N%rounds {
					n++
				}
				storeTime += runPairs(b, store, consumer, workers, n)
				trivialTime += runTrivial(b, trivial, workers, n)
			}
			rate := float64(b.N) / storeTime.Seconds()
			trivialRate := float64(b.N) / trivialTime.Seconds()
			b.ReportMetric(rate, "pairs/s")
			b.ReportMetric(trivialRate, "trivial-fam/s")
			b.ReportMetric(rate/(trivialRate/2), "x-trivial-pairs")
		})
	}
}

// BenchmarkScale is storagetest's pool-size benchmark. It needs a real
// MongoDB (PHAROX_TEST_MONGO_URL): on FerretDB v1 every query but an _id
// lookup reads its whole collection, so the figures would measure
// FerretDB, and filling the pool takes minutes.
func BenchmarkScale(b *testing.B) {
	mongotest.URL(b)
	if mongotest.Started() {
		b.Skip("BenchmarkScale measures pool-size costs of a real MongoDB; set " + mongotest.EnvURL)
	}
	storagetest.BenchmarkScale(b, func(b *testing.B) pharox.Storage { return newTestStore(b) })
}

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

// runPairs performs n acquire+release pairs on workers goroutines.
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
		_, err = s.ReleaseLease(ctx, l.ID, nil)
		return err
	})
}

// runTrivial performs n findOneAndUpdate calls ($inc, returning the new
// document) on workers goroutines, each worker on its own document.
func runTrivial(b testing.TB, c *mongo.Collection, workers, n int) time.Duration {
	b.Helper()
	ctx := context.Background()
	opts := options.FindOneAndUpdate().SetReturnDocument(options.After)
	inc := bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int64(1)}}}}
	return parallel(b, workers, n, func(w int) error {
		return c.FindOneAndUpdate(ctx, bson.D{{Key: "_id", Value: int64(w)}}, inc, opts).Err()
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
