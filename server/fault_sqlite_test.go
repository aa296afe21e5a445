package server_test

import (
	"path/filepath"
	"testing"
	"time"
)

// TestFaultSQLiteServeKilled kills the serve process (SIGKILL) under the
// load, twice, and starts another over the same file each time: the
// clients see the service go away and come back, and the audit finds every
// lease a client was granted, no proxy held twice.
func TestFaultSQLiteServeKilled(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	if testing.Short() {
		t.Skip("fault tests run server processes: skipped in -short mode")
	}
	storeURL := "sqlite://" + filepath.Join(t.TempDir(), "pharox.db")
	faultRun(t, storeURL, 1, func(l *faultLoad) {
		for range 2 {
			l.killServer(0, storeURL)
			l.waitGrants(faultClients, time.Now(), faultRecoveryLimit)
		}
	})
}
