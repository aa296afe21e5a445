package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/proxy"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/socks4"
)

// failureKind classifies why an attempt through an upstream failed.
type failureKind int

const (
	// failConnect: the upstream could not be reached or would not relay.
	failConnect failureKind = iota + 1
	// failAuth: the upstream answered 407 to its own credentials.
	failAuth
	// failBan: the upstream or the target answered a ban status.
	failBan
	// failAfterSend: the exchange broke after the request went out.
	failAfterSend
	// failTarget: the upstream works but could not reach the target, which
	// is not the upstream's fault: no outcome is reported, no retry made.
	failTarget
	// failCanceled: the client went away; nobody's fault.
	failCanceled
)

// attemptError is a failed attempt through one upstream.
type attemptError struct {
	kind   failureKind
	status int
	reason string
	// unsent: nothing of the client's request reached the upstream.
	unsent bool
}

func (e *attemptError) Error() string { return e.reason }

// outcome is what the failure tells the proxy's health, or false when it
// says nothing about the proxy.
func (e *attemptError) outcome() (pharox.Outcome, bool) {
	switch e.kind {
	case failConnect, failAfterSend:
		return pharox.Outcome{Kind: pharox.OutcomeFailure, Reason: e.reason}, true
	case failAuth:
		return pharox.Outcome{Kind: pharox.OutcomeFailure, StatusCode: http.StatusProxyAuthRequired, Reason: reasonUpstreamAuth}, true
	case failBan:
		return pharox.Outcome{Kind: pharox.OutcomeBanned, StatusCode: e.status, Reason: e.reason}, true
	}
	return pharox.Outcome{}, false
}

// metricReason labels the failure in metrics.
func (e *attemptError) metricReason() string {
	switch e.kind {
	case failConnect:
		return "connect"
	case failAuth:
		return "proxy_auth"
	case failBan:
		return "ban"
	case failAfterSend:
		return "broken"
	case failTarget:
		return "target_unreachable"
	}
	return "canceled"
}

const reasonUpstreamAuth = "upstream proxy auth required"

// dialUpstream opens a tunnel to target (host:port) through proxy p, speaking
// p's protocol, within the dial timeout.
// site is the target's site ("" without per-site health), which decides
// the ban statuses of the upstream's answer.
func (g *Gateway) dialUpstream(ctx context.Context, p *pharox.Proxy, target, site string) (net.Conn, *attemptError) {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.DialTimeout)
	defer cancel()
	var reached atomic.Bool
	fwd := &stageDialer{d: &g.dialer, reached: &reached}
	var (
		conn net.Conn
		err  error
	)
	switch p.Protocol {
	case pharox.ProtocolHTTP, pharox.ProtocolHTTPS:
		return g.dialHTTPConnect(ctx, p, target, site)
	case pharox.ProtocolSOCKS5:
		var d proxy.Dialer
		d, err = proxy.SOCKS5("tcp", p.Address(), socksAuth(p), fwd)
		if err == nil {
			conn, err = d.(proxy.ContextDialer).DialContext(ctx, "tcp", target)
		}
		if err == nil {
			// The SOCKS conn hides the TCP conn's half-close; after the
			// handshake the stream is the TCP stream itself.
			conn = &halfCloseConn{Conn: conn, raw: fwd.last}
		}
	case pharox.ProtocolSOCKS4:
		d := &socks4.Dialer{Proxy: p.Address(), User: credUser(p), Forward: fwd}
		conn, err = d.DialContext(ctx, "tcp", target)
	default:
		return nil, &attemptError{kind: failConnect, reason: fmt.Sprintf("upstream protocol %q not supported", p.Protocol)}
	}
	if err != nil {
		return nil, classifyDialError(ctx, err, reached.Load())
	}
	return conn, nil
}

// classifyDialError turns a SOCKS dial error into an attempt failure.
func classifyDialError(ctx context.Context, err error, reached bool) *attemptError {
	if context.Cause(ctx) == context.Canceled {
		return &attemptError{kind: failCanceled, reason: "client went away"}
	}
	msg := err.Error()
	switch {
	case !reached:
		return &attemptError{kind: failConnect, reason: "upstream unreachable: " + msg}
	case strings.Contains(msg, "authentication failed"), errors.Is(err, socks4.ErrIdent):
		return &attemptError{kind: failAuth, reason: reasonUpstreamAuth}
	case errors.Is(err, socks4.ErrRejected),
		strings.Contains(msg, "unknown error host unreachable"),
		strings.Contains(msg, "unknown error network unreachable"),
		strings.Contains(msg, "unknown error connection refused"),
		strings.Contains(msg, "unknown error TTL expired"):
		return &attemptError{kind: failTarget, reason: "upstream could not reach the target: " + msg}
	}
	return &attemptError{kind: failConnect, reason: "upstream handshake failed: " + msg}
}

