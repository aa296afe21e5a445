package pharox_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
)

// A consumer quota caps how many leases one consumer holds at once: the
// second acquisition is refused with a *QuotaError (ErrQuotaExceeded)
// until the first lease is released.
func ExampleManager_SetQuota() {
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

	scraper, _ := manager.EnsureConsumer(ctx, "scraper-1")
	q, err := manager.SetQuota(ctx, pharox.Quota{
		Subject: pharox.QuotaConsumer, SubjectID: scraper.ID,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 1},
	})
	if err != nil {
		fmt.Println("set quota:", err)
		return
	}
	fmt.Printf("%s %s: at most %d lease\n", q.Subject, q.Name, q.MaxConcurrentLeases)

	opts := &pharox.AcquireOptions{Consumer: "scraper-1"}
	first, _ := manager.Acquire(ctx, "main", opts)
	_, err = manager.Acquire(ctx, "main", opts)
	fmt.Println(err)
	if qe, ok := errors.AsType[*pharox.QuotaError](err); ok {
		fmt.Println("quota exceeded:", errors.Is(err, pharox.ErrQuotaExceeded), "limit:", qe.Limit, "retry after:", qe.RetryAfter)
	}

	manager.Release(ctx, first.ID)
	if _, err := manager.Acquire(ctx, "main", opts); err == nil {
		fmt.Println("after the release: leased")
	}
	// Output:
	// consumer scraper-1: at most 1 lease
	// acquire from pool "main": consumer "scraper-1" is over its quota max_concurrent_leases=1 (retry in 1s)
	// quota exceeded: true limit: max_concurrent_leases retry after: 1s
	// after the release: leased
}

// A holder reports the traffic a lease carried when it releases it; the
// Manager's usage report totals it per consumer, pool, proxy or target.
func ExampleManager_ReleaseWithUsage() {
	ctx := context.Background()
	store, err := memory.New()
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	pool, _ := pharox.BootstrapPool(ctx, store, "main", "")
	pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{Host: "10.0.0.1", Port: 3128, Protocol: pharox.ProtocolHTTP})
	manager := pharox.NewManager(store)

	for i, target := range []string{"https://shop.example/cart", "https://news.example/", "https://shop.example/"} {
		lease, err := manager.Acquire(ctx, "main", &pharox.AcquireOptions{Consumer: "scraper-1", Target: target})
		if err != nil {
			fmt.Println("acquire:", err)
			return
		}
		// What the gateway or transport measured while the lease was held.
		used := pharox.Usage{Requests: int64(i + 1), BytesSent: 400, BytesReceived: 10_000}
		if _, err := manager.ReleaseWithUsage(ctx, lease.ID, used); err != nil {
			fmt.Println("release:", err)
			return
		}
	}

	for _, group := range []pharox.UsageGroup{pharox.UsageByConsumer, pharox.UsageByProxy, pharox.UsageByTarget} {
		rows, err := manager.Usage(ctx, pharox.UsageQuery{GroupBy: group})
		if err != nil {
			fmt.Println("usage:", err)
			return
		}
		for _, r := range rows {
			name := r.Name
			if group == pharox.UsageByTarget {
				name = r.Key
			}
			fmt.Printf("%s %s: %d leases, %d requests, %d bytes sent, %d received\n",
				group, name, r.Leases, r.Requests, r.BytesSent, r.BytesReceived)
		}
	}
	// Output:
	// consumer scraper-1: 3 leases, 6 requests, 1200 bytes sent, 30000 received
	// proxy 10.0.0.1:3128: 3 leases, 6 requests, 1200 bytes sent, 30000 received
	// target news.example: 1 leases, 2 requests, 400 bytes sent, 10000 received
	// target shop.example: 2 leases, 4 requests, 800 bytes sent, 20000 received
}
