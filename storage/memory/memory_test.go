package memory_test

import (
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) pharox.Storage {
		s := testfactory.Memory(t)
		t.Cleanup(func() { _ = s.Close() })
		return s
	}, storagetest.WithCapabilities(memoryCapabilities))
}

// memoryCapabilities are the memory store's answers where the contract
// lets stores differ.
var memoryCapabilities = storagetest.Capabilities{
	LateRelease: storagetest.LateReleaseExpires,
	Predicates:  storagetest.PredicatesRun,
}
