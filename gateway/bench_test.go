package gateway

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
)

// benchEnv is a target, one upstream (goproxy with credentials) and a
// gateway over an in-memory store holding that upstream, plus two clients:
// one straight through the upstream (the baseline) and one through the
// gateway and then the same upstream.
type benchEnv struct {
	url           string
	direct, viaGW *http.Client
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	target := newTarget(b).plain.URL
	up := startHTTPUpstream(b, "127.0.0.2", true)
	store := memory.New()
	b.Cleanup(func() { store.Close() })
	mgr := pharox.NewManager(store)
	ctx := context.Background()
	pool, err := store.CreatePool(ctx, pharox.Pool{Name: "main"})
	if err != nil {
		b.Fatal(err)
	}
	host, portStr, _ := net.SplitHostPort(up.addr)
	port, _ := strconv.Atoi(portStr)
	if _, err := store.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: host, Port: port,
		Protocol: pharox.ProtocolHTTP, Credentials: alice()}}); err != nil {
		b.Fatal(err)
	}
	gw, err := New(Config{
		Leaser: NewLocalLeaser(mgr), DefaultPool: "main",
		// Access logs stay on, written to nowhere, so their cost counts.
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	ln := listenOn(b, "127.0.0.1")
	var wg sync.WaitGroup
	wg.Go(func() { gw.Serve(ln) })
	b.Cleanup(func() { gw.Close(); wg.Wait() })

	mk := func(proxy *url.URL) *http.Client {
		tr := &http.Transport{Proxy: http.ProxyURL(proxy), MaxIdleConnsPerHost: 128}
		b.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	return &benchEnv{
		url:    target + "/small",
		direct: mk(&url.URL{Scheme: "http", Host: up.addr, User: url.UserPassword(upUser, upPass)}),
		viaGW:  mk(&url.URL{Scheme: "http", Host: ln.Addr().String()}),
	}
}

func (e *benchEnv) get(b *testing.B, c *http.Client) {
	resp, err := c.Get(e.url)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("status %d: %s", resp.StatusCode, resp.Header.Get(ReasonHeader))
	}
}

// BenchmarkAddedLatency measures small sequential GETs straight through the
// upstream and through the gateway, interleaved so both see the same
// machine load, and reports the medians and the gateway's added median.
func BenchmarkAddedLatency(b *testing.B) {
	e := newBenchEnv(b)
	for range 50 { // warm up connections on both paths
		e.get(b, e.direct)
		e.get(b, e.viaGW)
	}
	direct := make([]time.Duration, 0, b.N)
	viaGW := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		first, second := e.direct, e.viaGW
		if i%2 == 1 {
			first, second = second, first
		}
		t0 := time.Now()
		e.get(b, first)
		t1 := time.Now()
		e.get(b, second)
		t2 := time.Now()
		if i%2 == 0 {
			direct, viaGW = append(direct, t1.Sub(t0)), append(viaGW, t2.Sub(t1))
		} else {
			viaGW, direct = append(viaGW, t1.Sub(t0)), append(direct, t2.Sub(t1))
		}
	}
	b.StopTimer()
	pd, pg := median(direct), median(viaGW)
	b.ReportMetric(float64(pd.Microseconds()), "direct-p50-µs")
	b.ReportMetric(float64(pg.Microseconds()), "gateway-p50-µs")
	b.ReportMetric(float64((pg - pd).Microseconds()), "added-p50-µs")
}

// BenchmarkThroughput64 runs 64 concurrent clients, first straight through
// the upstream then through the gateway, b.N requests each phase, and
// reports both rates and their ratio.
func BenchmarkThroughput64(b *testing.B) {
	e := newBenchEnv(b)
	const clients = 64
	// phase sends n requests through c and returns the rate.
	phase := func(c *http.Client, n int) float64 {
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range clients {
			wg.Go(func() {
				for next.Add(1) <= int64(n) {
					e.get(b, c)
				}
			})
		}
		wg.Wait()
		return float64(n) / time.Since(start).Seconds()
	}
	// Warm up both paths' connection pools.
	phase(e.direct, clients*4)
	phase(e.viaGW, clients*4)
	b.ResetTimer()
	// Alternate the phases, so a change of machine load hits both.
	// Each phase runs at least one request per client.
	n := b.N
	d1, g1 := phase(e.direct, max(n/2, clients)), phase(e.viaGW, max(n/2, clients))
	d2, g2 := phase(e.direct, max(n-n/2, clients)), phase(e.viaGW, max(n-n/2, clients))
	direct, viaGW := (d1+d2)/2, (g1+g2)/2
	b.StopTimer()
	b.ReportMetric(direct, "direct-req/s")
	b.ReportMetric(viaGW, "gateway-req/s")
	b.ReportMetric(viaGW/direct, "ratio")
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
