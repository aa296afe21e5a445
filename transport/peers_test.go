package transport

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/internal/testpeers"
	"github.com/pharox/pharox/storage/memory"
)

// Test peers (target, upstream proxies) are internal/testpeers.

// startHTTPSUpstream is testpeers.StartHTTP spoken over TLS (an HTTPS
// proxy), with the httptest certificate the target has too: it listens on
// 127.0.0.1, which the certificate names, and dials from ip.
func startHTTPSUpstream(t testing.TB, ip string) *testpeers.Upstream {
	return testpeers.StartGoproxy(t, ip, testpeers.HTTPOptions{TLS: true, ListenLoopback: true})
}

// target is the origin server (testpeers.Target records the source IPs)
// with block pages and streamed, cut and empty answers.
type target struct {
	*testpeers.Target

	mu      sync.Mutex
	blockAs map[string]bool // source IPs answered with a 403 block page
	release chan struct{}   // /stream finishes when it is closed
}

func newTarget(t testing.TB) *target {
	tg := &target{blockAs: map[string]bool{}, release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		tg.mu.Lock()
		blocked := tg.blockAs[ip]
		tg.mu.Unlock()
		w.Header().Set("X-Seen-From", ip)
		switch {
		case tg.Banned(ip):
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return
		case blocked:
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, "<html><title>Attention Required! | Cloudflare</title>please complete the captcha</html>")
			return
		}
		switch r.URL.Path {
		case "/stream":
			// The first line at once, the last once the test says so. (Through
			// goproxy only in a tunnel: it does not flush forwarded answers.)
			io.WriteString(w, "first\n")
			w.(http.Flusher).Flush()
			select {
			case <-tg.release:
			case <-r.Context().Done():
				return
			}
			io.WriteString(w, "last\n")
		case "/drip":
			// n lines, one every 100 ms.
			n, _ := strconv.Atoi(r.URL.Query().Get("n"))
			for i := range n {
				fmt.Fprintf(w, "line %d\n", i)
				w.(http.Flusher).Flush()
				select {
				case <-time.After(100 * time.Millisecond):
				case <-r.Context().Done():
					return
				}
			}
		case "/cut":
			// Promise more than is sent, then drop the connection.
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		case "/echo":
			b, _ := io.ReadAll(r.Body)
			w.Write(b)
		default:
			io.WriteString(w, "hello from "+ip)
		}
	})
	tg.Target = testpeers.NewTarget(t, mux)
	return tg
}

func (tg *target) block(ip string) {
	tg.mu.Lock()
	tg.blockAs[ip] = true
	tg.mu.Unlock()
}

// env is one pool, "main", in an in-memory store, and the target.
type env struct {
	t     *testing.T
	store *memory.Store
	mgr   *pharox.Manager
	pool  *pharox.Pool
	tg    *target
	roots *x509.CertPool
	byIP  map[string]*pharox.Proxy
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, store: testfactory.Memory(t), tg: newTarget(t), byIP: map[string]*pharox.Proxy{}}
	t.Cleanup(func() { e.store.Close() })
	e.mgr = pharox.NewManager(e.store, pharox.WithLogger(quietLogger()))
	pool, err := e.store.CreatePool(context.Background(), pharox.Pool{Name: "main"})
	if err != nil {
		t.Fatal(err)
	}
	e.pool = pool
	e.roots = e.tg.RootCAs()
	return e
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// add registers upstreams in the pool with the given max concurrency (0:
// unlimited) and credentials.
func (e *env) add(maxConc int, cred *pharox.Credentials, ups ...*testpeers.Upstream) []*pharox.Proxy {
	e.t.Helper()
	var added []*pharox.Proxy
	for _, u := range ups {
		out, err := e.store.AddProxies(context.Background(), []pharox.Proxy{u.Proxy(e.pool.ID, maxConc, cred)})
		if err != nil {
			e.t.Fatal(err)
		}
		e.byIP[u.IP] = out[0]
		added = append(added, out[0])
	}
	return added
}

// addProxy registers one upstream with alice's credentials in a pool.
func (e *env) addProxy(pool uuid.UUID, u *testpeers.Upstream, country string) *pharox.Proxy {
	e.t.Helper()
	p := u.Proxy(pool, 0, testpeers.Alice())
	p.Country = country
	out, err := e.store.AddProxies(context.Background(), []pharox.Proxy{p})
	if err != nil {
		e.t.Fatal(err)
	}
	e.byIP[u.IP] = out[0]
	return out[0]
}

// base is a base transport that trusts the target's certificate.
func (e *env) base() *http.Transport {
	b := defaultBase()
	b.TLSClientConfig.RootCAs = e.roots
	return b
}

// transport is a Transport over the env's Manager, trusting the target.
func (e *env) transport(opts ...Option) *Transport {
	e.t.Helper()
	return e.transportWith(Local(e.mgr), opts...)
}

func (e *env) transportWith(l Leaser, opts ...Option) *Transport {
	e.t.Helper()
	opts = append([]Option{WithBaseTransport(e.base()), WithLogger(quietLogger())}, opts...)
	rt, err := New(l, "main", opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(rt.CloseIdleConnections)
	return rt
}

// activeLeases is the pool's active lease count.
func (e *env) activeLeases() int {
	e.t.Helper()
	s, err := e.mgr.PoolStats(context.Background(), "main")
	if err != nil {
		e.t.Fatal(err)
	}
	return s.TotalLeases
}

// noLeases fails the test unless every lease was given back.
func (e *env) noLeases() {
	e.t.Helper()
	if n := e.activeLeases(); n != 0 {
		e.t.Fatalf("%d leases still active after every body was closed, want 0", n)
	}
}

// proxy is the stored state of the proxy behind ip.
func (e *env) proxy(ip string) *pharox.Proxy {
	e.t.Helper()
	p, err := e.store.GetProxy(context.Background(), e.byIP[ip].ID)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// fetch GETs url through c and returns the status and body.
func fetch(t *testing.T, c *http.Client, ctx context.Context, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}
