package health

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
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

	"github.com/pharox/pharox"
)

// Test peers: real proxy servers on loopback, started per test. HTTP and
// CONNECT proxies are github.com/elazarl/goproxy, SOCKS5 proxies are
// github.com/armon/go-socks5. SOCKS4 has no server library in the module
// proxy, so a minimal SOCKS4/4a server lives in socks4Server below.

const (
	proxyUser = "alice"
	proxyPass = "s3cr3t-pw"
)

// target is the origin server probes request, over http and https.
type target struct {
	plain, tls *httptest.Server
	hits       atomic.Int64
	// status overrides the answer of "/" when non-zero.
	status atomic.Int64
}

func newTarget(t testing.TB) *target {
	tg := &target{}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		tg.hits.Add(1)
		if s := tg.status.Load(); s != 0 {
			w.WriteHeader(int(s))
			return
		}
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("/status/{code}", func(w http.ResponseWriter, r *http.Request) {
		c, _ := strconv.Atoi(r.PathValue("code"))
		w.WriteHeader(c)
	})
	mux.HandleFunc("/captcha", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<html>Please solve this CAPTCHA to continue</html>")
	})
	mux.HandleFunc("/needs-header", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Probe") != "yes" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("/needs-host", func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "probe.example" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		io.WriteString(w, "ok")
	})
	tg.plain = httptest.NewServer(mux)
	tg.tls = newTLSServer(mux)
	t.Cleanup(tg.plain.Close)
	t.Cleanup(tg.tls.Close)
	return tg
}

// rootCAs trusts the httptest certificate, which every TLS peer here uses.
func (tg *target) rootCAs() *x509.CertPool {
	return tg.tls.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
}

// newTLSServer is httptest.NewTLSServer without logging the handshake
// errors the TLS failure tests provoke on purpose.
func newTLSServer(h http.Handler) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	return srv
}

func quietGoproxy() *goproxy.ProxyHttpServer {
	p := goproxy.NewProxyHttpServer()
	p.Logger = log.New(io.Discard, "", 0)
	return p
}

// startHTTPProxy starts a goproxy forward proxy (plain and CONNECT) and
// returns its address. With tlsToProxy it is served over TLS (an HTTPS
// proxy).
func startHTTPProxy(t testing.TB, p *goproxy.ProxyHttpServer, tlsToProxy bool) string {
	var srv *httptest.Server
	if tlsToProxy {
		srv = newTLSServer(p)
	} else {
		srv = httptest.NewServer(p)
	}
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func proxyAuthOK(r *http.Request) bool {
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte(proxyUser+":"+proxyPass))
	return r.Header.Get("Proxy-Authorization") == want
}

func authRequired(r *http.Request) *http.Response {
	resp := goproxy.NewResponse(r, goproxy.ContentTypeText, http.StatusProxyAuthRequired, "proxy authentication required")
	resp.Header.Set("Proxy-Authenticate", `Basic realm="pharox-test"`)
	return resp
}

// newAuthProxy requires alice's credentials for plain requests and CONNECT.
// With accept returning false for everyone it is the "always 407" peer.
func newAuthProxy(accept func(*http.Request) bool) *goproxy.ProxyHttpServer {
	p := quietGoproxy()
	p.OnRequest().DoFunc(func(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
		if !accept(r) {
			return r, authRequired(r)
		}
		return r, nil
	})
	p.OnRequest().HandleConnectFunc(func(host string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
		if !accept(ctx.Req) {
			ctx.Resp = authRequired(ctx.Req)
			return goproxy.RejectConnect, host
		}
		return goproxy.OkConnect, host
	})
	return p
}

// newSlowProxy delays every request and every CONNECT by delay.
func newSlowProxy(delay time.Duration) *goproxy.ProxyHttpServer {
	p := quietGoproxy()
	p.OnRequest().DoFunc(func(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
		sleepCtx(r, delay)
		return r, nil
	})
	p.OnRequest().HandleConnectFunc(func(host string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
		sleepCtx(ctx.Req, delay)
		return goproxy.OkConnect, host
	})
	return p
}

func sleepCtx(r *http.Request, d time.Duration) {
	select {
	case <-time.After(d):
	case <-r.Context().Done():
	}
}

// newSwitchProxy relays normally while *answer is 0 and otherwise answers
// plain requests itself with that status, like a proxy whose exit address
// the target has started to block.
func newSwitchProxy(answer *atomic.Int64) *goproxy.ProxyHttpServer {
	p := quietGoproxy()
	p.OnRequest().DoFunc(func(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
		if s := answer.Load(); s != 0 {
			return r, goproxy.NewResponse(r, goproxy.ContentTypeText, int(s), "blocked")
		}
		return r, nil
	})
	return p
}

// startSOCKS5 starts an armon/go-socks5 server; with auth it requires
// alice's user name and password.
func startSOCKS5(t testing.TB, auth bool) string {
	conf := &socks5.Config{Logger: log.New(io.Discard, "", 0)}
	if auth {
		conf.Credentials = socks5.StaticCredentials{proxyUser: proxyPass}
	}
	srv, err := socks5.New(conf)
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	go srv.Serve(ln)
	return ln.Addr().String()
}

func listen(t testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// startSOCKS4 starts a minimal SOCKS4/4a server. A non-empty allowUser
// rejects other user ids with "identd could not confirm" (0x5d).
func startSOCKS4(t testing.TB, allowUser string) string {
	ln := listen(t)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { serveSOCKS4(c, allowUser) })
		}
	}()
	return ln.Addr().String()
}

func serveSOCKS4(c net.Conn, allowUser string) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	var hdr [8]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil || hdr[0] != 4 || hdr[1] != 1 {
		return
	}
	readz := func() (string, error) {
		s, err := br.ReadString(0)
		return strings.TrimSuffix(s, "\x00"), err
	}
	user, err := readz()
	if err != nil {
		return
	}
	host := net.IP(hdr[4:8]).String()
	if hdr[4] == 0 && hdr[5] == 0 && hdr[6] == 0 && hdr[7] != 0 {
		if host, err = readz(); err != nil {
			return
		}
	}
	reply := func(code byte) { c.Write([]byte{0, code, 0, 0, 0, 0, 0, 0}) }
	if allowUser != "" && user != allowUser {
		reply(0x5d)
		return
	}
	port := int(hdr[2])<<8 | int(hdr[3])
	up, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(port)), 2*time.Second)
	if err != nil {
		reply(0x5b)
		return
	}
	defer up.Close()
	reply(0x5a)
	c.SetDeadline(time.Time{})
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, br); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
	<-done
}

// startResetPeer accepts connections and resets them at once.
func startResetPeer(t testing.TB) string {
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			// Give the client time to send its request, so the reset hits
			// it mid-exchange rather than racing the connect.
			go func() {
				buf := make([]byte, 1)
				c.SetReadDeadline(time.Now().Add(time.Second))
				c.Read(buf)
				c.Close()
			}()
		}
	}()
	return ln.Addr().String()
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// proxyAt builds a proxy record for addr.
func proxyAt(t testing.TB, addr string, proto pharox.Protocol, cred *pharox.Credentials) *pharox.Proxy {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	return &pharox.Proxy{ID: uuid.New(), Host: host, Port: n, Protocol: proto, Credentials: cred, Status: pharox.StatusActive}
}

func alice() *pharox.Credentials { return &pharox.Credentials{User: proxyUser, Password: proxyPass} }

func tlsTrusting(tg *target) *tls.Config { return &tls.Config{RootCAs: tg.rootCAs()} }
