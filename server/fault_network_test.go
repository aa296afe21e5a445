package server_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/pharox/pharox/internal/faulttest"
)

// TestFaultNetworkToPostgres puts a TCP proxy between the service and
// PostgreSQL and, under the load, adds latency, then resets every
// connection, then partitions the two for a few seconds.
func TestFaultNetworkToPostgres(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	pg, _ := faultPostgres(t)
	proxy := faulttest.StartTCPProxy(t, "127.0.0.1:"+strconv.Itoa(pg.Port))
	storeURL := backendWithParams(t, "postgres://postgres@"+proxy.Addr()+"/postgres?sslmode=disable", "pool_max_conns", backendPGMaxConns)
	faultRun(t, storeURL, 2, func(l *faultLoad) {
		proxy.SetLatency(20 * time.Millisecond)
		time.Sleep(2 * time.Second)
		proxy.SetLatency(0)
		proxy.DropAll()
		time.Sleep(500 * time.Millisecond)
		proxy.Partition(3 * time.Second)
	})
}

// TestFaultNetworkToRedis does the same between the service and Redis.
func TestFaultNetworkToRedis(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	r, _ := faultRedis(t)
	proxy := faulttest.StartTCPProxy(t, "127.0.0.1:"+strconv.Itoa(r.Port))
	storeURL := faultRedisStoreURL(t, "redis://"+proxy.Addr()+"/0")
	faultRun(t, storeURL, 2, func(l *faultLoad) {
		proxy.SetLatency(20 * time.Millisecond)
		time.Sleep(2 * time.Second)
		proxy.SetLatency(0)
		proxy.DropAll()
		time.Sleep(500 * time.Millisecond)
		proxy.Partition(3 * time.Second)
	})
}
