package redis

import (
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/redistest"
	"github.com/pharox/pharox/storage/storagetest"
	goredis "github.com/redis/go-redis/v9"
)

// TestMultiProcess runs storagetest's multi-process audit: 4 worker
// processes of 16 goroutines each, each process with its own client (as
// separate hosts would have), lease from one pool of 10 proxies with
// max_concurrency 2 under one shared key prefix, a quarter of the
// goroutines acquiring as consumers capped at 3 concurrent leases each.
func TestMultiProcess(t *testing.T) {
	redistest.Client(t) // skips without PHAROX_TEST_REDIS_URL
	storagetest.RunMultiProcess(t, storagetest.MultiProcessConfig{
		Processes:      4,
		Goroutines:     16,
		Proxies:        10,
		MaxConcurrency: 2,
		Duration:       4 * time.Second,
		ConsumerCap:    3,
		Open: func(t testing.TB, namespace string) pharox.Storage {
			c := redistest.Client(t, func(o *goredis.Options) { o.PoolSize = 32 })
			prefix := "{" + namespace + "}:"
			if !storagetest.IsWorkerProcess() {
				t.Cleanup(func() { redistest.DeletePrefix(t, c, prefix) })
			}
			s, err := New(c, WithPrefix(prefix))
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			return s
		},
	})
}
