package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
)

// usage is the store's usage total of pool "main".
func (e *env) usage() pharox.UsageRow {
	e.t.Helper()
	rows, err := e.mgr.Usage(context.Background(), pharox.UsageQuery{GroupBy: pharox.UsageByPool})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, r := range rows {
		if r.Key == e.pool.ID.String() {
			return r
		}
	}
	return pharox.UsageRow{}
}

// waitUsage waits until the store's usage of pool "main" is leases leases
// and want (want.Bytes* from the witness, which counts a moment after the
// release), and fails with both otherwise.
func (e *env) waitUsage(leases int64, want func() pharox.Usage) {
	e.t.Helper()
	e.noLeases()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, w := e.usage(), want()
		if got.Leases == leases && got.Usage == w {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("usage of pool main: %d leases, %+v; counted independently: %d leases, %+v", got.Leases, got.Usage, leases, w)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMeteringByteExact: each release reports one request and the bytes
// on the request's connection through the proxy, exactly as the proxy
// counts them (handshakes included: SOCKS, CONNECT, TLS to the target),
// over kept-alive connections and with requests at once.
func TestMeteringByteExact(t *testing.T) {
	cases := []struct {
		name       string
		socks, tls bool
		concurrent bool
	}{
		{"http forward", false, false, true},
		{"http connect", false, true, false},
		{"socks5", true, false, false},
		{"socks5 tls", true, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			testpeers.CheckLeaks(t)
			e := newEnv(t)
			site := testpeers.NewTarget(t, testpeers.BytesHandler())
			url := site.Plain.URL
			if tc.tls {
				url = site.TLS.URL
			}
			ln := testpeers.Counting(testpeers.Listen(t, "127.0.1.1"))
			if tc.socks {
				e.add(0, testpeers.Alice(), testpeers.StartSOCKS5On(t, ln, "127.0.1.1"))
			} else {
				e.add(0, testpeers.Alice(), testpeers.StartGoproxy(t, "127.0.1.1", testpeers.HTTPOptions{Listener: ln}))
			}
			c := &http.Client{Transport: e.transport(), Timeout: 30 * time.Second}
			var requests int64
			for _, n := range []int{0, 1, 700, 100 << 10} {
				if err := testpeers.GetBytes(c, url, n); err != nil {
					t.Fatal(err)
				}
				requests++
			}
			for _, n := range []int{1, 50 << 10} {
				if err := testpeers.PostEcho(c, url, n); err != nil {
					t.Fatal(err)
				}
				requests++
			}
			if tc.concurrent {
				// (A connection dialed for a request that got another one
				// and ended before the dial did keeps its handshake bytes
				// until a request uses it: at once only where there are
				// none, plain forwarding.)
				var wg sync.WaitGroup
				for g := range 6 {
					wg.Go(func() {
						for i := range 4 {
							if err := testpeers.GetBytes(c, url, 3000*g+i); err != nil {
								t.Error(err)
							}
						}
					})
				}
				wg.Wait()
				requests += 24
			}
			e.waitUsage(requests, func() pharox.Usage {
				return pharox.Usage{Requests: requests, BytesSent: ln.Read(), BytesReceived: ln.Written()}
			})
		})
	}
}

// TestMeteringHTTP2: requests to a site that speaks HTTP/2 through the
// proxy's tunnel share one connection, so each counts its bodies.
func TestMeteringHTTP2(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	site := httptest.NewUnstartedServer(testpeers.BytesHandler())
	site.EnableHTTP2 = true
	site.StartTLS()
	t.Cleanup(site.Close)
	e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, "127.0.1.1"))
	c := &http.Client{Transport: e.transport(), Timeout: 30 * time.Second}
	var want pharox.Usage
	for _, n := range []int{10, 5000, 70000} {
		resp, err := c.Get(fmt.Sprintf("%s/bytes?n=%d", site.URL, n))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || got != int64(n) {
			t.Fatalf("HTTP/%d, %d bytes; want HTTP/2 and %d", resp.ProtoMajor, got, n)
		}
		want.Requests++
		want.BytesReceived += got
	}
	if err := testpeers.PostEcho(c, site.URL, 1234); err != nil {
		t.Fatal(err)
	}
	want.Requests++
	want.BytesSent += 1234
	want.BytesReceived += 1234
	e.waitUsage(want.Requests, func() pharox.Usage { return want })
}

