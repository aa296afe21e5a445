package memory_test

import (
	"context"
	"fmt"
	"log"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
)

func ExampleNew() {
	ctx := context.Background()
	store, err := memory.New()
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	m := pharox.NewManager(store)

	pool, err := pharox.BootstrapPool(ctx, store, "residential", "example pool")
	if err != nil {
		log.Fatal(err)
	}
	_, err = pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{
		Host:           "203.0.113.7",
		Port:           8080,
		Protocol:       pharox.ProtocolHTTP,
		Country:        "de",
		Credentials:    &pharox.Credentials{User: "alice", Password: "s3cret"},
		MaxConcurrency: new(1),
	})
	if err != nil {
		log.Fatal(err)
	}

	lease, err := m.Acquire(ctx, "residential", &pharox.AcquireOptions{
		Filters: &pharox.Filters{Country: "DE"},
	})
	if err != nil {
		log.Fatal(err)
	}
	// String masks the password; lease.Proxy.URL() has it for HTTP clients.
	fmt.Println("leased", lease.Proxy, lease.Proxy.Country)

	// The only proxy is exclusive, so a second acquisition misses.
	_, err = m.Acquire(ctx, "residential", nil)
	fmt.Println("second acquire:", err != nil)

	released, err := m.Release(ctx, lease.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(released.Status)

	stats, err := m.PoolStats(ctx, "residential")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("available:", stats.AvailableProxies, "leases:", stats.TotalLeases)
	// Output:
	// leased http://alice:xxxxx@203.0.113.7:8080 DE
	// second acquire: true
	// released
	// available: 1 leases: 0
}
