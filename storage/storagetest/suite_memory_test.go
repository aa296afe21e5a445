package storagetest_test

import (
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/storage/storagetest"
)

// TestMemory runs the suite against the in-memory store, so the suite
// itself is exercised by CI without any server.
func TestMemory(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) pharox.Storage {
		s := testfactory.Memory(t)
		t.Cleanup(func() { _ = s.Close() })
		return s
	}, storagetest.WithCapabilities(storagetest.Capabilities{
		LateRelease: storagetest.LateReleaseExpires,
		Predicates:  storagetest.PredicatesRun,
	}))
}
