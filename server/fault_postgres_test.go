package server_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/pharox/pharox/internal/faulttest"
)

// faultPostgres starts a PostgreSQL cluster of the test's own, which the
// test may restart without disturbing other tests, and returns it with
// the URL of a store in it. Fault tests run only when the shared servers
// are configured too, so that a plain `go test ./...` stays quick.
func faultPostgres(t *testing.T, opts ...faulttest.PostgresOption) (*faulttest.Postgres, string) {
	backendPostgresURL(t)
	if testing.Short() {
		t.Skip("fault tests start their own PostgreSQL cluster: skipped in -short mode")
	}
	pg := faulttest.StartPostgres(t, opts...)
	return pg, backendWithParams(t, pg.URL("postgres"), "pool_max_conns", backendPGMaxConns)
}

// TestFaultPostgresRestart restarts PostgreSQL under 16 clients leasing
// through two server processes: no answer is a 500, every 503 carries
// Retry-After, no proxy is ever held twice, every lease a client got is
// accounted for, /readyz says 503 while the store is down and 200 after,
// and the service recovers by itself.
func TestFaultPostgresRestart(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	pg, storeURL := faultPostgres(t)
	faultRun(t, storeURL, 2, func(l *faultLoad) {
		pg.Stop("fast")
		faultWaitReady(t, l.urls[0], http.StatusServiceUnavailable)
		time.Sleep(2 * time.Second)
		pg.Start()
		faultWaitReady(t, l.urls[0], http.StatusOK)
	})
}
