package testpeers

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	socks5 "github.com/armon/go-socks5"
	"github.com/elazarl/goproxy"
	"github.com/google/uuid"
	"go.uber.org/goleak"

	"github.com/pharox/pharox"
)

// The credentials upstream proxies require (SOCKS4: User as the user id).
const (
	User     = "alice"
	Password = "up-s3cr3t"
)

// Alice returns the credentials upstream proxies require.
func Alice() *pharox.Credentials { return &pharox.Credentials{User: User, Password: Password} }

// Target is an origin server on loopback, plain ([Target.Plain]) and TLS
// ([Target.TLS], the httptest certificate), that records the source IP of
// every request and knows which source IPs the test banned.
type Target struct {
	Plain, TLS *httptest.Server

	mu     sync.Mutex
	hits   []string // source IPs in order
	banned map[string]bool
}

// NewTarget starts a target serving handler; the target records each
// request's source IP before handler runs. Handler answers banned source
// IPs (see [Target.Banned]) as it sees fit.
func NewTarget(t testing.TB, handler http.Handler) *Target {
	tg := &Target{banned: map[string]bool{}}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		tg.mu.Lock()
		tg.hits = append(tg.hits, ip)
		tg.mu.Unlock()
		handler.ServeHTTP(w, r)
	})
	tg.Plain = httptest.NewServer(h)
	tg.TLS = httptest.NewUnstartedServer(h)
	tg.TLS.Config.ErrorLog = log.New(io.Discard, "", 0)
	tg.TLS.StartTLS()
	t.Cleanup(tg.Plain.Close)
	t.Cleanup(tg.TLS.Close)
	return tg
}

// BytesHandler serves GET /bytes?n=N with N bytes and POST /echo with the
// request body: answers of known sizes, for tests that count bytes.
func BytesHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		_, _ = w.Write(make([]byte, n))
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(b)
	})
	return mux
}

// Ban marks ip as banned.
func (tg *Target) Ban(ip string) {
	tg.mu.Lock()
	tg.banned[ip] = true
	tg.mu.Unlock()
}

// Banned reports whether ip was banned.
func (tg *Target) Banned(ip string) bool {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return tg.banned[ip]
}

// Seen returns the source IPs of the requests so far and forgets them.
func (tg *Target) Seen() []string {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	h := tg.hits
	tg.hits = nil
	return h
}

// RootCAs is a pool that trusts the TLS server's certificate.
func (tg *Target) RootCAs() *x509.CertPool {
	return tg.TLS.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
}

// BoundDialer dials from ip, so the target sees it as the source address.
func BoundDialer(ip string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
}

// DialFrom is BoundDialer(ip).DialContext, resolving every name under
// .localhost to 127.0.0.1 (the system resolver may not), so tests can
// address several sites on loopback by name.
func DialFrom(ip string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := BoundDialer(ip)
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if host, port, err := net.SplitHostPort(addr); err == nil && strings.HasSuffix(strings.ToLower(host), ".localhost") {
			addr = net.JoinHostPort("127.0.0.1", port)
		}
		return d.DialContext(ctx, network, addr)
	}
}

// Listen listens on a free TCP port of ip.
func Listen(t testing.TB, ip string) net.Listener {
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatalf("listen on %s: %v (Linux routes all of 127.0.0.0/8 to loopback)", ip, err)
	}
	return ln
}

// Upstream is one running upstream proxy.
type Upstream struct {
	IP    string // the address it dials the target from
	Addr  string // host:port it listens on
	Proto pharox.Protocol
	stop  func()
	once  sync.Once
}

// Close stops the upstream and cuts its connections; the test's cleanup
// calls it too (once is enough). An Upstream a test builds itself, to
// describe a peer it runs, has nothing to stop.
func (u *Upstream) Close() {
	u.once.Do(func() {
		if u.stop != nil {
			u.stop()
		}
	})
}

// Proxy is the proxy record for u in pool, with credentials cred and the
// given max concurrency (0: unlimited), for a store's AddProxies.
func (u *Upstream) Proxy(pool uuid.UUID, maxConc int, cred *pharox.Credentials) pharox.Proxy {
	host, port, _ := net.SplitHostPort(u.Addr)
	n, _ := strconv.Atoi(port)
	p := pharox.Proxy{PoolID: pool, Host: host, Port: n, Protocol: u.Proto, Credentials: cred}
	if maxConc > 0 {
		p.MaxConcurrency = &maxConc
	}
	return p
}

