package server_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/pharox/pharox/internal/faulttest"
)

// faultRedisSettings are the settings the README asks of a Redis that
// holds a store: every write on disk before it is acknowledged, and no key
// ever evicted.
var faultRedisSettings = []string{"appendonly yes", "appendfsync always", "maxmemory-policy noeviction"}

// faultRedis starts a Redis server of the test's own, which the test may
// kill and restart, and returns it with the URL of a store in it (see
// faultRedisStoreURL).
func faultRedis(t *testing.T) (*faulttest.Redis, string) {
	backendRedisURL(t)
	if testing.Short() {
		t.Skip("fault tests start their own Redis server: skipped in -short mode")
	}
	r := faulttest.StartRedis(t, faultRedisSettings...)
	return r, faultRedisStoreURL(t, r.URL())
}

// faultRedisStoreURL returns the URL of a store under a fresh prefix on
// the Redis at base, with go-redis's own retries on: a command whose reply
// a cut connection lost is repeated, which the store's scripts answer as
// their first run did (see storage/redis, "Client retries").
func faultRedisStoreURL(t *testing.T, base string) string {
	t.Helper()
	return backendRedisStoreURL(t, base, "{"+backendNamespace("pharox-fault-")+"}:")
}

// TestFaultRedisRestart kills Redis (SIGKILL, as a crash would) under the
// load and starts it again from its append-only file: with appendfsync
// always no acknowledged write is lost, so the audit finds every lease a
// client was granted.
func TestFaultRedisRestart(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	r, storeURL := faultRedis(t)
	faultRun(t, storeURL, 2, func(l *faultLoad) {
		r.Kill()
		faultWaitReady(t, l.url(0), http.StatusServiceUnavailable)
		time.Sleep(time.Second)
		r.Start()
		faultWaitReady(t, l.url(0), http.StatusOK)
	})
}

// TestFaultRedisClientKill closes the service's Redis connections (CLIENT
// KILL) again and again under the load.
func TestFaultRedisClientKill(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	r, storeURL := faultRedis(t)
	faultRun(t, storeURL, 2, func(l *faultLoad) {
		for range 8 {
			if _, err := r.Command("CLIENT", "KILL", "TYPE", "normal"); err != nil {
				t.Errorf("CLIENT KILL: %v", err)
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
	})
}
