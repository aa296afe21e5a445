package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	socks5 "github.com/armon/go-socks5"

	"github.com/pharox/pharox/client"
)

// socksAuthMethods says which SOCKS5 authentication the gateway accepts.
type socksAuthMethods struct {
	// required: only username/password; otherwise no-auth is accepted too.
	required bool
}

func (g *Gateway) newSOCKSAuth() socksAuthMethods {
	return socksAuthMethods{required: g.cfg.User != "" || g.cfg.Password != "" || g.cfg.Keys != nil}
}

// ServeSOCKS accepts SOCKS5 connections on ln until Shutdown or Close; it
// then returns nil. Only CONNECT is supported. Routing parameters travel
// in the SOCKS5 user name, as with HTTP.
func (g *Gateway) ServeSOCKS(ln net.Listener) error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		ln.Close()
		return nil
	}
	g.listeners[ln] = struct{}{}
	g.serveWG.Add(1)
	g.mu.Unlock()
	defer g.serveWG.Done()
	defer func() {
		g.mu.Lock()
		delete(g.listeners, ln)
		g.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			g.mu.Lock()
			closed := g.closed
			g.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Out of file descriptors and the like: wait, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		if !g.track(c) {
			c.Close()
			continue
		}
		go func() {
			defer g.untrack(c)
			defer c.Close()
			g.serveSOCKSConn(c)
		}()
	}
}

// socksClient is the client's side of one SOCKS5 connection.
type socksClient struct {
	net.Conn
	r io.Reader
}

func (c *socksClient) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *socksClient) CloseWrite() error          { return closeWrite(c.Conn) }

// serveSOCKSConn serves one SOCKS5 connection with armon/go-socks5. A
// server per connection lets the dial hook know its client.
func (g *Gateway) serveSOCKSConn(c net.Conn) {
	st := &reqState{kind: "socks5", start: time.Now(), client: c.RemoteAddr().String(), method: "CONNECT"}
	c.SetDeadline(st.start.Add(socksHandshakeTimeout))
	greeting, err := readGreeting(c, !g.socksAuth.required)
	if err != nil {
		return
	}
	sc := &socksClient{Conn: c, r: io.MultiReader(bytes.NewReader(greeting), c)}
	creds := socksCreds{g: g, st: st}
	tunnel := &socksTunnel{}
	methods := []socks5.Authenticator{socks5.UserPassAuthenticator{Credentials: creds}}
	if !g.socksAuth.required {
		methods = append(methods, socks5.NoAuthAuthenticator{})
	}
	srv, err := socks5.New(&socks5.Config{
		AuthMethods: methods,
		Resolver:    keepName{},
		Rules:       socksRules{g: g, st: st, client: sc, tunnel: tunnel},
		Logger:      log.New(io.Discard, "", 0),
		Dial: func(context.Context, string, string) (net.Conn, error) {
			// The rules opened it (or failed to).
			return tunnel.conn, tunnel.err
		},
	})
	if err != nil {
		return
	}
	// The rules and the dialer record how the request went in st.
	_ = srv.ServeConn(sc)
	if st.entered {
		g.leave()
	}
	if st.status != 0 {
		g.finish(st)
	}
}

// readGreeting reads the client's SOCKS5 method offer. When no-auth is
// also accepted, username/password moves to the front: go-socks5 takes the
// client's first acceptable method, and the user name carries the routing.
func readGreeting(c net.Conn, preferUserPass bool) ([]byte, error) {
	hdr := make([]byte, 2, 2+255)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return nil, err
	}
	if hdr[0] != 5 {
		return hdr, nil // go-socks5 rejects the version
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, methods); err != nil {
		return nil, err
	}
	if i := bytes.IndexByte(methods, socks5.UserPassAuth); preferUserPass && i > 0 {
		methods = slices.Insert(slices.Delete(methods, i, i+1), 0, socks5.UserPassAuth)
	}
	return append(hdr, methods...), nil
}

// socksCreds checks SOCKS5 credentials like Proxy-Authorization.
type socksCreds struct {
	g  *Gateway
	st *reqState
}

func (c socksCreds) Valid(user, pass string) bool {
	ctx, cancel := context.WithTimeout(c.g.base, socksHandshakeTimeout)
	defer cancel()
	if _, err := c.g.checkCredentials(ctx, c.st, user, pass); err != nil {
		c.st.status, c.st.reason = http.StatusProxyAuthRequired, err.Error()
		var ge *gwError
		if errors.As(err, &ge) {
			c.st.status = ge.status
		}
		return false
	}
	return true
}

// keepName leaves host names unresolved, so the upstream resolves them
// where it is (and DNS answers match its location).
type keepName struct{}

func (keepName) Resolve(ctx context.Context, _ string) (context.Context, net.IP, error) {
	return ctx, nil, nil
}

// socksTunnel is the outcome of opening a SOCKS5 tunnel: the rules open
// it and the dial hook hands it to go-socks5.
type socksTunnel struct {
	conn net.Conn
	err  error
}

// socksRules allows CONNECT only, picks the route from the user name and
// opens the tunnel.
type socksRules struct {
	g      *Gateway
	st     *reqState
	client *socksClient
	tunnel *socksTunnel
}