// HTTPOptions adjusts [StartGoproxy].
type HTTPOptions struct {
	// NoAuth accepts every client; by default the proxy requires
	// [Alice]'s credentials (407 otherwise).
	NoAuth bool
	// Accept, when set, decides which requests (plain and CONNECT) pass
	// instead of [Alice]'s credentials; the others get a 407. NoAuth
	// overrides it.
	Accept func(*http.Request) bool
	// Handlers, when set, adds request handlers to the proxy after the
	// credential check, e.g. to delay or answer requests itself.
	Handlers func(*goproxy.ProxyHttpServer)
	// TLS serves the proxy over TLS (an HTTPS proxy) with the httptest
	// certificate, which names 127.0.0.1 and example.com.
	TLS bool
	// ListenLoopback listens on 127.0.0.1 instead of ip (so the httptest
	// certificate matches the address); the proxy still dials from ip.
	ListenLoopback bool
	// Listener, when set, is where the proxy listens (ListenLoopback
	// is then ignored), e.g. a [Counting] listener.
	Listener net.Listener
}

// StartHTTP starts a goproxy forward proxy (plain forwarding and CONNECT)
// on ip, requiring Alice's credentials.
func StartHTTP(t testing.TB, ip string) *Upstream { return StartGoproxy(t, ip, HTTPOptions{}) }

// StartHTTPNoAuth is StartHTTP accepting every client.
func StartHTTPNoAuth(t testing.TB, ip string) *Upstream {
	return StartGoproxy(t, ip, HTTPOptions{NoAuth: true})
}

// StartHTTPS is StartHTTP spoken over TLS (an HTTPS proxy) with the
// httptest certificate, listening on ip.
func StartHTTPS(t testing.TB, ip string) *Upstream {
	return StartGoproxy(t, ip, HTTPOptions{TLS: true})
}

// StartGoproxy starts a goproxy forward proxy that dials from ip.
func StartGoproxy(t testing.TB, ip string, opts HTTPOptions) *Upstream {
	p := goproxy.NewProxyHttpServer()
	p.Logger = log.New(io.Discard, "", 0)
	// Keep enough idle connections to the target for 64 concurrent
	// clients, or the peer churns through ephemeral ports.
	tr := &http.Transport{DialContext: DialFrom(ip), MaxIdleConnsPerHost: 256}
	p.Tr = tr
	p.ConnectDial = nil
	if !opts.NoAuth {
		accept := opts.Accept
		if accept == nil {
			want := "Basic " + base64.StdEncoding.EncodeToString([]byte(User+":"+Password))
			accept = func(r *http.Request) bool { return r.Header.Get("Proxy-Authorization") == want }
		}
		deny := func(r *http.Request) *http.Response {
			resp := goproxy.NewResponse(r, goproxy.ContentTypeText, http.StatusProxyAuthRequired, "auth required")
			resp.Header.Set("Proxy-Authenticate", `Basic realm="up"`)
			return resp
		}
		p.OnRequest().DoFunc(func(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
			if !accept(r) {
				return r, deny(r)
			}
			return r, nil
		})
		p.OnRequest().HandleConnectFunc(func(host string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
			if !accept(ctx.Req) {
				ctx.Resp = deny(ctx.Req)
				return goproxy.RejectConnect, host
			}
			return goproxy.OkConnect, host
		})
	}
	if opts.Handlers != nil {
		opts.Handlers(p)
	}
	srv := httptest.NewUnstartedServer(p)
	srv.Listener.Close()
	switch {
	case opts.Listener != nil:
		srv.Listener = opts.Listener
	case opts.ListenLoopback:
		srv.Listener = Listen(t, "127.0.0.1")
	default:
		srv.Listener = Listen(t, ip)
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	proto := pharox.ProtocolHTTP
	if opts.TLS {
		srv.StartTLS()
		proto = pharox.ProtocolHTTPS
	} else {
		srv.Start()
	}
	u := &Upstream{IP: ip, Addr: srv.Listener.Addr().String(), Proto: proto, stop: func() {
		srv.CloseClientConnections()
		srv.Close()
		tr.CloseIdleConnections()
	}}
	t.Cleanup(u.Close)
	return u
}

// ServeConns accepts on ln and runs serve on each connection (closing it
// after) until the upstream it returns is closed.
func ServeConns(t testing.TB, ln net.Listener, proto pharox.Protocol, ip string, serve func(net.Conn)) *Upstream {
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
	u := &Upstream{IP: ip, Addr: ln.Addr().String(), Proto: proto, stop: func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}}
	t.Cleanup(u.Close)
	return u
}

// StartSOCKS5 starts a go-socks5 server on ip, requiring Alice's
// credentials.
func StartSOCKS5(t testing.TB, ip string) *Upstream {
	return StartSOCKS5On(t, Listen(t, ip), ip)
}

// StartSOCKS5NoAuth is StartSOCKS5 accepting every client.
func StartSOCKS5NoAuth(t testing.TB, ip string) *Upstream {
	return startSOCKS5(t, Listen(t, ip), ip, nil)
}

// StartSOCKS5On is StartSOCKS5 listening on ln (e.g. a [Counting]
// listener) and dialing from ip.
func StartSOCKS5On(t testing.TB, ln net.Listener, ip string) *Upstream {
	return startSOCKS5(t, ln, ip, socks5.StaticCredentials{User: Password})
}

