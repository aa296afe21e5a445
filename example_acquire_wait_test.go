package pharox_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
)

// AcquireWait waits for a slot instead of failing at once: the first wait
// runs out while the only proxy is held; the second ends when another
// worker releases it.
func ExampleManager_AcquireWait() {
	ctx := context.Background()
	store, err := memory.New()
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	pool, _ := pharox.BootstrapPool(ctx, store, "main", "")
	one := 1
	pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{Host: "10.0.0.1", Port: 3128, Protocol: pharox.ProtocolHTTP, MaxConcurrency: &one})
	manager := pharox.NewManager(store)

	held, _ := manager.Acquire(ctx, "main", &pharox.AcquireOptions{Consumer: "worker-1"})

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = manager.AcquireWait(short, "main", &pharox.AcquireOptions{Consumer: "worker-2"})
	cancel()
	fmt.Println("gave up:", errors.Is(err, pharox.ErrNoProxyAvailable), errors.Is(err, context.DeadlineExceeded))

	go manager.Release(ctx, held.ID) // another worker finishes
	wait, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	lease, err := manager.AcquireWait(wait, "main", &pharox.AcquireOptions{Consumer: "worker-2"})
	if err != nil {
		fmt.Println("wait:", err)
		return
	}
	fmt.Println("worker-2 got", lease.Proxy.Address())
	// Output:
	// gave up: true true
	// worker-2 got 10.0.0.1:3128
}
