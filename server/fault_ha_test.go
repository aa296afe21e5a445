package server_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/pharox/pharox/internal/faulttest"
)

// TestHAPostgresFailover runs the load on a PostgreSQL primary with a
// synchronous streaming standby, the service given both hosts with
// target_session_attrs=read-write; mid-load the primary crashes and the
// standby is promoted. The service follows it by itself, and since every
// acquisition reached the standby before it was acknowledged, the audit
// finds every lease a client was granted. A release may be lost (the
// store commits them without waiting, by design): its slot stays taken
// until the lease expires, never given out twice.
func TestHAPostgresFailover(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	backendPostgresURL(t)
	if testing.Short() {
		t.Skip("fault tests start their own PostgreSQL clusters: skipped in -short mode")
	}
	// The quotes reach postgres through pg_ctl's shell.
	primary := faulttest.StartPostgres(t, faulttest.WithSetting("synchronous_standby_names", "'*'"))
	standby := primary.StartStandby(t)
	storeURL := backendWithParams(t,
		fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable", primary.Port, standby.Port),
		"target_session_attrs", "read-write", "connect_timeout", "5", "pool_max_conns", backendPGMaxConns)
	faultRun(t, storeURL, 2, func(l *faultLoad) {
		l.lostReleasesAllowed = true // releases commit without waiting for the standby
		primary.Stop("immediate")
		time.Sleep(time.Second)
		standby.Promote()
	})
}
