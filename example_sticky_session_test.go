package pharox_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
)

// A session key keeps a consumer on the same proxy across leases (a login
// that must keep its IP), even with a strategy that would otherwise move on.
func ExampleAcquireOptions_sessionKey() {
	ctx := context.Background()
	store, err := memory.New()
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	pool, _ := pharox.BootstrapPool(ctx, store, "main", "")
	for _, host := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"} {
		pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{Host: host, Port: 3128, Protocol: pharox.ProtocolHTTP})
	}
	manager := pharox.NewManager(store)

	opts := &pharox.AcquireOptions{
		Consumer:   "shop-bot",
		Strategy:   pharox.RoundRobin,
		SessionKey: "account-42",
		SessionTTL: 30 * time.Minute,
	}
	var seen []string
	for range 3 {
		lease, err := manager.Acquire(ctx, "main", opts)
		if err != nil {
			fmt.Println("acquire:", err)
			return
		}
		seen = append(seen, lease.Proxy.Address())
		manager.Release(ctx, lease.ID)
	}
	fmt.Println("same proxy every time:", seen[0] == seen[1] && seen[1] == seen[2])
	// Output:
	// same proxy every time: true
}
