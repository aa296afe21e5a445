package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	socks5 "github.com/armon/go-socks5"
	"github.com/elazarl/goproxy"
	"go.uber.org/goleak"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/client"
	"github.com/pharox/pharox/server"
	"github.com/pharox/pharox/storage/memory"
)

// Test peers, all real servers on loopback: upstream HTTP/CONNECT proxies
// are github.com/elazarl/goproxy, upstream SOCKS5 proxies
// github.com/armon/go-socks5. Each upstream listens on its own 127.0.0.x
// address and dials the target from that same address, so the target can
// tell from r.RemoteAddr which upstream a request came through.

const (
	upUser = "alice"
	upPass = "up-s3cr3t"
	gwPass = "gw-pass"
)

// checkLeaks fails the test if goroutines outlive it. Register it first:
// cleanups run last-in first-out, so it runs after every other cleanup.
func checkLeaks(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		goleak.VerifyNone(t)
	})
}

// target is the origin server; it records the source IP of every request.
type target struct {
	plain, tls *httptest.Server

	mu       sync.Mutex
	hits     []string       // source IPs in order
	inFlight map[string]int // per source IP
	maxIn    map[string]int
	banFrom  map[string]bool // source IPs answered 429
	headers  []http.Header
	posts    []string // what POST bodies arrived, for failure messages
}

