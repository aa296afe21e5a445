package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/client"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/internal/testpeers"
	"github.com/pharox/pharox/server"
)

// Test peers (target, upstream proxies) are internal/testpeers.

const gwPass = "gw-pass"

// startHTTPUpstream starts a goproxy forward proxy on ip; with auth it
// requires alice's credentials (407 otherwise).
func startHTTPUpstream(t testing.TB, ip string, auth bool) *testpeers.Upstream {
	return testpeers.StartGoproxy(t, ip, testpeers.HTTPOptions{NoAuth: !auth})
}

// target is the origin server; besides the source IP of every request
// (testpeers.Target) it records concurrency, headers and POST bodies.
type target struct {
	*testpeers.Target

	mu       sync.Mutex
	inFlight map[string]int // per source IP
	maxIn    map[string]int
	headers  []http.Header
	posts    []string // what POST bodies arrived, for failure messages
}

func newTarget(t testing.TB) *target {
	tg := &target{inFlight: map[string]int{}, maxIn: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		tg.mu.Lock()
		tg.headers = append(tg.headers, r.Header.Clone())
		tg.inFlight[ip]++
		tg.maxIn[ip] = max(tg.maxIn[ip], tg.inFlight[ip])
		tg.mu.Unlock()
		defer func() {
			tg.mu.Lock()
			tg.inFlight[ip]--
			tg.mu.Unlock()
		}()
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil {
			time.Sleep(d)
		}
		if r.URL.Path == "/hang" {
			<-r.Context().Done()
			return
		}
		if tg.Banned(ip) {
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return
		}
		w.Header().Set("X-Seen-From", ip)
		if r.Method == http.MethodPost {
			// Read it all first: an HTTP/1 server handler may not read the
			// body after it started answering.
			b, err := io.ReadAll(r.Body)
			tg.mu.Lock()
			tg.posts = append(tg.posts, fmt.Sprintf("cl=%d te=%v got=%d err=%v", r.ContentLength, r.TransferEncoding, len(b), err))
			tg.mu.Unlock()
			// Answer a moment later: a Go proxy (goproxy, and any built on
			// net/http) reads the request body once more after its last
			// byte, and fails the exchange if the server answered and
			// closed that body first.
			time.Sleep(5 * time.Millisecond)
			w.Write(b)
			return
		}
		io.WriteString(w, "hello from target")
	})
	tg.Target = testpeers.NewTarget(t, mux)
	return tg
}

func (tg *target) maxInFlight() map[string]int {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	m := make(map[string]int, len(tg.maxIn))
	for k, v := range tg.maxIn {
		m[k] = v
	}
	return m
}