// TestWithoutMetering: releases report nothing.
func TestWithoutMetering(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	site := testpeers.NewTarget(t, testpeers.BytesHandler())
	e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, "127.0.1.1"))
	c := &http.Client{Transport: e.transport(WithoutMetering())}
	if err := testpeers.GetBytes(c, site.Plain.URL, 100); err != nil {
		t.Fatal(err)
	}
	e.noLeases()
	leases, err := e.store.ListLeases(context.Background(), pharox.LeaseQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 1 || leases[0].Usage != nil {
		t.Fatalf("leases %v: want one that reported no usage", leases)
	}
	if u := e.usage(); u.Leases != 0 {
		t.Fatalf("usage %+v without metering", u)
	}
}

// TestQuotaWait: a consumer at its concurrency cap fails with the
// QuotaError once its wait is over, and is served when a lease comes
// back within the wait.
func TestQuotaWait(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	site := testpeers.NewTarget(t, testpeers.BytesHandler())
	e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, "127.0.1.1"))
	ctx := context.Background()
	consumer, err := e.store.EnsureConsumer(ctx, "scraper")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.mgr.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: consumer.ID,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 1}}); err != nil {
		t.Fatal(err)
	}
	rt := e.transport(WithConsumer("scraper"), WithMaxWait(300*time.Millisecond))
	c := &http.Client{Transport: rt}
	held, err := c.Get(site.Plain.URL + "/bytes?n=10") // its body holds the lease
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Get(site.Plain.URL + "/bytes?n=10")
	if qe, ok := errors.AsType[*pharox.QuotaError](err); !ok || !errors.Is(err, pharox.ErrQuotaExceeded) ||
		qe.Limit != pharox.LimitMaxConcurrentLeases || qe.RetryAfter <= 0 {
		t.Fatalf("over the cap: %v, want the consumer's QuotaError", err)
	}
	time.AfterFunc(100*time.Millisecond, func() { held.Body.Close() })
	if err := testpeers.GetBytes(&http.Client{Transport: e.transport(WithConsumer("scraper"), WithMaxWait(10*time.Second))}, site.Plain.URL, 10); err != nil {
		t.Fatalf("a lease came back within the wait: %v", err)
	}
	e.noLeases()
}

// TestMeteringRemote: over a pharox server the Transport reports usage
// through the Go client, and a quota's refusal is a *pharox.QuotaError.
func TestMeteringRemote(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	site := testpeers.NewTarget(t, testpeers.BytesHandler())
	ln := testpeers.Counting(testpeers.Listen(t, "127.0.1.1"))
	e.add(0, testpeers.Alice(), testpeers.StartGoproxy(t, "127.0.1.1", testpeers.HTTPOptions{Listener: ln}))
	rt := e.transportWith(e.remoteLeaser(), WithConsumer("scraper"), WithMaxWait(0))
	c := &http.Client{Transport: rt}
	for _, n := range []int{3, 30000} {
		if err := testpeers.GetBytes(c, site.Plain.URL, n); err != nil {
			t.Fatal(err)
		}
	}
	e.waitUsage(2, func() pharox.Usage {
		return pharox.Usage{Requests: 2, BytesSent: ln.Read(), BytesReceived: ln.Written()}
	})

	ctx := context.Background()
	consumer, err := e.store.EnsureConsumer(ctx, "scraper")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.mgr.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: consumer.ID,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 1}}); err != nil {
		t.Fatal(err)
	}
	held, err := c.Get(site.Plain.URL + "/bytes?n=10")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Body.Close()
	_, err = c.Get(site.Plain.URL + "/bytes?n=10")
	if qe, ok := errors.AsType[*pharox.QuotaError](err); !ok || qe.Limit != pharox.LimitMaxConcurrentLeases {
		t.Fatalf("over the cap through a server: %v, want the consumer's QuotaError", err)
	}
}
