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
	storagetest.RunMultiProcess(t, storagetest.MultiProcessConfig{
		// Consumers capped at 2 leases across the processes: each has
		// five or six goroutines, so the cap is reached even when the
		// race detector slows every acquisition.
		ConsumerCap: 2,
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
