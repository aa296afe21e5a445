// Package connmeter counts the bytes of connections to upstream proxies
// for the request using each one, so that the gateway and the transport
// can report per lease what it carried (pharox.Usage).
//
// net/http's Transport uses an HTTP/1 connection for one request at a
// time. A request that gets a connection (httptrace's GotConn) attaches
// its Meter to it, and from then on every byte read or written there
// counts for that request, until the next request attaches its own. A
// connection is dialed for a request (the dial's context carries the
// request's values): the bytes of dialing it (a SOCKS handshake, a
// CONNECT for an https:// URL, TLS) count for that request, even when
// net/http then hands the connection to another one.
//
// A request's lease is released once, with what its meter counted then:
// Seal takes the counts and stops the meter, and bytes that come later
// on one of its connections (the dial of a connection the request did not
// wait for, say) are kept by the connection for the next request that
// attaches. So every byte counted goes to exactly one report, except
// those of a connection closed without another request using it.
//
// An HTTP/2 connection is shared by concurrent requests and cannot be
// counted this way (see Detach).
package connmeter

import (
	"net"
	"sync/atomic"
)

// sealed marks a sealed counter; counts stay far below it.
const sealed = -1 << 62

// Meter counts the bytes of one request (one lease) until it is sealed.
type Meter struct {
	sent     atomic.Int64
	received atomic.Int64
}

// add adds n to c unless the meter is sealed, and reports whether it did.
// A count never goes below zero (a failed write takes back what it
// counted, which may have gone to another meter).
func add(c *atomic.Int64, n int64) bool {
	for {
		v := c.Load()
		if v < 0 {
			return false
		}
		if c.CompareAndSwap(v, max(v+n, 0)) {
			return true
		}
	}
}

// AddSent counts n bytes sent, unless m is sealed.
func (m *Meter) AddSent(n int64) bool { return add(&m.sent, n) }

// AddReceived counts n bytes received, unless m is sealed.
func (m *Meter) AddReceived(n int64) bool { return add(&m.received, n) }

// Seal stops m and returns what it counted; a meter sealed already
// returns zeros.
func (m *Meter) Seal() (sent, received int64) {
	return max(m.sent.Swap(sealed), 0), max(m.received.Swap(sealed), 0)
}

// Conn is a connection that counts its bytes into the Meter attached to
// it. Its cost is an atomic load and a compare-and-swap or two per read
// or write.
type Conn struct {
	net.Conn
	cur     atomic.Pointer[Meter]
	pending Meter // counted while no unsealed meter was attached; never sealed
}

// New counts c's bytes, for dial (the meter of the request that dialed
// it) until a request attaches; dial may be nil.
func New(c net.Conn, dial *Meter) *Conn {
	mc := &Conn{Conn: c}
	if dial != nil {
		mc.cur.Store(dial)
	}
	return mc
}

func (c *Conn) addSent(n int64) {
	if m := c.cur.Load(); m != nil && m.AddSent(n) {
		return
	}
	c.pending.AddSent(n)
}

func (c *Conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		if m := c.cur.Load(); m == nil || !m.AddReceived(int64(n)) {
			c.pending.AddReceived(int64(n))
		}
	}
	return n, err
}

// Write counts p before writing it: the peer may answer, and the request
// end and its meter be sealed, before Write returns. What could not be
// written is taken back.
func (c *Conn) Write(p []byte) (int, error) {
	c.addSent(int64(len(p)))
	n, err := c.Conn.Write(p)
	if n < len(p) {
		c.addSent(int64(n - len(p)))
	}
	return n, err
}

// CloseWrite half-closes the connection underneath, or closes it when it
// cannot half-close.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// Attach makes m count the connection's bytes from now on, with those the
// connection kept for the next request.
func (c *Conn) Attach(m *Meter) {
	c.cur.Store(m)
	if s := c.pending.sent.Swap(0); s != 0 && !m.AddSent(s) {
		c.pending.AddSent(s)
	}
	if r := c.pending.received.Swap(0); r != 0 && !m.AddReceived(r) {
		c.pending.AddReceived(r)
	}
}

// Detach stops counting the connection's bytes for any request: an
// HTTP/2 connection is no one request's.
func (c *Conn) Detach() { c.cur.Store(nil) }

// over is a connection made over a counted one (a SOCKS connection whose
// handshake ran on raw), so that Of finds raw under it.
type over struct {
	net.Conn
	raw *Conn
}

// CloseWrite half-closes raw: after the handshake the stream is raw's.
func (c *over) CloseWrite() error { return c.raw.CloseWrite() }

// Over returns c, a connection made over raw, in a form Of sees through.
func Over(c net.Conn, raw *Conn) net.Conn { return &over{Conn: c, raw: raw} }

// Of finds the counted connection under a connection net/http hands a
// request: the Conn itself, one under TLS (an HTTPS proxy, an https://
// target, or both), or one under a SOCKS connection made with Over. It
// returns nil when there is none.
func Of(c net.Conn) *Conn {
	for range 4 {
		switch x := c.(type) {
		case *Conn:
			return x
		case *over:
			return x.raw
		case interface{ NetConn() net.Conn }: // *tls.Conn
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}
