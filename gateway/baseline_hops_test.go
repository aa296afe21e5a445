package gateway

import (
	"bufio"
	"encoding/base64"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"

	"github.com/elazarl/goproxy"

	"github.com/pharox/pharox/internal/testpeers"
)

// The two baselines the gateway's benchmarks are measured against, each a
// forward proxy chained to one fixed upstream: what one more hop costs at
// least (bareHop), and what a widely used Go forward proxy costs (goproxy).
// Neither leases, routes, limits, logs or counts anything.

// bareHop is the least a forwarding hop can do: plain forwarding for HTTP
// (one shared Transport chained to the upstream) and a byte copy for
// CONNECT.
type bareHop struct {
	upstream *url.URL // with the upstream's credentials
	auth     string   // its Proxy-Authorization
	tr       *http.Transport
}

// startBareHop serves a bareHop on 127.0.0.1 and returns its address.
func startBareHop(tb testing.TB, upstream *url.URL) string {
	tb.Helper()
	h := &bareHop{upstream: upstream, tr: &http.Transport{Proxy: http.ProxyURL(upstream), MaxIdleConnsPerHost: 256}}
	if u := upstream.User; u != nil {
		pass, _ := u.Password()
		h.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass))
	}
	tb.Cleanup(h.tr.CloseIdleConnections)
	return serveHop(tb, h)
}

func (h *bareHop) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect {
		h.connect(w, r)
		return
	}
	// The server's request is sent on as it is: nothing else reads it.
	r.RequestURI = ""
	r.Header.Del("Proxy-Connection")
	r.Header.Del("Proxy-Authorization")
	resp, err := h.tr.RoundTrip(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// connect opens a tunnel through the upstream and copies bytes both ways.
func (h *bareHop) connect(w http.ResponseWriter, r *http.Request) {
	up, err := net.Dial("tcp", h.upstream.Host)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer up.Close()
	req := "CONNECT " + r.Host + " HTTP/1.1\r\nHost: " + r.Host + "\r\n"
	if h.auth != "" {
		req += "Proxy-Authorization: " + h.auth + "\r\n"
	}
	if _, err := io.WriteString(up, req+"\r\n"); err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	br := bufio.NewReader(up)
	resp, err := http.ReadResponse(br, r)
	if err != nil || resp.StatusCode != http.StatusOK {
		http.Error(w, "upstream refused the tunnel", http.StatusBadGateway)
		return
	}
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "HTTP/1.1 200 OK\r\n\r\n"); err != nil {
		return
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		// Bytes the client sent after the CONNECT, then the rest.
		_, _ = io.Copy(up, io.MultiReader(buf.Reader, conn))
		if tc, ok := up.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	})
	_, _ = io.Copy(conn, br)
	_ = conn.Close()
	wg.Wait()
}

// startGoproxyHop serves elazarl/goproxy on 127.0.0.1, its transport and
// its CONNECT dialer chained to the upstream, and returns its address.
func startGoproxyHop(tb testing.TB, upstream *url.URL) string {
	tb.Helper()
	p := goproxy.NewProxyHttpServer()
	p.Logger = log.New(io.Discard, "", 0)
	tr := &http.Transport{Proxy: http.ProxyURL(upstream), MaxIdleConnsPerHost: 256}
	tb.Cleanup(tr.CloseIdleConnections)
	p.Tr = tr
	auth := ""
	if u := upstream.User; u != nil {
		pass, _ := u.Password()
		auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass))
	}
	p.ConnectDial = p.NewConnectDialToProxyWithHandler("http://"+upstream.Host, func(r *http.Request) {
		if auth != "" {
			r.Header.Set("Proxy-Authorization", auth)
		}
	})
	return serveHop(tb, p)
}

func serveHop(tb testing.TB, h http.Handler) string {
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Start()
	tb.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// TestBaselineHopsForward checks that both baselines really chain to the
// upstream, for HTTP and CONNECT, so the benchmarks compare like with like.
func TestBaselineHopsForward(t *testing.T) {
	tg := newTarget(t)
	up := startHTTPUpstream(t, "127.0.0.2", true)
	upURL := &url.URL{Scheme: "http", Host: up.Addr, User: url.UserPassword(testpeers.User, testpeers.Password)}
	for name, addr := range map[string]string{"bare": startBareHop(t, upURL), "goproxy": startGoproxyHop(t, upURL)} {
		t.Run(name, func(t *testing.T) {
			tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr})}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			resp, err := c.Get(tg.Plain.URL + "/small")
			if err != nil {
				t.Fatalf("GET through the %s hop: %v", name, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET through the %s hop: status %d", name, resp.StatusCode)
			}
			// CONNECT to the plain target, then an HTTP request inside.
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			host := tg.Plain.Listener.Addr().String()
			if _, err := io.WriteString(conn, "CONNECT "+host+" HTTP/1.1\r\nHost: "+host+"\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(conn)
			cr, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
			if err != nil || cr.StatusCode != http.StatusOK {
				t.Fatalf("CONNECT through the %s hop: %v %v", name, cr, err)
			}
			if _, err := io.WriteString(conn, "GET /small HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			inner, err := http.ReadResponse(br, nil)
			if err != nil || inner.StatusCode != http.StatusOK {
				t.Fatalf("GET inside the %s hop's tunnel: %v %v", name, inner, err)
			}
			_ = inner.Body.Close()
		})
	}
}
