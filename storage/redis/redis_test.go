package redis

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/redistest"
	"github.com/pharox/pharox/storage/storagetest"
)

// testPrefix returns a fresh hash-tagged key prefix.
func testPrefix() string {
	var b [6]byte
	rand.Read(b[:])
	return "{pharoxtest-" + hex.EncodeToString(b[:]) + "}:"
}

// newTestStore returns an empty store under its own prefix, deleted at cleanup.
func newTestStore(t testing.TB, opts ...Option) *Store {
	t.Helper()
	c := redistest.Client(t)
	prefix := testPrefix()
	s, err := New(c, append([]Option{WithPrefix(prefix)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { redistest.DeletePrefix(t, c, prefix) })
	return s
}

func TestConformance(t *testing.T) {
	redistest.Client(t)
	storagetest.Run(t, func(t *testing.T) pharox.Storage { return newTestStore(t) }, storagetest.WithCapabilities(capabilities))
}

// capabilities are the Redis store's answers where the contract lets
// stores differ.
var capabilities = storagetest.Capabilities{
	LateRelease: storagetest.LateReleaseExpires,
	Predicates:  storagetest.PredicatesRefused,
}
