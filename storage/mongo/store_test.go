package mongo

import (
	"context"
	"os"
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

// largePoolOption sets the LargePool size: FerretDB v1 answers every query but an
// _id lookup by reading the whole collection and filtering and sorting it
// in Go, so each acquisition there costs a pass over the pool and
// filling 20,000 proxies would take the better part of an hour. A real
// MongoDB (PHAROX_TEST_MONGO_URL) runs the full size.
func largePoolOption() []storagetest.Option {
	if !mongotest.Started() {
		return nil
	}
	return []storagetest.Option{storagetest.WithLargePoolSize(1000,
		"FerretDB v1 evaluates every query other than an _id lookup by scanning the collection in Go, "+
			"so one acquisition costs a pass over the pool; a real MongoDB runs the full size")}
}

func TestConformance(t *testing.T) {
	mongotest.URL(t)
	storagetest.Run(t, func(t *testing.T) pharox.Storage { return newTestStore(t) }, largePoolOption()...)
}

// TestMultiProcess runs storagetest's multi-process audit: 4 worker
// processes of 8 goroutines each lease from one pool of 10 proxies with
// max_concurrency 2 through one shared database.
func TestMultiProcess(t *testing.T) {
	mongotest.URL(t)
	storagetest.RunMultiProcess(t, storagetest.MultiProcessConfig{
		Processes:      4,
		Goroutines:     8,
		Proxies:        10,
		MaxConcurrency: 2,
		Duration:       4 * time.Second,
		Open: func(t testing.TB, namespace string) pharox.Storage {
			return openDB(t, namespace, !storagetest.IsWorkerProcess())
		},
	})
}
