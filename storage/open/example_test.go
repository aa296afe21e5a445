package open_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/open"
)

// Open picks the store from a URL, so the same code runs on an embedded
// SQLite file, PostgreSQL or Redis by configuration alone.
func ExampleOpen() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "pharox-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	store, err := open.Open(ctx, "sqlite://"+filepath.Join(dir, "pharox.db"))
	if err != nil {
		fmt.Println("open:", err)
		return
	}
	defer store.Close()
	pool, _ := pharox.BootstrapPool(ctx, store, "main", "")
	pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{Host: "10.0.0.1", Port: 3128, Protocol: pharox.ProtocolHTTP})
	lease, err := pharox.NewManager(store).Acquire(ctx, "main", nil)
	if err != nil {
		fmt.Println("acquire:", err)
		return
	}
	fmt.Println("leased", lease.Proxy.Address())

	// Redact is for logging a URL: it hides the password.
	fmt.Println(open.Redact("postgres://app:s3cret@127.0.0.1:5432/pharox"))

	// An unknown scheme is one sentence listing the supported ones.
	_, err = open.Open(ctx, "cassandra://127.0.0.1")
	fmt.Println("invalid argument:", errors.Is(err, pharox.ErrInvalidArgument))
	// Output:
	// leased 10.0.0.1:3128
	// postgres://app:xxxxx@127.0.0.1:5432/pharox
	// invalid argument: true
}
