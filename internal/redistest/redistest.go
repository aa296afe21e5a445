// Package redistest is what the Redis-backed tests share: removing the
// keys a test left under its prefix. It is for _test.go files (the
// linter's depguard rule keeps it out of the product).
package redistest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// EnvURL names the variable that points the tests at a Redis server.
const EnvURL = "PHAROX_TEST_REDIS_URL"

// Client connects to the Redis server EnvURL names, after tune adjusts
// the options, or skips the test when the variable is not set. The client
// is closed when t ends.
func Client(t testing.TB, tune ...func(*goredis.Options)) *goredis.Client {
	t.Helper()
	url := os.Getenv(EnvURL)
	if url == "" {
		t.Skipf("%s is not set (e.g. redis://127.0.0.1:6379/0); skipping Redis tests", EnvURL)
	}
	opt, err := goredis.ParseURL(url)
	if err != nil {
		t.Fatalf("%s: %v", EnvURL, err)
	}
	for _, f := range tune {
		f(opt)
	}
	c := goredis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// DeletePrefix deletes every key under prefix, scanning for them and
// unlinking them in batches; a failure is reported with t.Errorf, so it
// can run from a cleanup.
func DeletePrefix(t testing.TB, c goredis.UniversalClient, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	iter := c.Scan(ctx, 0, EscapeGlob(prefix)+"*", 1000).Iterator()
	var batch []string
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if err := c.Unlink(ctx, batch...).Err(); err != nil {
			t.Errorf("delete keys under %s: %v", prefix, err)
		}
		batch = batch[:0]
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			flush()
		}
	}
	flush()
	if err := iter.Err(); err != nil {
		t.Errorf("scan keys under %s: %v", prefix, err)
	}
}

// EscapeGlob escapes the glob metacharacters of a SCAN pattern, so that
// s matches only itself (prefixes such as "{pharoxtest-…}:" have some).
func EscapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
