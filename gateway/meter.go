package gateway

import (
	"context"
	"net"
	"sync/atomic"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/connmeter"
)

// meter counts the traffic one lease carries, reported when the lease is
// released (see Config.DisableMetering). A forwarded request's meter is
// attached to its connection to the upstream (see connmeter); a tunnel
// adds its payload. Nothing reaches the lease source before the release.
type meter struct {
	connmeter.Meter
	// used is set once the lease carried a request: a forwarded request
	// got its connection through the upstream, or a tunnel opened.
	used atomic.Bool
}

// usage seals the meter and returns what it counted, as the release
// reports it; a nil meter counted nothing.
func (m *meter) usage() *pharox.Usage {
	if m == nil {
		return &pharox.Usage{}
	}
	u := &pharox.Usage{}
	u.BytesSent, u.BytesReceived = m.Seal()
	if m.used.Load() {
		u.Requests = 1
	}
	return u
}

// newMeter returns a meter for one lease, or nil when metering is off.
func (g *Gateway) newMeter() *meter {
	if g.cfg.DisableMetering {
		return nil
	}
	return &meter{}
}

// dialMetered dials an upstream proxy for forwarded requests; with
// metering on, the connection counts its bytes for the request using it,
// those of dialing it for the request it is dialed for (ctx has the
// request's values).
func (g *Gateway) dialMetered(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := g.dialer.DialContext(ctx, network, addr)
	if err != nil || g.cfg.DisableMetering {
		return c, err
	}
	var dial *connmeter.Meter
	if info, ok := ctx.Value(attemptKey{}).(*attemptInfo); ok && info.m != nil {
		dial = &info.m.Meter
	}
	return connmeter.New(c, dial), nil
}
