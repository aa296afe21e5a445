// Package connmeter counts the bytes of connections to upstream proxies
// for the request using each one, so that the gateway and the transport
// can report per lease what it carried (pharox.Usage).
//
// net/http's Transport uses an HTTP/1 connection for one request at a
// time; a request that gets a connection (httptrace's GotConn) attaches
// its Meter to it, and from then on every byte read or written there
// counts for that request, until the next request attaches its own. Bytes
// of dialing (a SOCKS handshake, a CONNECT for an https:// URL, TLS) come
// before any request has the connection: they are kept and go to the
// first request that attaches. An HTTP/2 connection is shared by
// concurrent requests and cannot be counted this way.
package connmeter

import (
	"net"
	"sync/atomic"
)

// Meter counts the bytes of one request (one lease).
type Meter struct {
	Sent     atomic.Int64
	Received atomic.Int64
}

// Conn is a connection that counts its bytes into the Meter attached to
// it. Its cost is one atomic load and one or two atomic additions per
// read or write.
type Conn struct {
	net.Conn
	cur     atomic.Pointer[Meter]
	pending Meter // counted while no meter was attached
}

// New counts c's bytes.
func New(c net.Conn) *Conn { return &Conn{Conn: c} }

// sink is where the bytes moving now are counted.
func (c *Conn) sink() *Meter {
	if m := c.cur.Load(); m != nil {
		return m
	}
	return &c.pending
}

func (c *Conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.sink().Received.Add(int64(n))
	}
	return n, err
}

// Write counts p before writing it: the peer may answer, and the request
// end and its meter be read, before Write returns.
func (c *Conn) Write(p []byte) (int, error) {
	m := c.sink()
	m.Sent.Add(int64(len(p)))
	n, err := c.Conn.Write(p)
	if n < len(p) {
		m.Sent.Add(int64(n - len(p)))
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

// Attach makes m count the connection's bytes from now on, with those of
// dialing it that no meter took yet.
func (c *Conn) Attach(m *Meter) {
	c.cur.Store(m)
	m.Sent.Add(c.pending.Sent.Swap(0))
	m.Received.Add(c.pending.Received.Swap(0))
}

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
