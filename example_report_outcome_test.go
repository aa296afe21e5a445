package pharox_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
)

// ReportOutcome feeds real traffic back into a proxy's health: with the
// default policy three failures in a row, from three leases (each lease
// gives one verdict), make it inactive (no longer leased), and a success
// makes it active again.
func ExampleManager_ReportOutcome() {
	ctx := context.Background()
	store, err := memory.New()
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	pool, _ := pharox.BootstrapPool(ctx, store, "main", "")
	pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{Host: "10.0.0.1", Port: 3128, Protocol: pharox.ProtocolHTTP})
	manager := pharox.NewManager(store, pharox.WithOutcomePolicy(pharox.DefaultOutcomePolicy()))

	var leases []*pharox.Lease
	for _, worker := range []string{"worker-1", "worker-2", "worker-3"} {
		lease, _ := manager.Acquire(ctx, "main", &pharox.AcquireOptions{Consumer: worker})
		leases = append(leases, lease)
	}
	for _, lease := range leases {
		p, err := manager.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeFailure, Reason: "connection reset"})
		if err != nil {
			fmt.Println("report:", err)
			return
		}
		fmt.Println("after a failure:", p.Status, "streak", p.FailureStreak)
	}
	p, _ := manager.ReportOutcome(ctx, leases[0], pharox.Outcome{Kind: pharox.OutcomeSuccess, StatusCode: 200, Latency: 120 * time.Millisecond})
	fmt.Println("after a success:", p.Status, "streak", p.FailureStreak)
	// Output:
	// after a failure: active streak 1
	// after a failure: active streak 2
	// after a failure: inactive streak 3
	// after a success: active streak 0
}