// startSOCKS5 serves SOCKS5 on ln, requiring cred unless it is nil.
func startSOCKS5(t testing.TB, ln net.Listener, ip string, cred socks5.CredentialStore) *Upstream {
	srv, err := socks5.New(&socks5.Config{
		Credentials: cred,
		Logger:      log.New(io.Discard, "", 0),
		Dial:        DialFrom(ip),
	})
	if err != nil {
		t.Fatal(err)
	}
	return ServeConns(t, ln, pharox.ProtocolSOCKS5, ip, func(c net.Conn) { _ = srv.ServeConn(c) })
}

// StartSOCKS4 starts a minimal SOCKS4 (and SOCKS4a) proxy on ip that
// accepts CONNECT for the user id [User] and relays bytes.
func StartSOCKS4(t testing.TB, ip string) *Upstream { return StartSOCKS4For(t, ip, User) }

// StartSOCKS4For is StartSOCKS4 accepting the user id user, or every user
// id when user is empty. It answers another user id with 0x5d (identd
// could not confirm it), a target it cannot reach with 0x5b.
func StartSOCKS4For(t testing.TB, ip, user string) *Upstream {
	return ServeConns(t, Listen(t, ip), pharox.ProtocolSOCKS4, ip, func(c net.Conn) {
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
		id := readString()
		host := net.IP(head[4:8]).String()
		if head[4] == 0 && head[5] == 0 && head[6] == 0 && head[7] != 0 {
			host = readString() // SOCKS4a
		}
		if user != "" && id != user {
			_, _ = c.Write([]byte{0, 0x5d, 0, 0, 0, 0, 0, 0})
			return
		}
		addr := net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(head[2:4]))))
		out, err := BoundDialer(ip).Dial("tcp", addr)
		if err != nil {
			_, _ = c.Write([]byte{0, 0x5b, 0, 0, 0, 0, 0, 0})
			return
		}
		defer out.Close()
		_, _ = c.Write([]byte{0, 0x5a, 0, 0, 0, 0, 0, 0})
		done := make(chan struct{})
		go func() {
			_, _ = io.Copy(out, c)
			_ = out.(*net.TCPConn).CloseWrite()
			close(done)
		}()
		_, _ = io.Copy(c, out)
		c.Close()
		<-done
	})
}

// CheckLeaks fails the test if goroutines outlive it. Register it first:
// cleanups run last-in first-out, so it runs after every other cleanup.
func CheckLeaks(t *testing.T) {
	t.Cleanup(func() {
		if !t.Failed() {
			goleak.VerifyNone(t)
		}
	})
}

// CountingListener counts the bytes its connections read and wrote: an
// upstream proxy listening on one tells how many bytes its clients sent
// it (Read) and received from it (Written), handshakes included.
type CountingListener struct {
	net.Listener
	read, written atomic.Int64
}

// Counting counts the bytes of ln's connections.
func Counting(ln net.Listener) *CountingListener { return &CountingListener{Listener: ln} }

// Accept returns the next connection, counting its bytes.
func (l *CountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, l: l}, nil
}

// Read is the bytes read from the listener's connections so far.
func (l *CountingListener) Read() int64 { return l.read.Load() }

// Written is the bytes written to the listener's connections so far.
func (l *CountingListener) Written() int64 { return l.written.Load() }

type countingConn struct {
	net.Conn
	l *CountingListener
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.l.read.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.l.written.Add(int64(n))
	return n, err
}

// CloseWrite half-closes the TCP connection, as proxies relaying a
// tunnel do.
func (c *countingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// GetBytes GETs n bytes from a BytesHandler at site through c and checks
// the status and the length. A failure quotes the answer's headers (the
// gateway's X-Pharox-Reason says why it refused).
func GetBytes(c *http.Client, site string, n int) error {
	resp, err := c.Get(fmt.Sprintf("%s/bytes?n=%d", site, n))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	got, err := io.Copy(io.Discard, resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || got != int64(n) {
		return fmt.Errorf("GET %d bytes: status %d, %d bytes, %v (headers %v)", n, resp.StatusCode, got, err, resp.Header)
	}
	return nil
}

// PostEcho POSTs n zero bytes to a BytesHandler's /echo at site through c
// and checks that as many come back.
func PostEcho(c *http.Client, site string, n int) error {
	resp, err := c.Post(site+"/echo", "application/octet-stream", io.LimitReader(Zeros{}, int64(n)))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	got, err := io.Copy(io.Discard, resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || got != int64(n) {
		return fmt.Errorf("POST %d bytes: status %d, %d bytes back, %v", n, resp.StatusCode, got, err)
	}
	return nil
}

// Zeros is an endless reader of zero bytes.
type Zeros struct{}

func (Zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
