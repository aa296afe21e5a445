package transport

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	socks5 "github.com/armon/go-socks5"
	"github.com/elazarl/goproxy"
	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
)

// Test peers, all real servers on loopback: upstream HTTP/CONNECT proxies
// are github.com/elazarl/goproxy, SOCKS5 ones github.com/armon/go-socks5,
// SOCKS4 ones a few lines below. Each upstream listens on its own
// 127.0.1.x address and dials the target from that same address, so the
// target tells from r.RemoteAddr which upstream a request came through.

const (
	upUser = "alice"
	upPass = "up-s3cr3t"
)

func alice() *pharox.Credentials { return &pharox.Credentials{User: upUser, Password: upPass} }

// target is the origin server.
type target struct {
	plain, tls *httptest.Server

	mu      sync.Mutex
	hits    []string        // source IPs in order
	banFrom map[string]bool // source IPs answered 429
	blockAs map[string]bool // source IPs answered with a 403 block page
	release chan struct{}   // /stream finishes when it is closed
}

func newTarget(t testing.TB) *target {
	tg := &target{banFrom: map[string]bool{}, blockAs: map[string]bool{}, release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		tg.mu.Lock()
		tg.hits = append(tg.hits, ip)
		banned, blocked := tg.banFrom[ip], tg.blockAs[ip]
		tg.mu.Unlock()
		w.Header().Set("X-Seen-From", ip)
		switch {
		case banned:
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

func (tg *target) block(ip string) {
	tg.mu.Lock()
	tg.blockAs[ip] = true
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

// boundDialer dials from ip, so the target sees it as the source address.
func boundDialer(ip string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
}

// dialFrom is boundDialer(ip).DialContext, resolving every name under
// .localhost to 127.0.0.1 (the system resolver may not), so tests can
// address several sites on loopback by name.
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

// startHTTPUpstream starts a goproxy forward proxy (plain forwarding and
// CONNECT) on ip, requiring alice's credentials.
func startHTTPUpstream(t testing.TB, ip string) *upstream { return startGoproxy(t, ip, false) }

// startHTTPSUpstream is startHTTPUpstream spoken over TLS (an HTTPS
// proxy), with the httptest certificate the target has too.
func startHTTPSUpstream(t testing.TB, ip string) *upstream { return startGoproxy(t, ip, true) }

func startGoproxy(t testing.TB, ip string, useTLS bool) *upstream {
	p := goproxy.NewProxyHttpServer()
	p.Logger = log.New(io.Discard, "", 0)
	tr := &http.Transport{DialContext: dialFrom(ip), MaxIdleConnsPerHost: 256}
	p.Tr = tr
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
	srv := httptest.NewUnstartedServer(p)
	srv.Listener.Close()
	if useTLS {
		// The httptest certificate names 127.0.0.1, not ip; the proxy still
		// dials the target from ip.
		srv.Listener = listenOn(t, "127.0.0.1")
	} else {
		srv.Listener = listenOn(t, ip)
	}
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

// serveConns accepts on ln and runs serve on each connection until stop.
func serveConns(t testing.TB, ln net.Listener, proto pharox.Protocol, ip string, serve func(net.Conn)) *upstream {
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
				serve(c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			})
		}
	})
	u := &upstream{ip: ip, addr: ln.Addr().String(), proto: proto, stop: func() {
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

// startSOCKS5Upstream starts a go-socks5 server on ip, requiring alice's
// credentials.
func startSOCKS5Upstream(t testing.TB, ip string) *upstream {
	srv, err := socks5.New(&socks5.Config{
		Credentials: socks5.StaticCredentials{upUser: upPass},
		Logger:      log.New(io.Discard, "", 0),
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return boundDialer(ip).DialContext(ctx, network, addr)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return serveConns(t, listenOn(t, ip), pharox.ProtocolSOCKS5, ip, func(c net.Conn) { srv.ServeConn(c) })
}

// startSOCKS4Upstream starts a minimal SOCKS4 proxy on ip that accepts
// CONNECT for the user id "alice" and relays bytes.
func startSOCKS4Upstream(t testing.TB, ip string) *upstream {
	return serveConns(t, listenOn(t, ip), pharox.ProtocolSOCKS4, ip, func(c net.Conn) {
		var head [8]byte
		if _, err := io.ReadFull(c, head[:]); err != nil || head[0] != 4 || head[1] != 1 {
			return
		}
		readString := func() string {
			var b []byte
			one := make([]byte, 1)
			for len(b) < 256 {
				if _, err := io.ReadFull(c, one); err != nil || one[0] == 0 {
					break
				}
				b = append(b, one[0])
			}
			return string(b)
		}
		user := readString()
		host := net.IP(head[4:8]).String()
		if head[4] == 0 && head[5] == 0 && head[6] == 0 && head[7] != 0 {
			host = readString() // SOCKS4a
		}
		if user != upUser {
			c.Write([]byte{0, 0x5b, 0, 0, 0, 0, 0, 0})
			return
		}
		addr := net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(head[2:4]))))
		out, err := boundDialer(ip).Dial("tcp", addr)
		if err != nil {
			c.Write([]byte{0, 0x5b, 0, 0, 0, 0, 0, 0})
			return
		}
		defer out.Close()
		c.Write([]byte{0, 0x5a, 0, 0, 0, 0, 0, 0})
		done := make(chan struct{})
		go func() {
			io.Copy(out, c)
			out.(*net.TCPConn).CloseWrite()
			close(done)
		}()
		io.Copy(c, out)
		c.Close()
		<-done
	})
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
	e := &env{t: t, store: memory.New(), tg: newTarget(t), byIP: map[string]*pharox.Proxy{}}
	t.Cleanup(func() { e.store.Close() })
	e.mgr = pharox.NewManager(e.store, pharox.WithLogger(quietLogger()))
	pool, err := e.store.CreatePool(context.Background(), pharox.Pool{Name: "main"})
	if err != nil {
		t.Fatal(err)
	}
	e.pool = pool
	e.roots = e.tg.tls.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	return e
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// add registers upstreams in the pool with the given max concurrency (0:
// unlimited) and credentials.
func (e *env) add(maxConc int, cred *pharox.Credentials, ups ...*upstream) []*pharox.Proxy {
	e.t.Helper()
	var added []*pharox.Proxy
	for _, u := range ups {
		host, port, _ := net.SplitHostPort(u.addr)
		n, _ := strconv.Atoi(port)
		p := pharox.Proxy{PoolID: e.pool.ID, Host: host, Port: n, Protocol: u.proto, Credentials: cred}
		if maxConc > 0 {
			p.MaxConcurrency = &maxConc
		}
		out, err := e.store.AddProxies(context.Background(), []pharox.Proxy{p})
		if err != nil {
			e.t.Fatal(err)
		}
		e.byIP[u.ip] = out[0]
		added = append(added, out[0])
	}
	return added
}

// addProxy registers one upstream with alice's credentials in a pool.
func (e *env) addProxy(pool uuid.UUID, u *upstream, country string) *pharox.Proxy {
	e.t.Helper()
	host, port, _ := net.SplitHostPort(u.addr)
	n, _ := strconv.Atoi(port)
	out, err := e.store.AddProxies(context.Background(), []pharox.Proxy{{PoolID: pool, Host: host, Port: n,
		Protocol: u.proto, Credentials: alice(), Country: country}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.byIP[u.ip] = out[0]
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