func newTarget(t testing.TB) *target {
	tg := &target{inFlight: map[string]int{}, maxIn: map[string]int{}, banFrom: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		tg.mu.Lock()
		tg.hits = append(tg.hits, ip)
		tg.headers = append(tg.headers, r.Header.Clone())
		tg.inFlight[ip]++
		tg.maxIn[ip] = max(tg.maxIn[ip], tg.inFlight[ip])
		banned := tg.banFrom[ip]
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
		if banned {
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
	tg.plain = httptest.NewServer(mux)
	tg.tls = httptest.NewUnstartedServer(mux)
	tg.tls.Config.ErrorLog = log.New(io.Discard, "", 0)
	tg.tls.StartTLS()
	t.Cleanup(tg.plain.Close)
	t.Cleanup(tg.tls.Close)
	return tg
}

func (tg *target) ban(ip string) {
	tg.mu.Lock()
	tg.banFrom[ip] = true
	tg.mu.Unlock()
}

// seen returns the source IPs of the requests so far and forgets them.
func (tg *target) seen() []string {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	h := tg.hits
	tg.hits = nil
	return h
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

// boundDialer dials from ip, so the target sees it as the source address.
func boundDialer(ip string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
}

// dialFrom is boundDialer(ip).DialContext, resolving every name under
// .localhost to 127.0.0.1 (the system resolver may not), so tests can
// address several "sites" on loopback by name.
func dialFrom(ip string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := boundDialer(ip)
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if host, port, err := net.SplitHostPort(addr); err == nil && strings.HasSuffix(strings.ToLower(host), ".localhost") {
			addr = net.JoinHostPort("127.0.0.1", port)
		}
		return d.DialContext(ctx, network, addr)
	}
}

func listenOn(t testing.TB, ip string) net.Listener {
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatalf("listen on %s: %v (Linux routes all of 127.0.0.0/8 to loopback)", ip, err)
	}
	return ln
}

// upstream is one running upstream proxy.
type upstream struct {
	ip    string
	addr  string
	proto pharox.Protocol
	stop  func()
	once  sync.Once
}

func (u *upstream) close() { u.once.Do(u.stop) }

// startHTTPUpstream starts a goproxy forward proxy on ip; with auth it
// requires alice's credentials (407 otherwise).
func startHTTPUpstream(t testing.TB, ip string, auth bool) *upstream {
	return startGoproxy(t, ip, auth, false)
}

// startHTTPSUpstream is startHTTPUpstream served over TLS (an HTTPS proxy)
// with the httptest certificate, valid for "example.com".
func startHTTPSUpstream(t testing.TB, ip string) *upstream {
	return startGoproxy(t, ip, true, true)
}

func startGoproxy(t testing.TB, ip string, auth, useTLS bool) *upstream {
	p := goproxy.NewProxyHttpServer()
	p.Logger = log.New(io.Discard, "", 0)
	// Keep enough idle connections to the target for 64 concurrent
	// clients, or the peer churns through ephemeral ports.
	tr := &http.Transport{DialContext: dialFrom(ip), MaxIdleConnsPerHost: 256}
	p.Tr = tr
	p.ConnectDial = nil
	if auth {
		want := "Basic " + base64.StdEncoding.EncodeToString([]byte(upUser+":"+upPass))
		deny := func(r *http.Request) *http.Response {
			resp := goproxy.NewResponse(r, goproxy.ContentTypeText, http.StatusProxyAuthRequired, "auth required")
			resp.Header.Set("Proxy-Authenticate", `Basic realm="up"`)
			return resp
		}
		p.OnRequest().DoFunc(func(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
			if r.Header.Get("Proxy-Authorization") != want {
				return r, deny(r)
			}
			return r, nil
		})
		p.OnRequest().HandleConnectFunc(func(host string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
			if ctx.Req.Header.Get("Proxy-Authorization") != want {
				ctx.Resp = deny(ctx.Req)
				return goproxy.RejectConnect, host
			}
			return goproxy.OkConnect, host
		})
	}
	srv := httptest.NewUnstartedServer(p)
	srv.Listener.Close()
	srv.Listener = listenOn(t, ip)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	proto := pharox.ProtocolHTTP
	if useTLS {
		srv.StartTLS()
		proto = pharox.ProtocolHTTPS
	} else {
		srv.Start()
	}
	u := &upstream{ip: ip, addr: srv.Listener.Addr().String(), proto: proto, stop: func() {
		srv.CloseClientConnections()
		srv.Close()
		tr.CloseIdleConnections()
	}}
	t.Cleanup(u.close)
	return u
}

// startSOCKS5Upstream starts a go-socks5 server on ip, requiring alice's
// credentials.
func startSOCKS5Upstream(t testing.TB, ip string) *upstream {
	srv, err := socks5.New(&socks5.Config{
		Credentials: socks5.StaticCredentials{upUser: upPass},
		Logger:      log.New(io.Discard, "", 0),
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialFrom(ip)(ctx, network, addr)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln := listenOn(t, ip)
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				srv.ServeConn(c)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			})
		}
	})
	u := &upstream{ip: ip, addr: ln.Addr().String(), proto: pharox.ProtocolSOCKS5, stop: func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}}
	t.Cleanup(u.close)
	return u
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
	return newEnvOn(t, memory.New(), nil, remote, configure)
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
		UpstreamTLS: &tls.Config{RootCAs: e.tg.tls.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs},
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
	hln, sln := listenOn(t, "127.0.0.1"), listenOn(t, "127.0.0.1")
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
func (e *env) add(maxConc int, cred *pharox.Credentials, ups ...*upstream) {
	e.t.Helper()
	for _, u := range ups {
		host, port, _ := net.SplitHostPort(u.addr)
		n, _ := strconv.Atoi(port)
		p := pharox.Proxy{PoolID: e.pool.ID, Host: host, Port: n, Protocol: u.proto, Credentials: cred, Country: "AR", Source: "test"}
		if maxConc > 0 {
			p.MaxConcurrency = &maxConc
		}
		out, err := e.store.AddProxies(context.Background(), []pharox.Proxy{p})
		if err != nil {
			e.t.Fatal(err)
		}
		e.byIP[u.ip] = out[0]
	}
}

func alice() *pharox.Credentials { return &pharox.Credentials{User: upUser, Password: upPass} }

// proxyClient is a Go HTTP client using the gateway as its proxy, with
// user (routing parameters) and the gateway password when user is set.
func (e *env) proxyClient(user string) *http.Client {
	u := &url.URL{Scheme: "http", Host: e.addr}
	if user != "" {
		u.User = url.UserPassword(user, gwPass)
	}
	tr := &http.Transport{
		Proxy:               http.ProxyURL(u),
		TLSClientConfig:     e.tg.tls.Client().Transport.(*http.Transport).TLSClientConfig.Clone(),
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
