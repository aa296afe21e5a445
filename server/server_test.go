package server_test

import (
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/server/servertest"
	"github.com/pharox/pharox/storage/memory"
)

func TestContractMemory(t *testing.T) {
	servertest.Run(t, func(t *testing.T) pharox.Storage {
		s := memory.New()
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}