// dialHTTPConnect opens a CONNECT tunnel through an HTTP or HTTPS proxy.
func (g *Gateway) dialHTTPConnect(ctx context.Context, p *pharox.Proxy, target, site string) (net.Conn, *attemptError) {
	conn, err := g.dialer.DialContext(ctx, "tcp", p.Address())
	if err != nil {
		if ctx.Err() != nil && context.Cause(ctx) == context.Canceled {
			return nil, &attemptError{kind: failCanceled, reason: "client went away"}
		}
		return nil, &attemptError{kind: failConnect, reason: "upstream unreachable: " + err.Error()}
	}
	// Bound the whole handshake by ctx, then lift the deadline for the tunnel.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	fail := func(kind failureKind, status int, reason string) (net.Conn, *attemptError) {
		stop()
		conn.Close()
		if ctx.Err() != nil && context.Cause(ctx) == context.Canceled {
			return nil, &attemptError{kind: failCanceled, reason: "client went away"}
		}
		return nil, &attemptError{kind: kind, status: status, reason: reason}
	}
	if p.Protocol == pharox.ProtocolHTTPS {
		cfg := g.tlsConfig(p.Host)
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail(failConnect, 0, "upstream TLS handshake failed: "+err.Error())
		}
		conn = tc
	}
	var b strings.Builder
	b.WriteString("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n")
	if h := proxyAuthorization(p); h != "" {
		b.WriteString("Proxy-Authorization: " + h + "\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return fail(failConnect, 0, "upstream CONNECT failed: "+err.Error())
	}
	br := bufio.NewReaderSize(conn, 1024)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return fail(failConnect, 0, "upstream CONNECT failed: "+err.Error())
	}
	// The body is never read or closed: after a 2xx answer to CONNECT the
	// connection is the tunnel, and RFC 9110 (9.3.6) has the client ignore
	// any Transfer-Encoding or Content-Length there (a Go proxy that writes
	// its header and hijacks sends them); closing such a body would drain
	// the tunnel. After any other answer the connection is closed anyway.
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
	case code == http.StatusProxyAuthRequired:
		return fail(failAuth, code, reasonUpstreamAuth)
	case g.isBan(site, code):
		return fail(failBan, code, fmt.Sprintf("upstream answered CONNECT with ban status %d", code))
	case code == http.StatusBadGateway || code == http.StatusGatewayTimeout || code == http.StatusServiceUnavailable:
		return fail(failTarget, code, fmt.Sprintf("upstream could not reach the target (CONNECT answered %d)", code))
	default:
		return fail(failConnect, code, fmt.Sprintf("upstream answered CONNECT with %d", code))
	}
	if !stop() {
		// ctx ended as the answer came: fail reports a client that went
		// away as such, and anything else is the dial timeout.
		return fail(failConnect, 0, "upstream CONNECT timed out")
	}
	conn.SetDeadline(time.Time{})
	if br.Buffered() > 0 {
		// The upstream already sent tunnel bytes behind its answer.
		return &bufferedConn{Conn: conn, r: br}, nil
	}
	return conn, nil
}

func (g *Gateway) tlsConfig(serverName string) *tls.Config {
	var cfg *tls.Config
	if g.cfg.UpstreamTLS != nil {
		cfg = g.cfg.UpstreamTLS.Clone()
	} else {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = serverName
	}
	return cfg
}

// proxyAuthorization is the Basic header for p's credentials, or "".
func proxyAuthorization(p *pharox.Proxy) string {
	if p.Credentials == nil || (p.Credentials.User == "" && p.Credentials.Password == "") {
		return ""
	}
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(p.Credentials.User+":"+p.Credentials.Password))
}

func socksAuth(p *pharox.Proxy) *proxy.Auth {
	if p.Credentials == nil || (p.Credentials.User == "" && p.Credentials.Password == "") {
		return nil
	}
	return &proxy.Auth{User: p.Credentials.User, Password: p.Credentials.Password}
}

func credUser(p *pharox.Proxy) string {
	if p.Credentials == nil {
		return ""
	}
	return p.Credentials.User
}

// bufferedConn reads what a bufio.Reader already holds before the conn.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *bufferedConn) CloseWrite() error { return closeWrite(c.Conn) }

// closeWrite half-closes c, so the peer sees the end of data; a conn that
// cannot half-close is closed, rather than leave the peer waiting.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// halfCloseConn half-closes through the raw conn underneath a wrapper.
type halfCloseConn struct {
	net.Conn
	raw net.Conn
}

func (c *halfCloseConn) CloseWrite() error {
	if c.raw == nil {
		return c.Conn.Close()
	}
	return closeWrite(c.raw)
}

// stageDialer records whether the TCP connection to a SOCKS proxy was
// made, telling an unreachable proxy from a failed handshake.
type stageDialer struct {
	d       *net.Dialer
	reached *atomic.Bool
	last    net.Conn // the raw conn of the last dial
}

func (s *stageDialer) Dial(network, addr string) (net.Conn, error) {
	return s.DialContext(context.Background(), network, addr)
}

func (s *stageDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := s.d.DialContext(ctx, network, addr)
	if err == nil {
		s.reached.Store(true)
		s.last = c
	}
	return c, err
}
