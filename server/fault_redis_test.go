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
// kill and restart, and returns it with the URL of a store in it.
func faultRedis(t *testing.T) (*faulttest.Redis, string) {
	backendRedisURL(t)
	if testing.Short() {
		t.Skip("fault tests start their own Redis server: skipped in -short mode")
	}
	r := faulttest.StartRedis(t, faultRedisSettings...)
	storeURL := backendRedisStoreURL(t, r.URL(), "{"+backendNamespace("pharox-fault-")+"}:")
	faultSkipUnlessRetrySafe(t, storeURL)
	return r, storeURL
}

// faultSkipUnlessRetrySafe skips t unless the Redis store runs its scripts
// safely under go-redis's own retries, which repeat a script whose reply a
// cut connection lost. A store without that drifts its in-use counters
// when connections are cut (the audit catches it). The store got that
// together with AcquireOptions.LeaseID, which is what is probed.
func faultSkipUnlessRetrySafe(t *testing.T, storeURL string) {
	t.Helper()
	s, err := open.Open(backendOpenContext(t), storeURL)
	if err != nil {
		t.Fatalf("open %s: %v", open.Redact(storeURL), err)
	}
	defer s.Close()
	if !storeHonoursLeaseID(t, s) {
		t.Skip("this Redis store is not yet safe under go-redis retries (nor implements AcquireOptions.LeaseID): its fault tests would find its counters drift")
	}
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
