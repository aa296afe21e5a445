package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// tunnel is an open connection to a target through a leased upstream. It
// holds its lease, renewing it while open, until close.
type tunnel struct {
	g    *Gateway
	held *heldLease
	conn net.Conn
	// m counts the payload each way, reported at the release.
	m    meter
	once sync.Once
	// last is when a byte last went through, in Unix nanoseconds.
	last atomic.Int64
	// idled is set when the idle watch closed the tunnel.
	idled atomic.Bool
}

// touch notes that bytes went through the tunnel.
func (t *tunnel) touch() { t.last.Store(time.Now().UnixNano()) }

// watchIdle closes the tunnel and its client once no byte went through
// for Config.IdleTimeout (the lease is then released as the tunnel ends).
// One timer per tunnel, re-armed for the time left, so traffic costs a
// clock read per read, not a timer reset. It returns the stop function.
func (t *tunnel) watchIdle(client net.Conn) (stop func()) {
	idle := t.g.cfg.IdleTimeout
	if idle <= 0 {
		return func() {}
	}
	t.touch()
	var mu sync.Mutex
	var timer *time.Timer
	stopped := false
	mu.Lock()
	defer mu.Unlock()
	timer = time.AfterFunc(idle, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if left := idle - time.Since(time.Unix(0, t.last.Load())); left > 0 {
			timer.Reset(left)
			return
		}
		t.idled.Store(true)
		client.Close()
		t.conn.Close()
	})
	return func() {
		mu.Lock()
		stopped = true
		timer.Stop()
		mu.Unlock()
	}
}

// touchReader notes in its tunnel every read that returns bytes.
type touchReader struct {
	r io.Reader
	t *tunnel
}

func (r touchReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.t.touch()
	}
	return n, err
}

// heldLease is a lease in use by a response or tunnel that may outlast
// its duration: it is renewed at half its duration until released.
type heldLease struct {
	g     *Gateway
	ctx   context.Context
	lease *pharox.Lease
	m     *meter // what the release reports

	mu     sync.Mutex
	renew  *time.Timer
	closed bool
}

// hold starts renewing l, whose traffic m counts; ctx's values (not its
// cancellation) are kept.
func (g *Gateway) hold(ctx context.Context, l *pharox.Lease, m *meter) *heldLease {
	h := &heldLease{g: g, ctx: context.WithoutCancel(ctx), lease: l, m: m}
	h.scheduleRenew()
	return h
}

func (h *heldLease) scheduleRenew() {
	every := h.g.cfg.LeaseDuration / 2
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.renew = time.AfterFunc(every, func() {
		ctx, cancel := context.WithTimeout(h.ctx, releaseTimeout)
		err := h.g.leaser.Renew(ctx, h.lease.ID, h.g.cfg.LeaseDuration)
		cancel()
		if err != nil {
			h.g.log.Warn("gateway: renew lease failed", "lease", h.lease.ID, "err", err)
			if errors.Is(err, pharox.ErrLeaseNotActive) || errors.Is(err, pharox.ErrLeaseNotFound) {
				return
			}
		}
		h.scheduleRenew()
	})
}

// release stops renewing and releases the lease, once.
func (h *heldLease) release() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	if h.renew != nil {
		h.renew.Stop()
	}
	h.mu.Unlock()
	h.g.release(h.ctx, h.lease, h.m)
}

// openTunnel leases an upstream and opens a tunnel through it to target,
// retrying once on another upstream when the first cannot be used: nothing
// has been sent to a tunnel before it opens, so a retry is always safe.
func (g *Gateway) openTunnel(ctx context.Context, st *reqState, target string) (*tunnel, error) {
	var exclude []uuid.UUID
	var prev *pharox.Lease
	var prevErr *attemptError
	for attempt := 0; ; attempt++ {
		lease, err := g.acquire(ctx, st, exclude)
		if prev != nil {
			g.release(ctx, prev, nil) // no tunnel opened through it
			if err != nil {
				return nil, &gwError{status: http.StatusBadGateway, reason: prevErr.reason}
			}
			g.metrics.retry()
		}
		if err != nil {
			return nil, g.acquireErrorFor(st, err)
		}
		st.useLease(lease)
		started := time.Now()
		conn, aerr := g.dialUpstream(ctx, lease.Proxy, target, st.target)
		if aerr != nil {
			aerr.reason = scrub(aerr.reason, lease.Proxy)
		}
		if aerr == nil {
			latency := time.Since(started)
			g.metrics.upstreamLatency(st.kind, latency)
			g.reportSuccess(ctx, lease, g.withTarget(st, pharox.Outcome{Kind: pharox.OutcomeSuccess, Latency: latency}))
			tn := &tunnel{g: g, conn: conn}
			tn.m.used.Store(true)
			tn.held = g.hold(ctx, lease, &tn.m)
			return tn, nil
		}
		if aerr.kind == failCanceled || aerr.kind == failTarget {
			st.reason = aerr.reason
			g.release(ctx, lease, nil)
			if aerr.kind == failCanceled {
				return nil, &gwError{status: statusClientGone, reason: aerr.reason}
			}
			return nil, &gwError{status: http.StatusBadGateway, reason: aerr.reason}
		}
		g.failed(ctx, st, lease, aerr)
		if attempt > 0 {
			g.release(ctx, lease, nil)
			return nil, &gwError{status: http.StatusBadGateway, reason: aerr.reason}
		}
		exclude = append(exclude, lease.ProxyID)
		prev, prevErr = lease, aerr
	}
}

