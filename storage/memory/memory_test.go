package memory_test

import (
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
	"github.com/pharox/pharox/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) pharox.Storage {
		s := memory.New()
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}
