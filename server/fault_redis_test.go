package server_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/pharox/pharox/internal/faulttest"
	"github.com/pharox/pharox/storage/open"
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
// the Redis at base. go-redis repeats a command whose reply a cut
// connection lost; a store whose scripts are not safe to run twice drifts
// its in-use counters then (the audit catches it), so for such a store
// the URL turns those retries off (max_retries=-1) and the service
// answers 503 instead, which the load repeats with its Idempotency-Key.
// Stores got retry-safe scripts together with AcquireOptions.LeaseID,
// which is what is probed.
func faultRedisStoreURL(t *testing.T, base string) string {
	t.Helper()
	storeURL := backendRedisStoreURL(t, base, "{"+backendNamespace("pharox-fault-")+"}:")
	s, err := open.Open(backendOpenContext(t), storeURL)
	if err != nil {
		t.Fatalf("open %s: %v", open.Redact(storeURL), err)
	}
	defer s.Close()
	if !storeHonoursLeaseID(t, s) {
		t.Log("this Redis store's scripts are not safe to run twice: go-redis retries off (max_retries=-1)")
		return backendWithParams(t, storeURL, "max_retries", "-1")
	}
	return storeURL
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
