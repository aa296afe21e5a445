package sqlite_test

import (
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/storagetest"
)

// BenchmarkAcquireRelease runs storagetest.Benchmark (acquire+release
// pairs per second and CPU per pair on a 1,000-proxy pool, every proxy
// exclusive) serially and with 8 workers, for the SQLite store and, as the
// baseline of the same run, the memory store. Compare pairs/s between the
// memory/ and sqlite/ lines.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, st := range benchStores {
		b.Run(st.name, func(b *testing.B) {
			storagetest.Benchmark(b, st.open, storagetest.BenchWorkers(1, 8))
		})
	}
}

// benchStore is one store the benchmark measures.
type benchStore struct {
	name string
	open func(b *testing.B) pharox.Storage
}

// benchStores lists the stores BenchmarkAcquireRelease runs; the memory
// baseline is added by memory_bench_test.go unless built with -tags
// nomemory.
var benchStores = []benchStore{
	{"sqlite", func(b *testing.B) pharox.Storage { return open(b) }},
}

// BenchmarkScale is the shared scale harness: ns/acquire per strategy, pool
// size and occupancy, with the 100k-all-busy / 1k-free ratio.
func BenchmarkScale(b *testing.B) {
	storagetest.BenchmarkScale(b, func(b *testing.B) pharox.Storage { return open(b) })
}

// BenchmarkTargets compares acquire+release pairs for a target with half
// the pool cooling down for it against pairs without a target.
func BenchmarkTargets(b *testing.B) {
	storagetest.BenchmarkTargets(b, func(b *testing.B) pharox.Storage { return open(b) })
}
