package colly_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"sync"

	"github.com/gocolly/colly/v2"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
	"github.com/pharox/pharox/transport"
)

// A colly collector crawling through a pool of proxies: every request
// leases a proxy, rotates round robin, reports how it went, and gives the
// proxy back once colly has read the page.
func Example() {
	// A small site on loopback: an index linking to three pages.
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/" {
			fmt.Fprint(w, `<a href="/a">a</a> <a href="/b">b</a> <a href="/c">c</a>`)
			return
		}
		fmt.Fprintf(w, `<html><title>page %s</title></html>`, r.URL.Path[1:])
	}))
	defer site.Close()

	// Two upstream HTTP proxies on loopback, standing in for a provider's.
	ctx := context.Background()
	store, err := memory.New()
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	pool, _ := pharox.BootstrapPool(ctx, store, "crawl", "")
	var mu sync.Mutex
	via := map[string]int{}
	for _, name := range []string{"proxy-1", "proxy-2"} {
		up := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
			mu.Lock()
			via[name]++
			mu.Unlock()
			r.Out.URL = r.In.URL // a forward proxy gets the absolute URL
		}})
		defer up.Close()
		u, _ := url.Parse(up.URL)
		port, _ := strconv.Atoi(u.Port())
		pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{Host: u.Hostname(), Port: port, Protocol: pharox.ProtocolHTTP})
	}
	mgr := pharox.NewManager(store)

	rt, err := transport.New(transport.Local(mgr), "crawl", transport.WithStrategy(pharox.RoundRobin))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer rt.CloseIdleConnections()
	c := colly.NewCollector()
	c.WithTransport(rt)

	var titles []string
	c.OnHTML("a[href]", func(e *colly.HTMLElement) { e.Request.Visit(e.Attr("href")) })
	c.OnHTML("title", func(e *colly.HTMLElement) { titles = append(titles, e.Text) })
	if err := c.Visit(site.URL + "/"); err != nil {
		fmt.Println(err)
		return
	}
	c.Wait()

	slices.Sort(titles)
	fmt.Println(titles)
	fmt.Println("requests per proxy:", via["proxy-1"], via["proxy-2"])
	stats, _ := mgr.PoolStats(ctx, "crawl")
	fmt.Println("leases held:", stats.TotalLeases)
	// Output:
	// [page a page b page c]
	// requests per proxy: 2 2
	// leases held: 0
}
