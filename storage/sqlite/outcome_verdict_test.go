package sqlite_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pharox/pharox"
)

// TestOneOutcomeVerdictAcrossStores: two Managers, each on its own Store
// opened on one file (as two processes would be), count one failure
// verdict per lease between them: the verdict lives in the file
// (leases.verdict_at), not in either Manager.
func TestOneOutcomeVerdictAcrossStores(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "shared.db")
	a, b := openPath(t, path), openPath(t, path)
	pool, err := pharox.BootstrapPool(ctx, a, "main", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pharox.BootstrapProxy(ctx, a, pool, pharox.Proxy{Host: "10.0.0.1", Port: 8080, Protocol: pharox.ProtocolHTTP}); err != nil {
		t.Fatal(err)
	}
	m1, m2 := pharox.NewManager(a), pharox.NewManager(b)
	lease, err := m1.Acquire(ctx, "main", &pharox.AcquireOptions{Duration: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 16 {
		m := []*pharox.Manager{m1, m2}[i%2]
		wg.Go(func() {
			if _, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeBanned, StatusCode: 429}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	p, err := b.GetProxy(ctx, lease.ProxyID)
	if err != nil {
		t.Fatal(err)
	}
	if p.FailureStreak != 1 || p.Status != pharox.StatusActive {
		t.Fatalf("16 ban reports on one lease through two stores: %s with streak %d, want active with 1", p.Status, p.FailureStreak)
	}
}