// env is a gateway over an in-memory store with one pool, "main".
type env struct {
	t      *testing.T
	store  pharox.Storage
	mgr    *pharox.Manager
	pool   *pharox.Pool
	gw     *Gateway
	addr   string // HTTP listener
	socks  string // SOCKS5 listener
	tg     *target
	logs   *syncBuffer
	byIP   map[string]*pharox.Proxy
	client *http.Client
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newEnv starts the target and a gateway over a Manager in this process;
// configure may adjust the config.
func newEnv(t *testing.T, configure func(*Config)) *env {
	return newEnvWith(t, false, configure)
}

// newEnvWith starts the target and a gateway; with remote the gateway
// leases through the Go client from a pharox server over the same store.
func newEnvWith(t *testing.T, remote bool, configure func(*Config)) *env {
	return newEnvOn(t, testfactory.Memory(t), nil, remote, configure)
}

// newEnvOn is newEnvWith over store (closed at the end of the test), with
// a Manager built with mopts.
func newEnvOn(t *testing.T, store pharox.Storage, mopts []pharox.ManagerOption, remote bool, configure func(*Config)) *env {
	e := &env{t: t, store: store, tg: newTarget(t), logs: &syncBuffer{}, byIP: map[string]*pharox.Proxy{}}
	t.Cleanup(func() { e.store.Close() })
	e.mgr = pharox.NewManager(e.store, mopts...)
	pool, err := e.store.CreatePool(context.Background(), pharox.Pool{Name: "main"})
	if err != nil {
		t.Fatal(err)
	}
	e.pool = pool
	cfg := Config{
		Leaser:      NewLocalLeaser(e.mgr),
		DefaultPool: "main",
		Logger:      slog.New(slog.NewJSONHandler(e.logs, nil)),
		UpstreamTLS: &tls.Config{RootCAs: e.tg.RootCAs()},
	}
	if remote {
		srv := server.New(e.mgr, server.Options{ConsumerKeys: []string{"consumer-key"}, ReapInterval: -1,
			Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
		hs := httptest.NewServer(srv)
		t.Cleanup(func() {
			srv.Close()
			hs.Close()
		})
		c, err := client.New(hs.URL, client.WithAPIKey("consumer-key"), client.WithHTTPClient(hs.Client()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(hs.Client().CloseIdleConnections)
		cfg.Leaser = NewRemoteLeaser(c)
	}
	if configure != nil {
		configure(&cfg)
	}
	gw, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.gw = gw
	hln, sln := testpeers.Listen(t, "127.0.0.1"), testpeers.Listen(t, "127.0.0.1")
	e.addr, e.socks = hln.Addr().String(), sln.Addr().String()
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := gw.Serve(hln); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	wg.Go(func() {
		if err := gw.ServeSOCKS(sln); err != nil {
			t.Errorf("ServeSOCKS: %v", err)
		}
	})
	t.Cleanup(func() {
		if err := gw.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		wg.Wait()
	})
	e.client = e.proxyClient("")
	return e
}

// add registers upstreams in the pool, with the given max concurrency
// (0: unlimited) and credentials.
func (e *env) add(maxConc int, cred *pharox.Credentials, ups ...*testpeers.Upstream) {
	e.t.Helper()
	for _, u := range ups {
		p := u.Proxy(e.pool.ID, maxConc, cred)
		p.Country, p.Source = "AR", "test"
		out, err := e.store.AddProxies(context.Background(), []pharox.Proxy{p})
		if err != nil {
			e.t.Fatal(err)
		}
		e.byIP[u.IP] = out[0]
	}
}

// proxyClient is a Go HTTP client using the gateway as its proxy, with
// user (routing parameters) and the gateway password when user is set.
func (e *env) proxyClient(user string) *http.Client {
	u := &url.URL{Scheme: "http", Host: e.addr}
	if user != "" {
		u.User = url.UserPassword(user, gwPass)
	}
	tr := &http.Transport{
		Proxy:               http.ProxyURL(u),
		TLSClientConfig:     e.tg.TLS.Client().Transport.(*http.Transport).TLSClientConfig.Clone(),
		MaxIdleConnsPerHost: 256,
	}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// get fetches url through c and returns the status, the upstream IP the
// target saw (X-Seen-From) and the gateway's reason header.
func get(t *testing.T, c *http.Client, url string) (status int, from, reason string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Seen-From"), resp.Header.Get(ReasonHeader)
}

// activeLeases counts the pool's active leases.
func (e *env) activeLeases() int {
	s, err := e.store.GetPoolStats(context.Background(), "main")
	if err != nil {
		e.t.Fatal(err)
	}
	return s.TotalLeases
}

// waitNoLeases waits until every lease of the pool has been released:
// releases after a client disconnect happen on the gateway's side of the
// connection, a moment after the client has moved on.
func (e *env) waitNoLeases() {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for e.activeLeases() != 0 {
		if time.Now().After(deadline) {
			e.t.Fatalf("%d leases still active", e.activeLeases())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *env) proxy(ip string) *pharox.Proxy {
	e.t.Helper()
	p, err := e.store.GetProxy(context.Background(), e.byIP[ip].ID)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

func countBy(ips []string) map[string]int {
	m := map[string]int{}
	for _, ip := range ips {
		m[ip]++
	}
	return m
}
