package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/pharox/pharox"
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

// dropPrefix deletes every key under prefix.
func dropPrefix(t testing.TB, c goredis.UniversalClient, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	iter := c.Scan(ctx, 0, escapeGlob(prefix)+"*", 1000).Iterator()
	var batch []string
	flush := func() {
		if len(batch) > 0 {
			if err := c.Unlink(ctx, batch...).Err(); err != nil {
				t.Errorf("cleanup %s: %v", prefix, err)
			}
			batch = batch[:0]
		}
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			flush()
		}
	}
	flush()
	if err := iter.Err(); err != nil {
		t.Errorf("cleanup %s: %v", prefix, err)
	}
}

// escapeGlob escapes the glob metacharacters of a SCAN pattern.
func escapeGlob(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			out = append(out, '\\')
		}
		out = append(out, s[i])
	}
	return string(out)
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
	t.Cleanup(func() { dropPrefix(t, c, prefix) })
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
