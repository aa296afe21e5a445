package transport

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pharox/pharox"
)

// deliver hands the attempt's response to the caller with a body that
// holds the lease until it is read to its end or closed.
func (t *Transport) deliver(ctx context.Context, a *attempt, pool string, opts *pharox.AcquireOptions) *http.Response {
	d := opts.Duration
	if d == 0 {
		d = pharox.DefaultLeaseDuration
	}
	// One allocation for the body and its lease.
	body := &leasedBody{heldLease: heldLease{t: t, reqCtx: ctx, ctx: context.WithoutCancel(ctx), lease: a.lease, m: a.m, pt: a.pt, pool: pool, d: d}}
	h := &body.heldLease
	if a.outcome.Kind == pharox.OutcomeSuccess {
		// Reported when the body ends, which may still turn it into a
		// failure; failures and bans were reported already.
		h.outcome = a.outcome
	}
	resp := a.resp
	if resp.Body == nil || resp.Body == http.NoBody {
		h.finish()
		return resp
	}
	h.mu.Lock()
	h.expires = time.Now().Add(d)
	h.timer = time.AfterFunc(d/3, h.tick)
	h.mu.Unlock()
	body.rc = resp.Body
	if rwc, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		// An upgraded connection (WebSocket) stays writable.
		resp.Body = &leasedRWC{leasedBody: body, w: rwc}
		return resp
	}
	resp.Body = body
	return resp
}

// heldLease is the lease behind a response body: renewed while the body
// is read, reported and released once when it ends.
type heldLease struct {
	t      *Transport
	reqCtx context.Context // the request's, to tell a caller's cancel from a broken body
	ctx    context.Context // the request's without its cancellation
	lease  *pharox.Lease
	m      *meter // nil without metering
	pt     *proxyTransport
	pool   string
	d      time.Duration // lease duration, renewed to

	reads   atomic.Int64 // Read calls returned
	reading atomic.Int32 // Read calls in progress
	closing atomic.Bool  // the caller closed the body: reads fail for that

	mu      sync.Mutex
	done    bool
	outcome pharox.Outcome // to report when the body ends
	timer   *time.Timer
	expires time.Time
	seen    int64 // reads at the last tick
}

// tick renews the lease if the body was read since the last tick (or a
// read is waiting for data); a body nobody reads lets its lease expire.
func (h *heldLease) tick() {
	h.mu.Lock()
	if h.done {
		h.mu.Unlock()
		return
	}
	reads := h.reads.Load()
	active := reads != h.seen || h.reading.Load() > 0
	h.seen = reads
	lapsed := !active && time.Now().After(h.expires)
	h.mu.Unlock()
	if lapsed {
		return
	}
	if active {
		err := h.t.leaser.Renew(h.ctx, h.lease, h.d)
		if err != nil {
			h.t.log.Warn("transport: renew lease failed", "lease", h.lease.ID, "err", err)
			if errors.Is(err, pharox.ErrLeaseNotActive) || errors.Is(err, pharox.ErrLeaseNotFound) {
				return
			}
		}
		if err == nil {
			h.mu.Lock()
			h.expires = time.Now().Add(h.d)
			h.mu.Unlock()
		}
	}
	h.mu.Lock()
	if !h.done {
		h.timer.Reset(h.d / 3)
	}
	h.mu.Unlock()
}

// broke notes that reading the body failed through the proxy.
func (h *heldLease) broke(err error) {
	if h.closing.Load() || h.reqCtx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.done {
		h.outcome = pharox.Outcome{Kind: pharox.OutcomeFailure, StatusCode: h.outcome.StatusCode, Latency: h.outcome.Latency,
			Reason: scrub("response body broke: "+err.Error(), h.lease.Proxy)}
	}
}

// finish reports the outcome and releases the lease, once.
func (h *heldLease) finish() {
	h.mu.Lock()
	if h.done {
		h.mu.Unlock()
		return
	}
	h.done = true
	if h.timer != nil {
		h.timer.Stop()
	}
	o := h.outcome
	h.mu.Unlock()
	switch o.Kind {
	case pharox.OutcomeSuccess:
		h.t.reportSuccess(h.ctx, h.lease, o)
	case pharox.OutcomeFailure:
		h.t.report(h.ctx, h.lease, o)
	}
	h.t.release(h.ctx, h.lease, h.m)
	if h.pt != nil && h.pt.retired.Load() {
		// The proxy's transport left the cache while this body was read:
		// close the connection it returns to it.
		h.pt.tr.CloseIdleConnections()
	}
}

// leasedBody is a response body that holds its lease.
type leasedBody struct {
	rc io.ReadCloser
	heldLease
}

func (b *leasedBody) Read(p []byte) (int, error) {
	b.reading.Add(1)
	n, err := b.rc.Read(p)
	b.reading.Add(-1)
	b.reads.Add(1)
	if n > 0 && b.m != nil && b.m.shared.Load() {
		// HTTP/2: the connection is not this request's alone.
		b.m.bodyReceived.Add(int64(n))
	}
	if err != nil {
		if err == io.EOF {
			b.finish()
		} else {
			b.broke(err)
		}
	}
	return n, err
}

// Close closes the body and gives the lease back, whether or not the body
// was read.
func (b *leasedBody) Close() error {
	b.closing.Store(true)
	err := b.rc.Close()
	b.finish()
	return err
}

// leasedRWC keeps a 101 Switching Protocols body writable.
type leasedRWC struct {
	*leasedBody
	w io.Writer
}

func (b *leasedRWC) Write(p []byte) (int, error) { return b.w.Write(p) }
