package sqlite_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/sqlite"
	"github.com/pharox/pharox/storage/storagetest"
)

func TestConformance(t *testing.T) {
	var opts []storagetest.Option
	if raceDetector {
		// modernc.org/sqlite is C translated to Go: under the race
		// detector every statement runs about 15 times slower, and
		// filling 20,000 proxies one acquisition at a time takes
		// minutes. Runs without -race use the full size.
		opts = append(opts, storagetest.WithLargePoolSize(2000, "the race detector slows modernc.org/sqlite about 15-fold"))
	}
	opts = append(opts, storagetest.WithCapabilities(storagetest.Capabilities{
		LateRelease: storagetest.LateReleaseReleases,
		Predicates:  storagetest.PredicatesRun,
	}))
	storagetest.Run(t, func(t *testing.T) pharox.Storage {
		return open(t)
	}, opts...)
}

// TestMultiProcess shares one file between worker processes, the way
// several pharox processes on one machine would.
func TestMultiProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	// Consumers capped at 2 leases across the processes: each has five or
	// six goroutines, which hold a lease for a few milliseconds between
	// acquisitions that queue for the file's one write lock. Under the race
	// detector every statement runs about 15 times slower (some 60
	// acquisitions a second in all), so two holds of one consumer all but
	// never overlap and the audit could not see a cap of 2 reached; there
	// the cap is 1, which it still judges across the processes (no two
	// leases of a consumer held at once).
	consumerCap := 2
	if raceDetector {
		consumerCap = 1
	}
	storagetest.RunMultiProcess(t, storagetest.MultiProcessConfig{
		ConsumerCap: consumerCap,
		Open: func(t testing.TB, namespace string) pharox.Storage {
			// The namespace names the file, so every worker opens the
			// parent's file; only the parent removes it.
			path := filepath.Join(os.TempDir(), "pharox-sqlite-"+namespace+".db")
			s, err := sqlite.Open(context.Background(), path)
			if err != nil {
				t.Fatalf("Open(%s): %v", path, err)
			}
			t.Cleanup(func() {
				s.Close()
				if !storagetest.IsWorkerProcess() {
					for _, suffix := range []string{"", "-wal", "-shm"} {
						os.Remove(path + suffix)
					}
				}
			})
			return s
		},
	})
}
