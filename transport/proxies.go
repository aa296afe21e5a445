package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/net/proxy"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/connmeter"
	"github.com/pharox/pharox/internal/socks4"
)

// proxyKey is what a per-proxy transport is built from; a proxy whose
// address, protocol or credentials changed gets a new transport. It holds
// the password and never leaves the cache.
type proxyKey struct {
	protocol   pharox.Protocol
	host       string
	port       int
	user, pass string
}

func keyOf(p *pharox.Proxy) proxyKey {
	k := proxyKey{protocol: p.Protocol, host: p.Host, port: p.Port}
	if p.Credentials != nil {
		k.user, k.pass = p.Credentials.User, p.Credentials.Password
	}
	return k
}

// proxyTransport is the http.Transport of one proxy.
type proxyTransport struct {
	key      proxyKey
	tr       *http.Transport
	lastUsed atomic.Int64 // unix nanoseconds
	// retired is set once the transport left the cache: connections that
	// come back idle after that are closed (see proxyCache.retire).
	retired atomic.Bool
}

// proxyCache keeps one http.Transport per proxy, so requests through the
// same proxy reuse its keep-alive connections. It holds at most max; the
// least recently used go first, and those unused for the base's
// IdleConnTimeout go when another comes in. A transport also leaves when
// its proxy is reported banned, inactive, gone or changed, and its idle
// connections are closed.
type proxyCache struct {
	base *http.Transport
	max  int
	// wrap, when set, wraps each connection to a proxy (metering).
	wrap func(context.Context, net.Conn) net.Conn

	mu   sync.RWMutex
	byID map[uuid.UUID]*proxyTransport
}

func newProxyCache(base *http.Transport, max int, wrap func(context.Context, net.Conn) net.Conn) *proxyCache {
	return &proxyCache{base: base, max: max, wrap: wrap, byID: make(map[uuid.UUID]*proxyTransport)}
}

// get returns the transport for p, building it on first use.
func (c *proxyCache) get(p *pharox.Proxy) (*proxyTransport, error) {
	if p == nil {
		return nil, errors.New("transport: lease without its proxy")
	}
	key := keyOf(p)
	now := time.Now().UnixNano()
	c.mu.RLock()
	pt := c.byID[p.ID]
	c.mu.RUnlock()
	if pt != nil && pt.key == key {
		pt.lastUsed.Store(now)
		return pt, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if pt = c.byID[p.ID]; pt != nil {
		if pt.key == key {
			pt.lastUsed.Store(now)
			return pt, nil
		}
		// The proxy was edited: its old connections go to the old address
		// or with the old credentials.
		c.retireLocked(p.ID, pt)
	}
	tr, err := c.build(p)
	if err != nil {
		return nil, err
	}
	pt = &proxyTransport{key: key, tr: tr}
	pt.lastUsed.Store(now)
	c.byID[p.ID] = pt
	if idle := c.base.IdleConnTimeout; idle > 0 {
		// Transports unused for that long hold no connection any more; most
		// belong to proxies that left the pool or turned unhealthy, which
		// are never leased again.
		for id, e := range c.byID {
			if now-e.lastUsed.Load() > int64(idle) {
				c.retireLocked(id, e)
			}
		}
	}
	if len(c.byID) > c.max {
		// Scanning is bounded by max and only happens when a new proxy
		// comes in over the cap.
		var oldID uuid.UUID
		var old *proxyTransport
		for id, e := range c.byID {
			if e != pt && (old == nil || e.lastUsed.Load() < old.lastUsed.Load()) {
				oldID, old = id, e
			}
		}
		c.retireLocked(oldID, old)
	}
	return pt, nil
}

// retire drops the transport of the proxy id, if it is still pt (nil:
// whatever it is).
func (c *proxyCache) retire(id uuid.UUID, pt *proxyTransport) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := c.byID[id]
	if cur == nil || (pt != nil && cur != pt) {
		return
	}
	c.retireLocked(id, cur)
}

// retireLocked closes pt's idle connections. http.Transport closes those
// that come back idle later too, until it is used again; a request still
// running on pt when it retired closes them once more when it ends.
func (c *proxyCache) retireLocked(id uuid.UUID, pt *proxyTransport) {
	delete(c.byID, id)
	pt.retired.Store(true)
	pt.tr.CloseIdleConnections()
}

// closeIdle closes the idle connections of every transport.
func (c *proxyCache) closeIdle() {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, pt := range c.byID {
		pt.tr.CloseIdleConnections()
	}
}

