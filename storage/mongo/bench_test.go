package mongo

import (
	"context"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/mongotest"
	"github.com/pharox/pharox/storage/storagetest"
)

// benchProxies is the pool storagetest.Benchmark leases from: 1,000
// exclusive proxies on a real MongoDB; 100 on FerretDB v1, which reads
// the whole collection for every query but an _id lookup, so that the
// pool's size would set the figure (about 1.3 s a pair at 1,000).
func benchProxies() int {
	if mongotest.Started() {
		return 100
	}
	return 1000
}

// BenchmarkAcquireRelease runs storagetest.Benchmark (acquire+release
// pairs of first_available leases, plain and for a consumer with a
// max_concurrent_leases quota, at 1 and 8 workers) beside the same run's
// baseline, a trivial findOneAndUpdate loop: a $inc of a counter that
// returns the document, one document per worker, the cheapest atomic
// single-document write a MongoDB server offers. A pair is two such
// operations' worth of work at the least (it takes several round trips:
// the candidates and their slots read, the slot inserted, its count and
// stamps written; the ended record inserted, the slot deleted, its count
// written), so x-trivial-fam is the pair rate over half the trivial rate.
// Short runs only (-benchtime 200x): figures for the record come from
// scripts/benchsummary.
func BenchmarkAcquireRelease(b *testing.B) {
	store := newTestStore(b)
	ctx := context.Background()
	trivial := store.db.Collection(store.cfg.prefix + "bench_trivial")
	const docs = 64
	for i := range docs {
		if _, err := trivial.InsertOne(ctx, bson.D{{Key: "_id", Value: int64(i)}, {Key: "n", Value: int64(0)}}); err != nil {
			b.Fatal(err)
		}
	}
	fam := options.FindOneAndUpdate().SetReturnDocument(options.After)
	inc := bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int64(1)}}}}
	storagetest.Benchmark(b, func(*testing.B) pharox.Storage { return store },
		storagetest.BenchProxies(benchProxies(), 1),
		storagetest.BenchWorkers(1, 8),
		storagetest.BenchWithBaseline(storagetest.BenchBaseline{
			Name: "trivial-fam",
			Op: func(ctx context.Context, worker int) error {
				return trivial.FindOneAndUpdate(ctx, bson.D{{Key: "_id", Value: int64(worker % docs)}}, inc, fam).Err()
			},
			OpsPerPair: 2,
		}))
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
