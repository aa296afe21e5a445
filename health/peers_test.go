package health

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elazarl/goproxy"
	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
)

// Test peers (target, upstream proxies) are internal/testpeers; every peer
// here listens on 127.0.0.1, and the proxies that require credentials
// require testpeers.Alice's.

// loopback is the address every peer listens on and dials from.
const loopback = "127.0.0.1"

// target is the origin server probes request, over http and https.
type target struct {
	*testpeers.Target
	hits atomic.Int64
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
	tg.Target = testpeers.NewTarget(t, mux)
	return tg
}

// startHTTPProxy starts a goproxy forward proxy (plain and CONNECT) on
// loopback and returns its address.
func startHTTPProxy(t testing.TB, opts testpeers.HTTPOptions) string {
	return testpeers.StartGoproxy(t, loopback, opts).Addr
}

// openProxy lets every client through.
var openProxy = testpeers.HTTPOptions{NoAuth: true}

// rejectAll is the "always 407" proxy, whatever the credentials.
func rejectAll(*http.Request) bool { return false }

// slowProxy delays every request and every CONNECT by delay.
func slowProxy(delay time.Duration) testpeers.HTTPOptions {
	return testpeers.HTTPOptions{NoAuth: true, Handlers: func(p *goproxy.ProxyHttpServer) {
		p.OnRequest().DoFunc(func(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
			sleepCtx(r, delay)
			return r, nil
		})
		p.OnRequest().HandleConnectFunc(func(host string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
			sleepCtx(ctx.Req, delay)
			return goproxy.OkConnect, host
		})
	}}
}

func sleepCtx(r *http.Request, d time.Duration) {
	select {
	case <-time.After(d):
	case <-r.Context().Done():
	}
}

// switchProxy relays normally while *answer is 0 and otherwise answers
// plain requests itself with that status, like a proxy whose exit address
// the target has started to block.
func switchProxy(answer *atomic.Int64) testpeers.HTTPOptions {
	return testpeers.HTTPOptions{NoAuth: true, Handlers: func(p *goproxy.ProxyHttpServer) {
		p.OnRequest().DoFunc(func(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
			if s := answer.Load(); s != 0 {
				return r, goproxy.NewResponse(r, goproxy.ContentTypeText, int(s), "blocked")
			}
			return r, nil
		})
	}}
}

// startSOCKS5 starts a SOCKS5 proxy on loopback; with auth it requires
// alice's user name and password.
func startSOCKS5(t testing.TB, auth bool) string {
	if auth {
		return testpeers.StartSOCKS5(t, loopback).Addr
	}
	return testpeers.StartSOCKS5NoAuth(t, loopback).Addr
}

// startSOCKS4 starts a SOCKS4/4a proxy on loopback. A non-empty allowUser
// rejects other user ids with "identd could not confirm" (0x5d).
func startSOCKS4(t testing.TB, allowUser string) string {
	return testpeers.StartSOCKS4For(t, loopback, allowUser).Addr
}

// startResetPeer accepts connections and resets them at once.
func startResetPeer(t testing.TB) string {
	ln := testpeers.Listen(t, loopback)
	t.Cleanup(func() { ln.Close() })
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
	ln := testpeers.Listen(t, loopback)
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

func tlsTrusting(tg *target) *tls.Config { return &tls.Config{RootCAs: tg.RootCAs()} }
