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
// proxies the section makes about 3,000 acquisitions, each several
// full-collection scans inside FerretDB v1: measured at about one
// acquisition a second on the shared development machine, far past the package's
// test timeout. The section's guarantees rest on the same code paths the
// other sections exercise; a real MongoDB (PHAROX_TEST_MONGO_URL) runs it
// at full size.
func skipLargePoolOnFerretDB(t *testing.T) {
	if mongotest.Started() && os.Getenv(envLargePool) == "" && strings.Contains(t.Name(), "/LargePool/") {
		t.Skipf("LargePool on FerretDB takes far too long (every query is a collection scan in FerretDB v1); "+
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

// TestMultiProcess runs storagetest's multi-process audit: 4 worker
// processes of 8 goroutines each lease for 6 seconds from one pool of 10
// proxies with max_concurrency 2 through one shared database, some of
// them as consumers capped at 2 concurrent leases across the processes
// (6 seconds, not 4: on FerretDB under load an acquisition takes up to
// seconds, and 4 left too few capped leases to reach the cap reliably).
func TestMultiProcess(t *testing.T) {
	mongotest.URL(t)
	storagetest.RunMultiProcess(t, storagetest.MultiProcessConfig{
		Processes:      4,
		Goroutines:     8,
		Proxies:        10,
		MaxConcurrency: 2,
		Duration:       6 * time.Second,
		ConsumerCap:    2,
		Open: func(t testing.TB, namespace string) pharox.Storage {
			return openDB(t, namespace, !storagetest.IsWorkerProcess())
		},
	})
}
