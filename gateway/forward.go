package gateway

import (
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/net/proxy"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/connmeter"
	"github.com/pharox/pharox/internal/socks4"
)

// forward sends one absolute-form request through a leased upstream,
// retrying once on another upstream when that is safe. It is the
// ReverseProxy's transport; the lease is released when the response body
// is closed, which ReverseProxy always does.
func (g *Gateway) forward(out *http.Request) (*http.Response, error) {
	ctx := out.Context()
	st := stateFrom(ctx)
	if st == nil {
		return nil, &gwError{status: http.StatusInternalServerError, reason: "gateway: request without state"}
	}
	var body *replayBody
	if out.Body != nil && out.Body != http.NoBody {
		// The server closes the client's body after the handler; closing
		// it here could cut off a body still streaming to the upstream.
		body = &replayBody{rc: out.Body, st: st}
	}
	var exclude []uuid.UUID
	var prev *pharox.Lease
	var prevMeter *meter
	var prevResp *http.Response
	var prevErr *attemptError
	for attempt := 0; ; attempt++ {
		lease, err := g.acquire(ctx, st, exclude)
		if prev != nil {
			if err != nil {
				// No other upstream: answer with what the last one said.
				return g.giveUp(ctx, st, prev, prevMeter, prevResp, prevErr)
			}
			g.metrics.retry()
			if prevResp != nil {
				drainClose(prevResp.Body)
			}
			g.release(ctx, prev, prevMeter)
		}
		if err != nil {
			return nil, g.acquireErrorFor(st, err)
		}
		st.useLease(lease)
		m := g.newMeter()
		started := time.Now()
		resp, aerr := g.tryUpstream(out, lease, body, m)
		if aerr != nil {
			aerr.reason = scrub(aerr.reason, lease.Proxy)
		}
		if aerr == nil {
			latency := time.Since(started)
			g.metrics.upstreamLatency(st.kind, latency)
			resp.Body = &leasedBody{rc: resp.Body, g: g, ctx: ctx, held: g.hold(ctx, lease, m),
				outcome: g.withTarget(st, pharox.Outcome{Kind: pharox.OutcomeSuccess, StatusCode: resp.StatusCode, Latency: latency})}
			if resp.StatusCode == http.StatusSwitchingProtocols {
				if rwc, ok := resp.Body.(*leasedBody).rc.(io.ReadWriteCloser); ok {
					resp.Body = &leasedRWC{leasedBody: resp.Body.(*leasedBody), rwc: rwc}
				}
			}
			return resp, nil
		}
		if aerr.kind == failCanceled || aerr.kind == failTarget {
			st.reason = aerr.reason
			if resp != nil {
				drainClose(resp.Body)
			}
			g.release(ctx, lease, m)
			if aerr.kind == failCanceled {
				return nil, &gwError{status: statusClientGone, reason: aerr.reason}
			}
			return nil, &gwError{status: http.StatusBadGateway, reason: aerr.reason}
		}
		g.failed(ctx, st, lease, aerr)
		if attempt > 0 || !safeToRetry(out, body, aerr) {
			return g.giveUp(ctx, st, lease, m, resp, aerr)
		}
		exclude = append(exclude, lease.ProxyID)
		prev, prevMeter, prevResp, prevErr = lease, m, resp, aerr
	}
}

// giveUp ends a request whose upstream failed: a ban answer goes to the
// client as the target gave it, anything else becomes a 502.
func (g *Gateway) giveUp(ctx context.Context, st *reqState, l *pharox.Lease, m *meter, resp *http.Response, aerr *attemptError) (*http.Response, error) {
	if resp != nil && aerr.kind == failBan {
		resp.Body = &leasedBody{rc: resp.Body, g: g, ctx: ctx, held: g.hold(ctx, l, m)}
		return resp, nil
	}
	if resp != nil {
		drainClose(resp.Body)
	}
	g.release(ctx, l, m)
	return nil, &gwError{status: http.StatusBadGateway, reason: aerr.reason}
}

