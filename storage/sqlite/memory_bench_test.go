//go:build !nomemory

package sqlite_test

import (
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
)

// The memory store is the baseline measured in the same run.
func init() {
	benchStores = append([]benchStore{{"memory", func(b *testing.B) pharox.Storage {
		s := testfactory.Memory(b)
		b.Cleanup(func() { s.Close() })
		return s
	}}}, benchStores...)
}