// close ends the tunnel and releases its lease, once.
func (t *tunnel) close() {
	t.once.Do(func() {
		t.conn.Close()
		t.held.release()
	})
}

// serveConnect answers a CONNECT request with a tunnel.
func (g *Gateway) serveConnect(w http.ResponseWriter, r *http.Request, st *reqState) {
	target := r.Host
	if _, port, err := net.SplitHostPort(target); err != nil || port == "" {
		g.writeError(w, &gwError{status: http.StatusBadRequest, reason: "CONNECT needs host:port"})
		return
	}
	st.target = g.targetOf(target)
	tn, err := g.openTunnel(r.Context(), st, target)
	if err != nil {
		var ge *gwError
		if errors.As(err, &ge) && ge.status == statusClientGone {
			abort(st, ge.reason)
		}
		st.reason = err.Error()
		g.writeError(w, err)
		return
	}
	defer tn.close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		g.writeError(w, &gwError{status: http.StatusInternalServerError, reason: "cannot take over the connection: " + err.Error()})
		return
	}
	defer conn.Close()
	if !g.track(conn) {
		return
	}
	defer g.untrack(conn)
	conn.SetDeadline(time.Time{})
	st.status = http.StatusOK
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	g.metrics.tunnelOpen(st.kind, 1)
	defer g.metrics.tunnelOpen(st.kind, -1)
	// brw.Reader may hold bytes the client sent right behind its request.
	var clientR, upR io.Reader = brw.Reader, tn.conn
	if g.cfg.IdleTimeout > 0 {
		// Watching for idleness costs the kernel splice between the two
		// sockets: each read must be seen.
		clientR, upR = touchReader{brw.Reader, tn}, touchReader{tn.conn, tn}
		stop := tn.watchIdle(conn)
		defer stop()
	}
	g.pipe(conn, clientR, tn, upR, st)
	if tn.idled.Load() {
		st.reason = "closed after the idle timeout"
	}
}

// pipe copies both ways between the client and the tunnel's upstream
// until both directions end, counting the payload into st and the
// tunnel's meter. A direction that ends cleanly half-closes its peer; one
// that fails closes both, which ends the other.
func (g *Gateway) pipe(client net.Conn, clientR io.Reader, tn *tunnel, upR io.Reader, st *reqState) {
	up := tn.conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		n, err := g.copy(up, clientR)
		st.sent.Add(n)
		tn.m.AddSent(n)
		if err != nil {
			client.Close()
			up.Close()
			return
		}
		_ = closeWrite(up) // best effort: the copy below ends either way
	}()
	n, err := g.copy(client, upR)
	st.received.Add(n)
	tn.m.AddReceived(n)
	if err != nil {
		client.Close()
		up.Close()
	} else {
		_ = closeWrite(client)
		// The upstream is done; do not wait forever for an idle client.
		client.SetReadDeadline(time.Now().Add(halfCloseGrace))
	}
	<-done
}

// copy copies with a pooled buffer (unused when both ends are TCP, which
// the kernel splices).
func (g *Gateway) copy(dst io.Writer, src io.Reader) (int64, error) {
	bp := g.bufs.Get().(*[]byte)
	defer g.bufs.Put(bp)
	n, err := io.CopyBuffer(dst, src, *bp)
	if errors.Is(err, net.ErrClosed) {
		// The other direction closed it after ending; not a failure here.
		err = nil
	}
	return n, err
}
