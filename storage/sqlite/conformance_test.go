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
	storagetest.Run(t, func(t *testing.T) pharox.Storage {
		return open(t)
	})
}

// TestMultiProcess shares one file between worker processes, the way
// several pharox processes on one machine would.
func TestMultiProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	storagetest.RunMultiProcess(t, storagetest.MultiProcessConfig{
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