// build makes the transport of one proxy from the base transport: HTTP and
// HTTPS proxies through net/http's own proxy support (forwarding for
// http:// targets, CONNECT tunnels for https://), SOCKS5 through
// golang.org/x/net/proxy, SOCKS4 through internal/socks4.
func (c *proxyCache) build(p *pharox.Proxy) (*http.Transport, error) {
	tr := c.base.Clone()
	// Every connection goes through the proxy: no proxy from the
	// environment, no dialer of the base that would go around it.
	tr.Proxy = nil
	//nolint:staticcheck // Dial and DialTLS are deprecated, but a base transport may still set them: clearing them is the point.
	tr.Dial, tr.DialTLS, tr.DialTLSContext = nil, nil, nil
	baseHook := c.base.OnProxyConnectResponse
	tr.OnProxyConnectResponse = func(ctx context.Context, u *url.URL, req *http.Request, res *http.Response) error {
		if baseHook != nil {
			if err := baseHook(ctx, u, req, res); err != nil {
				return err
			}
		}
		if res.StatusCode != http.StatusOK {
			// net/http fails it too, with only the status text.
			return &connectRefusedError{status: res.StatusCode}
		}
		return nil
	}
	fwd := &forwardDialer{dial: (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext, wrap: c.wrap}
	if base := c.base.DialContext; base != nil {
		fwd.dial = base
	}
	switch p.Protocol {
	case pharox.ProtocolHTTP, pharox.ProtocolHTTPS:
		u, err := url.Parse(p.URL())
		if err != nil {
			return nil, fmt.Errorf("transport: proxy %s: URL does not parse", p)
		}
		tr.Proxy = http.ProxyURL(u)
		tr.DialContext = fwd.DialContext
	case pharox.ProtocolSOCKS5:
		var auth *proxy.Auth
		if p.Credentials != nil && (p.Credentials.User != "" || p.Credentials.Password != "") {
			auth = &proxy.Auth{User: p.Credentials.User, Password: p.Credentials.Password}
		}
		if _, err := proxy.SOCKS5("tcp", p.Address(), auth, fwd); err != nil {
			return nil, fmt.Errorf("transport: proxy %s: %w", p, err)
		}
		addr := p.Address()
		tr.DialContext = func(ctx context.Context, network, target string) (net.Conn, error) {
			// The SOCKS connection hides the proxy connection under it,
			// which a metered request must find (connmeter.Of).
			var raw net.Conn
			d, err := proxy.SOCKS5("tcp", addr, auth, dialFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := fwd.DialContext(ctx, network, addr)
				raw = c
				return c, err
			}))
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
		user := ""
		if p.Credentials != nil {
			user = p.Credentials.User
		}
		tr.DialContext = (&socks4.Dialer{Proxy: p.Address(), User: user, Forward: fwd}).DialContext
	default:
		return nil, fmt.Errorf("transport: proxy %s: protocol %q not supported", p, p.Protocol)
	}
	if p.Protocol == pharox.ProtocolSOCKS4 || p.Protocol == pharox.ProtocolSOCKS5 {
		// Nothing of a request goes out before its SOCKS dial succeeds.
		dial := tr.DialContext
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, &socksDialError{err: err}
			}
			return c, nil
		}
	}
	return tr, nil
}

// forwardDialer dials the proxy itself; its failure tells an unreachable
// SOCKS proxy from one that answered.
type forwardDialer struct {
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	wrap func(context.Context, net.Conn) net.Conn // nil: none
}

func (d *forwardDialer) Dial(network, addr string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, addr)
}

func (d *forwardDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := d.dial(ctx, network, addr)
	if err != nil {
		return nil, &proxyUnreachableError{err: err}
	}
	if d.wrap != nil {
		c = d.wrap(ctx, c)
	}
	return c, nil
}

// dialFunc is a dial function as a proxy.Dialer and proxy.ContextDialer.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func (f dialFunc) Dial(network, addr string) (net.Conn, error) {
	return f(context.Background(), network, addr)
}

func (f dialFunc) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f(ctx, network, addr)
}

// connectRefusedError is a CONNECT the proxy answered with an error status.
type connectRefusedError struct{ status int }

func (e *connectRefusedError) Error() string {
	return fmt.Sprintf("proxy answered CONNECT with %d %s", e.status, http.StatusText(e.status))
}

// socksDialError is a failed dial through a SOCKS proxy: nothing of the
// request went out.
type socksDialError struct{ err error }

func (e *socksDialError) Error() string { return e.err.Error() }
func (e *socksDialError) Unwrap() error { return e.err }

// proxyUnreachableError is a failed connection to the proxy itself.
type proxyUnreachableError struct{ err error }

func (e *proxyUnreachableError) Error() string { return e.err.Error() }
func (e *proxyUnreachableError) Unwrap() error { return e.err }