func (r socksRules) Allow(ctx context.Context, req *socks5.Request) (context.Context, bool) {
	st := r.st
	st.host = req.DestAddr.Address()
	if req.Command != socks5.ConnectCommand {
		st.status, st.reason = http.StatusMethodNotAllowed, "only SOCKS5 CONNECT is supported"
		return ctx, false
	}
	var user string
	if req.AuthContext != nil {
		user = req.AuthContext.Payload["Username"]
	}
	route, err := r.g.checkCredentialsRouteOnly(user)
	if err != nil {
		st.status, st.reason = http.StatusProxyAuthRequired, err.Error()
		return ctx, false
	}
	st.route = route
	if st.secret != "" {
		ctx = client.ContextWithAPIKey(ctx, st.secret)
	}
	if st.pool, err = r.g.routePool(ctx, route); err != nil {
		st.status = http.StatusServiceUnavailable
		var ge *gwError
		if errors.As(err, &ge) {
			st.status = ge.status
		}
		st.reason = err.Error()
		return ctx, false
	}
	if st.user != nil {
		if err := st.user.mayUse(st.pool); err != nil {
			st.status, st.reason = err.(*gwError).status, err.Error()
			return ctx, false
		}
	}
	if !r.g.enter() {
		ge := r.g.fullError()
		st.status, st.reason = ge.status, ge.reason
		return ctx, false
	}
	r.st.entered = true
	// The handshake is over; the tunnel's idle limit is Config.IdleTimeout.
	r.client.SetDeadline(time.Time{})
	// The tunnel opens here rather than in go-socks5's dial hook, which
	// answers every failure "host unreachable": an acquisition refused by
	// a quota is answered "connection not allowed by ruleset" (reply 2),
	// like a gateway at --max-conns.
	dctx := r.g.base
	if st.secret != "" {
		// A remote lease source acts with the user's key.
		dctx = client.ContextWithAPIKey(dctx, st.secret)
	}
	r.tunnel.conn, r.tunnel.err = r.g.socksDial(dctx, st, r.client, req.DestAddr.Address())
	if r.tunnel.err != nil && st.status == http.StatusTooManyRequests {
		return ctx, false
	}
	return ctx, true
}

// checkCredentialsRouteOnly parses the route of a user name whose
// password was already checked.
func (g *Gateway) checkCredentialsRouteOnly(user string) (Route, error) {
	return ParseRoute(user, g.cfg.User)
}

// socksDial opens the tunnel for a SOCKS5 CONNECT. go-socks5 relays the
// data and closes the returned conn when either side ends, which releases
// the lease.
func (g *Gateway) socksDial(ctx context.Context, st *reqState, client *socksClient, addr string) (net.Conn, error) {
	if err := checkTarget(addr); err != nil {
		// SOCKS5 names are raw bytes: one with a line break would write
		// the client's own lines into an upstream's CONNECT request.
		st.status, st.reason = http.StatusBadRequest, err.Error()
		return nil, err
	}
	st.target = g.targetOf(addr)
	tn, err := g.openTunnel(ctx, st, addr)
	if err != nil {
		var ge *gwError
		if errors.As(err, &ge) {
			st.status = ge.status
		}
		st.reason = err.Error()
		return nil, err
	}
	st.status = http.StatusOK
	g.metrics.tunnelOpen(st.kind, 1)
	up := &socksUpstream{Conn: tn.conn, tn: tn, st: st, client: client}
	up.stopIdle = tn.watchIdle(client)
	return up, nil
}

// socksUpstream is the upstream side of a SOCKS5 tunnel as go-socks5 sees
// it: it counts bytes and releases the lease on close.
type socksUpstream struct {
	net.Conn
	tn     *tunnel
	st     *reqState
	client *socksClient
	once   sync.Once
	// stopIdle stops the tunnel's idle watch.
	stopIdle func()
}

func (c *socksUpstream) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.tn.touch()
	}
	c.st.received.Add(int64(n))
	c.tn.m.AddReceived(int64(n))
	if err == io.EOF {
		// The upstream is done; do not wait forever for an idle client.
		c.client.SetReadDeadline(time.Now().Add(halfCloseGrace))
	}
	return n, err
}

func (c *socksUpstream) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.tn.touch()
	}
	c.st.sent.Add(int64(n))
	c.tn.m.AddSent(int64(n))
	return n, err
}

func (c *socksUpstream) CloseWrite() error { return closeWrite(c.Conn) }

// LocalAddr is always a TCP address: go-socks5 reports it to the client
// and assumes its type.
func (c *socksUpstream) LocalAddr() net.Addr {
	if a, ok := c.Conn.LocalAddr().(*net.TCPAddr); ok {
		return a
	}
	return &net.TCPAddr{IP: net.IPv4zero}
}

func (c *socksUpstream) Close() error {
	c.once.Do(func() {
		c.stopIdle()
		if c.tn.idled.Load() {
			c.st.reason = "closed after the idle timeout"
		}
		c.tn.close()
		c.g().metrics.tunnelOpen(c.st.kind, -1)
	})
	return nil
}

func (c *socksUpstream) g() *Gateway { return c.tn.g }

// checkTarget accepts host:port with a port in 1-65535 and a host free of
// spaces and control characters.
func checkTarget(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return &gwError{status: http.StatusBadRequest, reason: "target must be host:port"}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return &gwError{status: http.StatusBadRequest, reason: "target port must be 1-65535"}
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; c <= ' ' || c == 0x7f {
			return &gwError{status: http.StatusBadRequest, reason: "target host contains spaces or control characters"}
		}
	}
	return nil
}
