package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
)

// startHijackingUpstream starts an HTTP proxy that answers CONNECT the way
// a Go proxy that writes its header and then hijacks does: 200 with extra
// header lines (here Transfer-Encoding: chunked or a Content-Length), then
// the raw tunnel to the target.
func startHijackingUpstream(t *testing.T, ip, extraHeader string) *testpeers.Upstream {
	return testpeers.ServeConns(t, testpeers.Listen(t, ip), pharox.ProtocolHTTP, ip, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil || req.Method != http.MethodConnect {
			return
		}
		up, err := testpeers.BoundDialer(ip).Dial("tcp", req.Host)
		if err != nil {
			io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
			return
		}
		defer up.Close()
		io.WriteString(c, "HTTP/1.1 200 OK\r\n"+extraHeader+"\r\n\r\n")
		done := make(chan struct{})
		// Closing c (the test's cleanup) ends this copy, which closes up
		// and so ends the other.
		go func() { io.Copy(up, br); up.Close(); close(done) }()
		io.Copy(c, up)
		c.Close()
		<-done
	})
}

// An upstream's 2xx answer to CONNECT is a tunnel whatever framing headers
// it carries (RFC 9110 9.3.6): the gateway must not read a body from it.
func TestConnectUpstreamAnswerWithFramingHeaders(t *testing.T) {
	for _, header := range []string{"Transfer-Encoding: chunked", "Content-Length: 42"} {
		t.Run(header, func(t *testing.T) {
			testpeers.CheckLeaks(t)
			// A short dial timeout: before the fix the gateway drained the
			// tunnel until it fired, then answered nothing.
			e := newEnv(t, func(c *Config) { c.DialTimeout = 2 * time.Second })
			e.add(0, nil, startHijackingUpstream(t, "127.0.0.2", header))
			status, from, reason := get(t, e.client, e.tg.TLS.URL+"/through-tunnel")
			if status != http.StatusOK || from != "127.0.0.2" {
				t.Fatalf("GET through a tunnel whose CONNECT answer had %q: %d from %q (%s)", header, status, from, reason)
			}
			e.client.Transport.(*http.Transport).CloseIdleConnections()
			e.waitNoLeases()
		})
	}
}

// cancelingLeaser fails every acquisition with context.Canceled, as a lease
// source whose own request was cut does, while the client is still there.
type cancelingLeaser struct{ Leaser }

func (cancelingLeaser) Acquire(context.Context, string, *pharox.AcquireOptions, time.Duration) (*pharox.Lease, error) {
	return nil, fmt.Errorf("lease source: %w", context.Canceled)
}

func (cancelingLeaser) Release(context.Context, uuid.UUID, *pharox.Usage) error { return nil }

// A request the gateway gives up as "client went away" (499) must close
// the client's connection: answering nothing made net/http send 200 OK,
// which a CONNECT client takes for an open tunnel.
func TestClientGoneClosesConnection(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) { c.Leaser = cancelingLeaser{c.Leaser} })
	for _, req := range []string{
		"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
		"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
	} {
		conn, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(conn, req)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		conn.Close()
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%s: answered %s, want the connection closed", strings.Fields(req)[0], resp.Status)
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("%s: %v, want the connection closed", strings.Fields(req)[0], err)
		}
	}
}
