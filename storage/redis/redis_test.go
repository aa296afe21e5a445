package redis

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/redistest"
	"github.com/pharox/pharox/storage/storagetest"
	goredis "github.com/redis/go-redis/v9"
)

// testClient connects to PHAROX_TEST_REDIS_URL or skips the test.
func testClient(t testing.TB, tune ...func(*goredis.Options)) *goredis.Client {
	t.Helper()
	url := os.Getenv("PHAROX_TEST_REDIS_URL")
	if url == "" {
		t.Skip("PHAROX_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0); skipping Redis tests")
	}
	opt, err := goredis.ParseURL(url)
	if err != nil {
		t.Fatalf("PHAROX_TEST_REDIS_URL: %v", err)
	}
	for _, f := range tune {
		f(opt)
	}
	c := goredis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

// testPrefix returns a fresh hash-tagged key prefix.
func testPrefix() string {
	var b [6]byte
	rand.Read(b[:])
	return "{pharoxtest-" + hex.EncodeToString(b[:]) + "}:"
}

// newTestStore returns an empty store under its own prefix, deleted at cleanup.
func newTestStore(t testing.TB, opts ...Option) *Store {
	t.Helper()
	c := testClient(t)
	prefix := testPrefix()
	s, err := New(c, append([]Option{WithPrefix(prefix)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { redistest.DeletePrefix(t, c, prefix) })
	return s
}

func TestConformance(t *testing.T) {
	testClient(t)
	storagetest.Run(t, func(t *testing.T) pharox.Storage { return newTestStore(t) }, storagetest.WithCapabilities(capabilities))
}

// capabilities are the Redis store's answers where the contract lets
// stores differ.
var capabilities = storagetest.Capabilities{
	LateRelease: storagetest.LateReleaseExpires,
	Predicates:  storagetest.PredicatesRefused,
}
