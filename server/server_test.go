package server_test

import (
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/server/servertest"
)

func TestContractMemory(t *testing.T) {
	servertest.Run(t, func(t *testing.T) pharox.Storage {
		s := testfactory.Memory(t)
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}
