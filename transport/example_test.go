package transport_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
	"github.com/pharox/pharox/transport"
)

// startUpstream starts an HTTP forward proxy on loopback (standing in for
// a provider's proxy) that tags the requests it forwards with its name.
func startUpstream(name string) *httptest.Server {
	p := goproxy.NewProxyHttpServer()
	p.Logger = log.New(io.Discard, "", 0)
	p.Tr = &http.Transport{}
	p.OnRequest().DoFunc(func(r *http.Request, _ *goproxy.ProxyCtx) (*http.Request, *http.Response) {
		r.Header.Set("X-Upstream", name)
		return r, nil
	})
	s := httptest.NewServer(p)
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	return s
}

// addUpstream registers a running upstream as a proxy of pool.
func addUpstream(ctx context.Context, store pharox.Storage, pool *pharox.Pool, s *httptest.Server) {
	u, _ := url.Parse(s.URL)
	port, _ := strconv.Atoi(u.Port())
	pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{Host: u.Hostname(), Port: port, Protocol: pharox.ProtocolHTTP})
}

// A plain http.Client whose requests each lease a proxy from a pool in
// this process. Closing the body gives the proxy back.
func Example() {
	// The site to scrape, on loopback.
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello via %s", r.Header.Get("X-Upstream"))
	}))
	defer site.Close()
	upstream := startUpstream("upstream-1")
	defer upstream.Close()

	ctx := context.Background()
	store, err := memory.New()
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	pool, _ := pharox.BootstrapPool(ctx, store, "main", "")
	addUpstream(ctx, store, pool, upstream)
	mgr := pharox.NewManager(store)

	rt, err := transport.New(transport.Local(mgr), "main", transport.WithConsumer("scraper-1"))
	if err != nil {
		fmt.Println(err)
		return
	}
	client := &http.Client{Transport: rt, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()

	resp, err := client.Get(site.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close() // gives the proxy back
	fmt.Println(resp.StatusCode, string(body))

	stats, _ := mgr.PoolStats(ctx, "main")
	fmt.Println("leases held:", stats.TotalLeases)
	// Output:
	// 200 hello via upstream-1
	// leases held: 0
}

// Requests made with the same session key go through the same proxy.
func ExampleWithSession() {
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("X-Upstream"))
	}))
	defer site.Close()

	ctx := context.Background()
	store, err := memory.New()
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	pool, _ := pharox.BootstrapPool(ctx, store, "main", "")
	for _, name := range []string{"a", "b", "c"} {
		up := startUpstream(name)
		defer up.Close()
		addUpstream(ctx, store, pool, up)
	}
	mgr := pharox.NewManager(store)
	rt, _ := transport.New(transport.Local(mgr), "main", transport.WithStrategy(pharox.RoundRobin))
	client := &http.Client{Transport: rt, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()

	account := transport.WithSession(ctx, "account-42")
	used := map[string]bool{}
	for range 5 {
		req, _ := http.NewRequestWithContext(account, http.MethodGet, site.URL, nil)
		resp, err := client.Do(req)
		if err != nil {
			fmt.Println(err)
			return
		}
		via, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		used[string(via)] = true
	}
	fmt.Println("proxies used by the session:", len(used))
	// Output:
	// proxies used by the session: 1
}
