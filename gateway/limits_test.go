package gateway

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/pharox/pharox/internal/testpeers"
)

// openConnect opens a CONNECT tunnel to the TLS target through the gateway
// and returns the raw connection after the 200.
func (e *env) openConnect() (net.Conn, *bufio.Reader) {
	e.t.Helper()
	conn, err := net.Dial("tcp", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	host := strings.TrimPrefix(e.tg.TLS.URL, "https://")
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", host, host)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		e.t.Fatalf("CONNECT: %v %v", resp, err)
	}
	return conn, br
}

// An idle tunnel is closed after Config.IdleTimeout and its lease
// released; before, it kept its lease (renewed) for as long as the
// client kept the connection.
func TestIdleTunnelClosedAndReleased(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) { c.IdleTimeout = 300 * time.Millisecond })
	e.add(0, nil, startHTTPUpstream(t, "127.0.0.2", false))
	conn, br := e.openConnect()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := br.ReadByte(); err == nil || errorIsTimeout(err) {
		t.Fatalf("idle tunnel: read %v, want it closed by the gateway", err)
	}
	e.waitNoLeases()
	e.waitLog(func(m map[string]any) bool {
		return m["kind"] == "connect" && m["reason"] == "closed after the idle timeout"
	})

	// Over SOCKS5 too.
	d, err := proxy.SOCKS5("tcp", e.socks, nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := d.Dial("tcp", strings.TrimPrefix(e.tg.TLS.URL, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	sc.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := sc.Read(make([]byte, 1)); err == nil || errorIsTimeout(err) {
		t.Fatalf("idle SOCKS5 tunnel: read %v, want it closed by the gateway", err)
	}
	e.waitNoLeases()
}

// A tunnel that carries traffic stays open past the idle timeout.
func TestBusyTunnelOutlivesIdleTimeout(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) { c.IdleTimeout = 2 * time.Second })
	e.add(0, nil, startHTTPUpstream(t, "127.0.0.2", false))
	c := e.proxyClient("")
	// One kept-alive TLS connection through one tunnel, used for twice
	// the idle timeout with short pauses.
	deadline := time.Now().Add(4 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		resp, err := c.Get(e.tg.TLS.URL + "/busy")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		time.Sleep(100 * time.Millisecond)
	}
	if n := e.activeLeases(); n != 1 {
		t.Fatalf("%d active leases, want the one tunnel's", n)
	}
	c.Transport.(*http.Transport).CloseIdleConnections()
	e.waitNoLeases()
}

// Past Config.MaxConns the gateway answers 503 with a reason; before,
// there was no cap.
func TestMaxConnsAnswers503(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) { c.MaxConns = 1 })
	e.add(0, nil, startHTTPUpstream(t, "127.0.0.2", false))
	conn, _ := e.openConnect()
	status, _, reason := get(t, e.proxyClient(""), e.tg.Plain.URL+"/")
	if status != http.StatusServiceUnavailable || !strings.Contains(reason, "at most 1") {
		t.Fatalf("second request with one place taken: %d %q, want 503 naming the cap", status, reason)
	}
	conn.Close()
	e.waitNoLeases()
	// The place is free again.
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, _, reason = get(t, e.proxyClient(""), e.tg.Plain.URL+"/")
		if status == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the tunnel closed: %d %q", status, reason)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An upstream that never sends a response header gets a 502 after
// Config.ResponseHeaderTimeout instead of holding the request and lease.
func TestResponseHeaderTimeout(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) { c.ResponseHeaderTimeout = 200 * time.Millisecond })
	e.add(0, nil, startHTTPUpstream(t, "127.0.0.2", false))
	status, _, reason := get(t, e.proxyClient(""), e.tg.Plain.URL+"/hang")
	if status != http.StatusBadGateway || !strings.Contains(reason, "timeout awaiting response headers") {
		t.Fatalf("hanging upstream: %d %q, want 502 naming the header timeout", status, reason)
	}
	e.waitNoLeases()
}

func errorIsTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