// safeToRetry: nothing of the request reached an upstream, or it may be
// sent twice (idempotent method) and its body can be sent again.
func safeToRetry(r *http.Request, body *replayBody, e *attemptError) bool {
	if body != nil && body.touched.Load() {
		return false
	}
	if e.unsent {
		return true
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// attemptInfo is filled in by the transport hooks of one attempt.
type attemptInfo struct {
	connected     atomic.Bool
	connectStatus atomic.Int32
	m             *meter // nil without metering
}

type attemptKey struct{}

// tryUpstream sends the request once through the lease's proxy and
// classifies the answer; m (nil without metering) counts its bytes from
// the moment it has a connection. On a ban or 407 the response comes back
// with the error, unread.
func (g *Gateway) tryUpstream(out *http.Request, lease *pharox.Lease, body *replayBody, m *meter) (*http.Response, *attemptError) {
	ctx := out.Context()
	var site string
	if st := stateFrom(ctx); st != nil {
		site = st.target
	}
	tr, err := g.transports.get(lease.Proxy)
	if err != nil {
		return nil, &attemptError{kind: failConnect, reason: err.Error()}
	}
	info := &attemptInfo{m: m}
	actx := context.WithValue(ctx, attemptKey{}, info)
	actx = httptrace.WithClientTrace(actx, &httptrace.ClientTrace{
		GotConn: func(ci httptrace.GotConnInfo) {
			info.connected.Store(true)
			if m != nil {
				m.used.Store(true)
				if mc := connmeter.Of(ci.Conn); mc != nil {
					mc.Attach(&m.Meter)
				}
			}
		},
	})
	req := out.WithContext(actx)
	if body != nil {
		req.Body = body
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, &attemptError{kind: failCanceled, reason: "client went away"}
		}
		if !info.connected.Load() {
			// Nothing of the request went out yet.
			code := int(info.connectStatus.Load())
			switch {
			case code == http.StatusProxyAuthRequired:
				return nil, &attemptError{kind: failAuth, status: code, reason: reasonUpstreamAuth, unsent: true}
			case g.isBan(site, code):
				return nil, &attemptError{kind: failBan, status: code, reason: fmt.Sprintf("upstream answered CONNECT with ban status %d", code), unsent: true}
			case code == http.StatusBadGateway || code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout:
				return nil, &attemptError{kind: failTarget, status: code, reason: fmt.Sprintf("upstream could not reach the target (CONNECT answered %d)", code)}
			}
			if ae := classifyDialError(ctx, err, true); ae.kind == failTarget || ae.kind == failAuth {
				ae.unsent = true
				return nil, ae
			}
			return nil, &attemptError{kind: failConnect, reason: "upstream connect failed: " + err.Error(), unsent: true}
		}
		return nil, &attemptError{kind: failAfterSend, reason: "upstream exchange failed: " + err.Error()}
	}
	switch {
	case resp.StatusCode == http.StatusProxyAuthRequired:
		// The upstream refused to relay: the target saw nothing.
		return resp, &attemptError{kind: failAuth, status: resp.StatusCode, reason: reasonUpstreamAuth, unsent: true}
	case g.isBan(site, resp.StatusCode):
		return resp, &attemptError{kind: failBan, status: resp.StatusCode, reason: fmt.Sprintf("target answered ban status %d", resp.StatusCode)}
	}
	if m := g.banMarker(resp); m != "" {
		return resp, &attemptError{kind: failBan, status: resp.StatusCode, reason: fmt.Sprintf("target answered %d with a block page (%q in the body)", resp.StatusCode, m)}
	}
	return resp, nil
}

// withheldReason replaces a reason that contains a short password.
const withheldReason = "upstream error (details withheld: they could contain the proxy password)"

// scrub keeps an upstream's password out of a reason that may be logged
// or sent to the client, whatever an error message embeds. A password too
// short to replace without mangling the text (one or two characters occur
// in ordinary words) withholds the whole reason whenever it appears in it.
func scrub(reason string, p *pharox.Proxy) string {
	if p == nil || p.Credentials == nil || p.Credentials.Password == "" {
		return reason
	}
	pw := p.Credentials.Password
	forms := []string{pw, url.QueryEscape(pw), url.PathEscape(pw)}
	if len(pw) < 3 {
		for _, f := range forms {
			if strings.Contains(reason, f) {
				return withheldReason
			}
		}
		return reason
	}
	for _, f := range forms {
		reason = strings.ReplaceAll(reason, f, "xxxxx")
	}
	return reason
}

// replayBody is the request body as the upstream transports see it: it
// notes whether any of it was read, so a retry knows whether the body can
// be sent again, and it does not close the client's body, so an attempt
// that failed before reading can hand it to the next one.
type replayBody struct {
	rc      io.ReadCloser
	st      *reqState
	touched atomic.Bool
	eof     atomic.Bool
}

func (b *replayBody) Read(p []byte) (int, error) {
	b.touched.Store(true)
	if b.eof.Load() {
		// The transport reads once more after the last byte, and by then
		// the server may have closed the client's body (it does when the
		// response starts): that read must not fail the exchange.
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	b.st.sent.Add(int64(n))
	if err == io.EOF {
		b.eof.Store(true)
	}
	return n, err
}

func (b *replayBody) Close() error { return nil }

// leasedBody releases the lease once the response body is closed, after
// reporting its outcome (if any); until then the lease is renewed, so a
// long download keeps its slot.
type leasedBody struct {
	rc      io.ReadCloser
	g       *Gateway
	ctx     context.Context
	held    *heldLease
	outcome pharox.Outcome
	once    sync.Once
}

func (b *leasedBody) Read(p []byte) (int, error) { return b.rc.Read(p) }

func (b *leasedBody) Close() error {
	err := b.rc.Close()
	b.once.Do(func() {
		if b.outcome.Kind != "" {
			b.g.reportSuccess(b.ctx, b.held.lease, b.outcome)
		}
		b.held.release()
	})
	return err
}

// leasedRWC keeps a 101 Switching Protocols body writable, so ReverseProxy
// can relay an upgraded connection.
type leasedRWC struct {
	*leasedBody
	rwc io.ReadWriteCloser
}

func (b *leasedRWC) Write(p []byte) (int, error) { return b.rwc.Write(p) }

func drainClose(rc io.ReadCloser) {
	// A little draining lets the connection be reused; more is not worth it.
	_, _ = io.CopyN(io.Discard, rc, 4<<10)
	rc.Close()
}

// forwardError answers a failed forward.
func (g *Gateway) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	st := stateFrom(r.Context())
	var ge *gwError
	if !errors.As(err, &ge) {
		if r.Context().Err() != nil {
			ge = &gwError{status: statusClientGone, reason: "client went away"}
		} else {
			ge = &gwError{status: http.StatusBadGateway, reason: "upstream failed: " + err.Error()}
		}
	}
	if st != nil {
		st.reason = ge.reason
	}
	if ge.status == statusClientGone {
		abort(st, ge.reason)
	}
	g.writeError(w, ge)
}

// transportCache keeps one http.Transport per upstream proxy (and its
// credentials), so plain HTTP requests reuse keep-alive connections to
// each upstream. The least recently used transports beyond the cap are
// closed.
type transportCache struct {
	mu    sync.Mutex
	max   int
	order *list.List // of *cachedTransport, most recent first
	byKey map[string]*list.Element
	build func(*pharox.Proxy) (*http.Transport, error)
}

type cachedTransport struct {
	key string
	t   *http.Transport
}

func newTransportCache(max int, build func(*pharox.Proxy) (*http.Transport, error)) *transportCache {
	return &transportCache{max: max, order: list.New(), byKey: map[string]*list.Element{}, build: build}
}

func (c *transportCache) get(p *pharox.Proxy) (*http.Transport, error) {
	if p == nil {
		return nil, errors.New("lease without proxy")
	}
	// The key holds the password; it never leaves this map.
	key := string(p.Protocol) + "\x00" + p.Address()
	if p.Credentials != nil {
		key += "\x00" + p.Credentials.User + "\x00" + p.Credentials.Password
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[key]; ok {
		c.order.MoveToFront(e)
		return e.Value.(*cachedTransport).t, nil
	}
	t, err := c.build(p)
	if err != nil {
		return nil, err
	}
	c.byKey[key] = c.order.PushFront(&cachedTransport{key: key, t: t})
	for c.order.Len() > c.max {
		old := c.order.Remove(c.order.Back()).(*cachedTransport)
		delete(c.byKey, old.key)
		old.t.CloseIdleConnections()
	}
	return t, nil
}

func (c *transportCache) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for e := c.order.Front(); e != nil; e = e.Next() {
		e.Value.(*cachedTransport).t.CloseIdleConnections()
	}
}

// newTransport builds the transport for one upstream proxy. It speaks
// HTTP/1 only (no TLSNextProto): metering counts a connection's bytes for
// the one request using it, and HTTP/2 would share it among requests.
func (g *Gateway) newTransport(p *pharox.Proxy) (*http.Transport, error) {
	t := &http.Transport{
		DialContext:         g.dialMetered,
		MaxIdleConnsPerHost: g.cfg.MaxIdleConnsPerUpstream,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: g.cfg.DialTimeout,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
		// A forward proxy relays the encoding the client asked for.
		DisableCompression:    true,
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: max(g.cfg.ResponseHeaderTimeout, 0),
		OnProxyConnectResponse: func(ctx context.Context, _ *url.URL, _ *http.Request, res *http.Response) error {
			if info, ok := ctx.Value(attemptKey{}).(*attemptInfo); ok {
				info.connectStatus.Store(int32(res.StatusCode))
			}
			return nil
		},
	}
	if g.cfg.UpstreamTLS != nil {
		t.TLSClientConfig = g.cfg.UpstreamTLS.Clone()
	} else {
		t.TLSClientConfig = &tls.Config{}
	}
	switch p.Protocol {
	case pharox.ProtocolHTTP, pharox.ProtocolHTTPS:
		u, err := url.Parse(p.URL())
		if err != nil {
			return nil, fmt.Errorf("upstream %s: bad proxy URL", p.String())
		}
		t.Proxy = http.ProxyURL(u)
	case pharox.ProtocolSOCKS5:
		// Dialed here rather than by net/http (Proxy with a socks5 URL),
		// whose SOCKS connection hides the metered one underneath.
		addr, auth := p.Address(), socksAuth(p)
		t.DialContext = func(ctx context.Context, network, target string) (net.Conn, error) {
			var raw net.Conn
			fwd := dialFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := g.dialMetered(ctx, network, addr)
				raw = c
				return c, err
			})
			d, err := proxy.SOCKS5("tcp", addr, auth, fwd)
			if err != nil {
				return nil, err
			}
			c, err := d.(proxy.ContextDialer).DialContext(ctx, network, target)
			if err != nil {
				return nil, err
			}
			if mc, ok := raw.(*connmeter.Conn); ok {
				return connmeter.Over(c, mc), nil
			}
			return c, nil
		}
	case pharox.ProtocolSOCKS4:
		d := &socks4.Dialer{Proxy: p.Address(), User: credUser(p), Forward: dialFunc(g.dialMetered)}
		t.DialContext = d.DialContext
	default:
		return nil, fmt.Errorf("upstream protocol %q not supported", p.Protocol)
	}
	return t, nil
}

// dialFunc is a dial function as a proxy.Dialer and proxy.ContextDialer.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func (f dialFunc) Dial(network, addr string) (net.Conn, error) {
	return f(context.Background(), network, addr)
}

func (f dialFunc) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f(ctx, network, addr)
}
