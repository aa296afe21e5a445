package testfactory

import (
	"testing"

	"github.com/pharox/pharox/storage/memory"
)

// Memory returns an empty in-memory store configured by opts, failing the
// test if memory.New refuses an option. The store holds no resources, so
// closing it is left to tests that check a closed store.
func Memory(tb testing.TB, opts ...memory.Option) *memory.Store {
	tb.Helper()
	s, err := memory.New(opts...)
	if err != nil {
		tb.Fatalf("testfactory: memory.New: %v", err)
	}
	return s
}
