package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/connmeter"
)

// meter counts the traffic of one lease, reported when it is released
// (see WithoutMetering). Over HTTP/1 it is attached to the connection
// through the proxy that the request gets, which counts every byte on
// it (see connmeter); an HTTP/2 connection is shared by concurrent
// requests, so a request on one counts its bodies instead.
type meter struct {
	connmeter.Meter
	// used: the request got a connection through the proxy.
	used atomic.Bool
	// shared: that connection is HTTP/2; the request and response bodies
	// count their bytes in bodySent and bodyReceived, which usage reports
	// instead.
	shared                 atomic.Bool
	bodySent, bodyReceived atomic.Int64
}

// usage seals m and returns what it counted, as a release reports it; a
// nil meter counted nothing.
func (m *meter) usage() *pharox.Usage {
	if m == nil {
		return &pharox.Usage{}
	}
	u := &pharox.Usage{}
	u.BytesSent, u.BytesReceived = m.Seal()
	if m.shared.Load() {
		u.BytesSent, u.BytesReceived = m.bodySent.Load(), m.bodyReceived.Load()
	}
	if m.used.Load() {
		u.Requests = 1
	}
	return u
}

// meterKey carries the meter of a request in its context, for the dial
// of a connection made for it.
type meterKey struct{}

// metered returns out with a trace that attaches a new meter to the
// connection out gets, and the meter; without metering, out and nil.
func (t *Transport) metered(out *http.Request) (*http.Request, *meter) {
	if t.noMetering {
		return out, nil
	}
	m := &meter{}
	trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
		m.used.Store(true)
		mc := connmeter.Of(ci.Conn)
		if tc, ok := ci.Conn.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol == "h2" {
			m.shared.Store(true)
			if mc != nil {
				mc.Detach() // no one request's
			}
			return
		}
		if mc != nil {
			mc.Attach(&m.Meter)
		}
	}}
	ctx := context.WithValue(httptrace.WithClientTrace(out.Context(), trace), meterKey{}, m)
	out = out.WithContext(ctx)
	if out.Body != nil && out.Body != http.NoBody {
		out.Body = &meteredBody{ReadCloser: out.Body, m: m}
	}
	return out, m
}

// meteredBody counts a request body's bytes for a request on an HTTP/2
// connection.
type meteredBody struct {
	io.ReadCloser
	m *meter
}

func (b *meteredBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 && b.m.shared.Load() {
		b.m.bodySent.Add(int64(n))
	}
	return n, err
}

// meterConn counts the bytes of a connection to a proxy, those of dialing
// it for the request it is dialed for (ctx has the request's values).
func meterConn(ctx context.Context, c net.Conn) net.Conn {
	var dial *connmeter.Meter
	if m, ok := ctx.Value(meterKey{}).(*meter); ok {
		dial = &m.Meter
	}
	return connmeter.New(c, dial)
}

// release gives a lease back, reporting what m counted unless metering
// is off. ctx is not cancelled with the request.
func (t *Transport) release(ctx context.Context, l *pharox.Lease, m *meter) {
	var usage *pharox.Usage
	if !t.noMetering {
		usage = m.usage()
	}
	if err := t.leaser.Release(ctx, l, usage); err != nil {
		if errors.Is(err, pharox.ErrLeaseNotActive) {
			// It expired first (a body nobody read); the slot is free.
			t.log.Debug("transport: lease ended before its release", "lease", l.ID, "pool", l.PoolName)
			return
		}
		t.log.Error("transport: release lease failed", "lease", l.ID, "pool", l.PoolName, "err", err)
	}
}
