package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/internal/testpeers"
)

// BenchmarkTunnelIdleWatch downloads 8 MiB per CONNECT tunnel through two
// gateways over the same upstream, one watching tunnels for idleness (the
// default: each read is seen, so the kernel cannot splice the sockets)
// and one with IdleTimeout < 0 (spliced), alternating, and reports both
// rates and their ratio.
func BenchmarkTunnelIdleWatch(b *testing.B) {
	const size = 8 << 20
	src := testpeers.Listen(b, "127.0.0.1")
	var wg sync.WaitGroup
	b.Cleanup(func() { src.Close(); wg.Wait() })
	wg.Go(func() {
		zero := make([]byte, 64<<10)
		for {
			c, err := src.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				for left := size; left > 0; left -= len(zero) {
					if _, err := c.Write(zero[:min(left, len(zero))]); err != nil {
						return
					}
				}
			})
		}
	})
	up := startHTTPUpstream(b, "127.0.0.2", false)
	store := testfactory.Memory(b)
	b.Cleanup(func() { store.Close() })
	ctx := context.Background()
	pool, err := store.CreatePool(ctx, pharox.Pool{Name: "main"})
	if err != nil {
		b.Fatal(err)
	}
	host, portStr, _ := net.SplitHostPort(up.Addr)
	port, _ := strconv.Atoi(portStr)
	if _, err := store.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: host, Port: port, Protocol: pharox.ProtocolHTTP}}); err != nil {
		b.Fatal(err)
	}
	start := func(idle time.Duration) string {
		gw, err := New(Config{Leaser: NewLocalLeaser(pharox.NewManager(store)), DefaultPool: "main", IdleTimeout: idle,
			Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
		if err != nil {
			b.Fatal(err)
		}
		ln := testpeers.Listen(b, "127.0.0.1")
		var gwg sync.WaitGroup
		gwg.Go(func() { gw.Serve(ln) })
		b.Cleanup(func() { gw.Close(); gwg.Wait() })
		return ln.Addr().String()
	}
	watched, spliced := start(0), start(-1)
	download := func(gw string) time.Duration {
		t0 := time.Now()
		c, err := net.Dial("tcp", gw)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", src.Addr(), src.Addr())
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("CONNECT: %v %v", resp, err)
		}
		if n, err := io.Copy(io.Discard, br); err != nil || n != size {
			b.Fatalf("downloaded %d bytes: %v", n, err)
		}
		return time.Since(t0)
	}
	download(watched)
	download(spliced)
	var dw, ds time.Duration
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			dw += download(watched)
			ds += download(spliced)
		} else {
			ds += download(spliced)
			dw += download(watched)
		}
	}
	b.StopTimer()
	mb := float64(size) / (1 << 20) * float64(b.N)
	b.ReportMetric(mb/dw.Seconds(), "watched-MiB/s")
	b.ReportMetric(mb/ds.Seconds(), "spliced-MiB/s")
	b.ReportMetric(ds.Seconds()/dw.Seconds(), "ratio")
}
