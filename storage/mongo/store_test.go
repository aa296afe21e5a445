package mongo

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/mongotest"
	"github.com/pharox/pharox/storage/storagetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	mongotest.Stop()
	os.Exit(code)
}

// openDB opens a store on database db and drops the database when t ends
// (unless keep).
func openDB(t testing.TB, db string, drop bool, opts ...Option) *Store {
	t.Helper()
	s, err := Open(context.Background(), mongotest.DatabaseURL(t, db), opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if drop {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if err := s.Database().Drop(ctx); err != nil {
				t.Errorf("drop database %s: %v", db, err)
			}
			cancel()
		}
		_ = s.Close()
	})
	return s
}

// newTestStore opens a store on a fresh database, dropped when t ends.
func newTestStore(t testing.TB, opts ...Option) *Store {
	t.Helper()
	return openDB(t, mongotest.UniqueName("pxt_"), true, opts...)
}

// envLargePool opts in to the LargePool section on FerretDB.
const envLargePool = "PHAROX_TEST_MONGO_LARGE_POOL"

// largePoolOption sets the LargePool size: the full 20,000 proxies on a
// real MongoDB, the smallest size storagetest allows (1,000) on FerretDB.
func largePoolOption() []storagetest.Option {
	if !mongotest.Started() {
		return nil
	}
	return []storagetest.Option{storagetest.WithLargePoolSize(1000,
		"FerretDB v1 evaluates every query other than an _id lookup by scanning the collection in Go, "+
			"so one acquisition costs a pass over the pool; a real MongoDB runs the full size")}
}

// skipLargePoolOnFerretDB skips the LargePool section on a FerretDB the
// tests started, unless PHAROX_TEST_MONGO_LARGE_POOL is set. Even at 1,000
// proxies the section makes about 3,500 acquisitions and releases (it
// fills the pool, then drains its free proxies for 22 filter shapes and
// 4 strategies) and some 90 FindAvailableProxy calls, in a pool whose
// proxies are nearly all leased. FerretDB v1 (SQLite backend) hands
// SQLite a filter only when it is a single _id equality: any other filter
// or sort reads and decodes every document of the collection in Go,
// whatever indexes exist (measured on the shared 2-core machine: 0.4-0.6 s
// for one unsorted read of 1,000 proxy documents). An acquisition reads at
// least its candidates and their slots, two or three such scans: 1.0-1.7 s
// per acquire+release pair in a pool of 1,000 proxies with 980 leased,
// whatever the strategy (load average 7-11), which puts the section past
// an hour. Only a store that kept its own _id-addressed structures in
// place of queries (for instance a free list, which gives up the
// strategies' orders) would be fast on FerretDB. The section's guarantees
// rest on the code paths the other sections exercise; a real MongoDB
// (PHAROX_TEST_MONGO_URL) runs it at full size.
func skipLargePoolOnFerretDB(t *testing.T) {
	if mongotest.Started() && os.Getenv(envLargePool) == "" && strings.Contains(t.Name(), "/LargePool/") {
		t.Skipf("LargePool on FerretDB takes over an hour (every query but an _id lookup is a collection scan in FerretDB v1); "+
			"set %s=1 to run it anyway, or %s to a real MongoDB", envLargePool, mongotest.EnvURL)
	}
}

func TestConformance(t *testing.T) {
	mongotest.URL(t)
	storagetest.Run(t, func(t *testing.T) pharox.Storage {
		skipLargePoolOnFerretDB(t)
		return newTestStore(t)
	}, append(largePoolOption(), storagetest.WithCapabilities(capabilities))...)
}

// capabilities are the MongoDB store's answers where the contract lets
// stores differ.
var capabilities = storagetest.Capabilities{
	LateRelease: storagetest.LateReleaseReleases,
	Predicates:  storagetest.PredicatesRefused,
	// Requests per minute are counted over a sliding minute (see the
	// package documentation), not refilled as a bucket.
	RequestRateWindow: true,
}

// TestMultiProcess runs storagetest's multi-process audit: 3 worker
// processes of 12 goroutines each lease for 6 seconds from one pool of 10
// proxies with max_concurrency 2 through one shared database, a quarter
// of them as 3 consumers capped at 2 concurrent leases across the
// processes (3 goroutines each, one per process). FerretDB on a busy
// machine takes up to seconds an acquisition; 6 seconds, and the
// goroutines of a consumer spread over the processes, leave enough capped
// leases to reach the cap.
func TestMultiProcess(t *testing.T) {
	mongotest.URL(t)
	storagetest.RunMultiProcess(t, storagetest.MultiProcessConfig{
		Processes:      3,
		Goroutines:     12,
		Proxies:        10,
		MaxConcurrency: 2,
		Duration:       6 * time.Second,
		ConsumerCap:    2,
		Open: func(t testing.TB, namespace string) pharox.Storage {
			return openDB(t, namespace, !storagetest.IsWorkerProcess())
		},
	})
}
