package pharox_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
)

// The README's quick start: a pool with one proxy, leased and released.
func Example() {
	ctx := context.Background()
	store, err := memory.New()
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()

	pool, _ := pharox.BootstrapPool(ctx, store, "latam-residential", "")
	two := 2
	pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{
		Host: "186.33.123.10", Port: 8080, Protocol: pharox.ProtocolHTTP,
		Credentials: &pharox.Credentials{User: "alice", Password: "s3cret"},
		Country:     "AR", MaxConcurrency: &two,
	})

	manager := pharox.NewManager(store)
	lease, err := manager.Acquire(ctx, "latam-residential", &pharox.AcquireOptions{
		Consumer: "worker-1",
		Duration: 5 * time.Minute,
		Filters:  &pharox.Filters{Country: "AR"},
	})
	if err != nil {
		fmt.Println("no proxy:", err)
		return
	}
	fmt.Println("leased", lease.Proxy) // the password is masked when printed
	fmt.Println("use", lease.Proxy.URL())

	if _, err := manager.Release(ctx, lease.ID); err != nil {
		fmt.Println("release:", err)
	}
	stats, _ := manager.PoolStats(ctx, "latam-residential")
	fmt.Println("active leases after release:", stats.TotalLeases)
	// Output:
	// leased http://alice:xxxxx@186.33.123.10:8080
	// use http://alice:s3cret@186.33.123.10:8080
	// active leases after release: 0
}
