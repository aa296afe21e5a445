package transport

import (
	"context"
	"crypto/tls"
	"errors"
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
// requests, so a request on one counts its body bytes instead.
type meter struct {
	connmeter.Meter
	// used: the request got a connection through the proxy.
	used atomic.Bool
	// shared: that connection is HTTP/2; leasedBody counts the response
	// body's bytes.
	shared atomic.Bool
}

// usage is what m counted, as a release reports it; a nil meter counted
// nothing.
func (m *meter) usage() *pharox.Usage {
	if m == nil {
		return &pharox.Usage{}
	}
	u := &pharox.Usage{BytesSent: m.Sent.Load(), BytesReceived: m.Received.Load()}
	if m.used.Load() {
		u.Requests = 1
	}
	return u
}

// metered returns out with a trace that attaches a new meter to the
// connection out gets, and the meter; without metering, out and nil.
func (t *Transport) metered(out *http.Request) (*http.Request, *meter) {
	if t.noMetering {
		return out, nil
	}
	m := &meter{}
	trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
		m.used.Store(true)
		if tc, ok := ci.Conn.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol == "h2" {
			m.shared.Store(true)
			m.Sent.Store(max(out.ContentLength, 0))
			return
		}
		if mc := connmeter.Of(ci.Conn); mc != nil {
			mc.Attach(&m.Meter)
		}
	}}
	return out.WithContext(httptrace.WithClientTrace(out.Context(), trace)), m
}

// meterConn counts the bytes of a connection to a proxy, unless metering
// is off.
func (t *Transport) meterConn(c net.Conn) net.Conn {
	if t.noMetering {
		return c
	}
	return connmeter.New(c)
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
