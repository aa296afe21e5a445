package pharox_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
)

// WithLease releases the lease however fn ends: here fn fails, and the slot
// is free again afterwards.
func ExampleManager_WithLease() {
	ctx := context.Background()
	store, err := memory.New()
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	pool, _ := pharox.BootstrapPool(ctx, store, "main", "")
	pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{Host: "10.0.0.1", Port: 3128, Protocol: pharox.ProtocolHTTP})
	manager := pharox.NewManager(store)

	errScrape := errors.New("target answered 500")
	err = manager.WithLease(ctx, "main", &pharox.AcquireOptions{Consumer: "scraper"},
		func(ctx context.Context, lease *pharox.Lease) error {
			stats, _ := manager.PoolStats(ctx, "main")
			fmt.Println("inside: leases held", stats.TotalLeases, "through", lease.Proxy.Address())
			return errScrape
		})
	fmt.Println("error is fn's:", errors.Is(err, errScrape))
	stats, _ := manager.PoolStats(ctx, "main")
	fmt.Println("after: leases held", stats.TotalLeases)
	// Output:
	// inside: leases held 1 through 10.0.0.1:3128
	// error is fn's: true
	// after: leases held 0
}
