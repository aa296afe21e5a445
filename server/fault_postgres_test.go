package server_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pharox/pharox/internal/faulttest"
)

// faultPostgres starts a PostgreSQL cluster of the test's own, which the
// test may restart without disturbing other tests, and returns it with
// the URL of a store in it (extra URL parameters as key, value pairs).
// Fault tests run only when the shared servers are configured too, so that
// a plain `go test ./...` stays quick, and not in -short mode.
func faultPostgres(t *testing.T, params ...string) (*faulttest.Postgres, string) {
	backendPostgresURL(t)
	if testing.Short() {
		t.Skip("fault tests start their own PostgreSQL cluster: skipped in -short mode")
	}
	pg := faulttest.StartPostgres(t)
	return pg, backendWithParams(t, pg.URL("postgres"), append([]string{"pool_max_conns", backendPGMaxConns}, params...)...)
}

// faultPGAdmin is a small pool on the test's own cluster, for breaking it.
func faultPGAdmin(t *testing.T, pg *faulttest.Postgres) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(backendOpenContext(t), backendWithParams(t, pg.URL("postgres"), "pool_max_conns", "2"))
	if err != nil {
		t.Fatalf("connect to the test's cluster: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
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
		faultWaitReady(t, l.url(0), http.StatusServiceUnavailable)
		time.Sleep(2 * time.Second)
		pg.Start()
		faultWaitReady(t, l.url(0), http.StatusOK)
	})
}

// TestFaultPostgresCrash stops PostgreSQL as a crash would (immediate
// shutdown: no checkpoint, recovery from the WAL at start) under the load.
func TestFaultPostgresCrash(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	pg, storeURL := faultPostgres(t)
	faultRun(t, storeURL, 2, func(l *faultLoad) {
		l.lostReleasesAllowed = true // see faultLoad.lostReleasesAllowed
		pg.Stop("immediate")
		time.Sleep(time.Second)
		pg.Start()
	})
}

// TestFaultPostgresTerminateBackends terminates the service's database
// connections (pg_terminate_backend) again and again under the load.
func TestFaultPostgresTerminateBackends(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	pg, storeURL := faultPostgres(t)
	admin := faultPGAdmin(t, pg)
	faultRun(t, storeURL, 2, func(l *faultLoad) {
		killed := 0
		for range 8 {
			var n int
			err := admin.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`).Scan(&n)
			if err != nil {
				t.Errorf("terminate backends: %v", err)
				return
			}
			killed += n
			time.Sleep(250 * time.Millisecond)
		}
		t.Logf("terminated %d backends", killed)
	})
}

// TestFaultPostgresLockTimeout holds an exclusive lock on the store's
// tables for longer than the service's lock_timeout (set in its URL, as an
// operator would): statements that wait for it fail, and must answer 503,
// not 500.
func TestFaultPostgresLockTimeout(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	pg, storeURL := faultPostgres(t, "lock_timeout", "300", "statement_timeout", "2000")
	admin := faultPGAdmin(t, pg)
	faultRun(t, storeURL, 2, func(l *faultLoad) {
		ctx := context.Background()
		tx, err := admin.Begin(ctx)
		if err != nil {
			t.Errorf("begin: %v", err)
			return
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, `LOCK TABLE pharox.proxies, pharox.leases IN ACCESS EXCLUSIVE MODE`); err != nil {
			t.Errorf("lock: %v", err)
			return
		}
		time.Sleep(3 * time.Second)
	})
}
