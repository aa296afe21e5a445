package transport

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/client"
)

// Leaser is where a Transport takes its proxies from: a [pharox.Manager]
// in this process ([Local]) or a remote `pharox serve` through the Go
// client ([Remote]). The Transport depends only on this interface, so a
// test or another lease source can stand in.
type Leaser interface {
	// Acquire leases a proxy from the named pool. With wait > 0 it waits up
	// to that long for a free slot. A miss wraps pharox.ErrNoProxyAvailable.
	// The lease must carry its Proxy with credentials.
	Acquire(ctx context.Context, pool string, opts *pharox.AcquireOptions, wait time.Duration) (*pharox.Lease, error)
	// Release ends the lease. usage is the traffic it carried, as the
	// Transport metered it, or nil when metering is off (WithoutMetering):
	// the lease source then records none.
	Release(ctx context.Context, lease *pharox.Lease, usage *pharox.Usage) error
	// Renew moves the lease's expiry to d from now.
	Renew(ctx context.Context, lease *pharox.Lease, d time.Duration) error
	// ReportOutcome feeds how a request through the lease went into the
	// proxy's health and returns the proxy as it is afterwards.
	ReportOutcome(ctx context.Context, lease *pharox.Lease, o pharox.Outcome) (*pharox.Proxy, error)
}

// leaseCallTimeout bounds a remote release, renewal or report.
const leaseCallTimeout = 10 * time.Second

// Local returns a Leaser over a Manager in this process.
func Local(m *pharox.Manager) Leaser { return localLeaser{m: m} }

type localLeaser struct{ m *pharox.Manager }

func (l localLeaser) Acquire(ctx context.Context, pool string, opts *pharox.AcquireOptions, wait time.Duration) (*pharox.Lease, error) {
	lease, err := l.m.Acquire(ctx, pool, opts)
	if wait <= 0 || !(errors.Is(err, pharox.ErrNoProxyAvailable) || quotaWaitable(err)) {
		// Most acquisitions find a free proxy at once: they need no timer.
		return lease, err
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return l.m.AcquireWait(wctx, pool, opts)
}

func (l localLeaser) Release(ctx context.Context, lease *pharox.Lease, usage *pharox.Usage) error {
	var err error
	if usage != nil {
		_, err = l.m.ReleaseWithUsage(ctx, lease.ID, *usage)
	} else {
		_, err = l.m.Release(ctx, lease.ID)
	}
	return err
}

func (l localLeaser) Renew(ctx context.Context, lease *pharox.Lease, d time.Duration) error {
	_, err := l.m.Renew(ctx, lease.ID, d)
	return err
}

func (l localLeaser) ReportOutcome(ctx context.Context, lease *pharox.Lease, o pharox.Outcome) (*pharox.Proxy, error) {
	return l.m.ReportOutcome(ctx, lease, o)
}

// quotaWaitable reports whether err is a quota refusal that a wait can
// see end within seconds, which Manager.AcquireWait waits out: a full
// concurrency cap or an empty request bucket (not a day's or month's
// bytes).
func quotaWaitable(err error) bool {
	qe, ok := errors.AsType[*pharox.QuotaError](err)
	return ok && (qe.Limit == pharox.LimitMaxConcurrentLeases || qe.Limit == pharox.LimitRequestsPerMinute)
}

// Remote returns a Leaser over a pharox service. The service bounds how
// long one acquisition may wait; a longer wait is made of several. Filters
// with a Predicate cannot cross the wire: acquisitions with one fail with
// pharox.ErrUnsupported (the Transport then avoids proxies another way).
func Remote(c *client.Client) Leaser { return remoteLeaser{c: c} }

type remoteLeaser struct{ c *client.Client }

// remoteRetryPause spaces out acquisitions when the service answered a
// miss before the wait ran out (it caps the wait of one call).
const remoteRetryPause = 50 * time.Millisecond

func (r remoteLeaser) Acquire(ctx context.Context, pool string, opts *pharox.AcquireOptions, wait time.Duration) (*pharox.Lease, error) {
	req, err := client.NewAcquireRequest(pool, opts)
	if err != nil {
		return nil, err
	}
	until := time.Now().Add(wait)
	for {
		req.WaitSeconds = 0
		if left := time.Until(until); left > 0 {
			req.WaitSeconds = left.Seconds()
		}
		l, err := r.c.Acquire(ctx, req)
		if err == nil {
			if l.Proxy == nil {
				// A lease without its proxy cannot be used; give it back.
				r.giveBack(ctx, l.ID)
				return nil, fmt.Errorf("transport: lease %s came without its proxy", l.ID)
			}
			return l, nil
		}
		left := time.Until(until)
		if !errors.Is(err, pharox.ErrNoProxyAvailable) || left <= 0 {
			return nil, err
		}
		pause := time.NewTimer(min(left, remoteRetryPause))
		select {
		case <-ctx.Done():
			pause.Stop()
			return nil, fmt.Errorf("%w: %w", err, ctx.Err())
		case <-pause.C:
		}
	}
}

func (r remoteLeaser) giveBack(ctx context.Context, id uuid.UUID) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaseCallTimeout)
	defer cancel()
	_, _ = r.c.Release(rctx, id)
}

func (r remoteLeaser) Release(ctx context.Context, lease *pharox.Lease, usage *pharox.Usage) error {
	ctx, cancel := context.WithTimeout(ctx, leaseCallTimeout)
	defer cancel()
	var err error
	if usage != nil {
		_, err = r.c.ReleaseWithUsage(ctx, lease.ID, *usage)
	} else {
		_, err = r.c.Release(ctx, lease.ID)
	}
	return err
}

func (r remoteLeaser) Renew(ctx context.Context, lease *pharox.Lease, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, leaseCallTimeout)
	defer cancel()
	_, err := r.c.Renew(ctx, lease.ID, d)
	return err
}

func (r remoteLeaser) ReportOutcome(ctx context.Context, lease *pharox.Lease, o pharox.Outcome) (*pharox.Proxy, error) {
	ctx, cancel := context.WithTimeout(ctx, leaseCallTimeout)
	defer cancel()
	return r.c.ReportOutcome(ctx, lease.ID, o)
}
