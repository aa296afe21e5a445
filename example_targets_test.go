package pharox_test

import (
	"context"
	"fmt"
	"log"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
)

// A site that blocks a proxy cools it down for that site only: the next
// acquisitions for the site get the other proxy, every other site (and an
// acquisition without a target) can still get it, and its global status
// stays active.
func ExampleNormalizeTarget() {
	for _, in := range []string{"https://www.shop.example.co.uk:8443/cart", "news.example.com:443", "[::1]:8080", "localhost"} {
		t, _ := pharox.NormalizeTarget(in)
		fmt.Println(t)
	}
	ctx := context.Background()
	store, err := memory.New()
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	pool, _ := pharox.BootstrapPool(ctx, store, "main", "")
	for _, host := range []string{"10.0.0.1", "10.0.0.2"} {
		pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{Host: host, Port: 3128, Protocol: pharox.ProtocolHTTP})
	}
	manager := pharox.NewManager(store)

	lease, _ := manager.Acquire(ctx, "main", &pharox.AcquireOptions{Target: "https://shop.example/"})
	blocked := lease.ProxyID
	p, _ := manager.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeSuccess, StatusCode: 403, Target: "https://shop.example/"})
	fmt.Println("global status after a 403 from shop.example:", p.Status)
	manager.Release(ctx, lease.ID)

	for _, target := range []string{"shop.example", "news.example", ""} {
		got := map[bool]int{}
		for range 4 {
			l, _ := manager.Acquire(ctx, "main", &pharox.AcquireOptions{Target: target, Strategy: pharox.RoundRobin})
			got[l.ProxyID == blocked]++
			manager.Release(ctx, l.ID)
		}
		fmt.Printf("target %q: the blocked proxy %d times of 4\n", target, got[true])
	}
	// Output:
	// example.co.uk
	// example.com
	// ::1
	// localhost
	// global status after a 403 from shop.example: active
	// target "shop.example": the blocked proxy 0 times of 4
	// target "news.example": the blocked proxy 2 times of 4
	// target "": the blocked proxy 2 times of 4
}
