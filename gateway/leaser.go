package gateway

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/client"
)

// Leaser is where the gateway takes its upstream proxies from: a
// [pharox.Manager] in this process ([NewLocalLeaser]) or a remote
// `pharox serve` through the Go client ([NewRemoteLeaser]). The gateway
// depends only on this interface.
type Leaser interface {
	// Acquire leases a proxy from the named pool. With wait > 0 it waits
	// up to that long for a free slot. A miss wraps pharox.ErrNoProxyAvailable.
	// The lease must carry its Proxy with credentials.
	Acquire(ctx context.Context, pool string, opts *pharox.AcquireOptions, wait time.Duration) (*pharox.Lease, error)
	// Release ends the lease. usage is the traffic it carried, as the
	// gateway metered it, or nil when metering is off
	// (Config.DisableMetering): the lease source then records none.
	Release(ctx context.Context, id uuid.UUID, usage *pharox.Usage) error
	// Renew moves the lease's expiry to d from now.
	Renew(ctx context.Context, id uuid.UUID, d time.Duration) error
	// ReportOutcome feeds how a request through the lease went back into
	// the proxy's health.
	ReportOutcome(ctx context.Context, lease *pharox.Lease, o pharox.Outcome) error
}

// PoolLookup is implemented by Leasers that can look pools up; both
// built-in ones do. The gateway uses it to route by pool id ("poolid-..."
// in the user name) and to check its configuration ([Gateway.Check]).
type PoolLookup interface {
	// PoolByName returns the pool with this name (ErrPoolNotFound).
	PoolByName(ctx context.Context, name string) (*pharox.Pool, error)
	// PoolByID returns the pool with this id (ErrPoolNotFound).
	PoolByID(ctx context.Context, id uuid.UUID) (*pharox.Pool, error)
}

// NewLocalLeaser returns a Leaser over a Manager in this process.
func NewLocalLeaser(m *pharox.Manager) Leaser { return localLeaser{m: m} }

type localLeaser struct{ m *pharox.Manager }

func (l localLeaser) Acquire(ctx context.Context, pool string, opts *pharox.AcquireOptions, wait time.Duration) (*pharox.Lease, error) {
	if wait <= 0 {
		return l.m.Acquire(ctx, pool, opts)
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return l.m.AcquireWait(wctx, pool, opts)
}

func (l localLeaser) Release(ctx context.Context, id uuid.UUID, usage *pharox.Usage) error {
	var err error
	if usage != nil {
		_, err = l.m.ReleaseWithUsage(ctx, id, *usage)
	} else {
		_, err = l.m.Release(ctx, id)
	}
	return err
}

func (l localLeaser) Renew(ctx context.Context, id uuid.UUID, d time.Duration) error {
	_, err := l.m.Renew(ctx, id, d)
	return err
}

func (l localLeaser) ReportOutcome(ctx context.Context, lease *pharox.Lease, o pharox.Outcome) error {
	_, err := l.m.ReportOutcome(ctx, lease, o)
	return err
}

func (l localLeaser) PoolByName(ctx context.Context, name string) (*pharox.Pool, error) {
	return l.m.Storage().GetPoolByName(ctx, name)
}

func (l localLeaser) PoolByID(ctx context.Context, id uuid.UUID) (*pharox.Pool, error) {
	return l.m.Storage().GetPool(ctx, id)
}

// NewRemoteLeaser returns a Leaser over a pharox service. Acquisitions with
// a filter Predicate fail with pharox.ErrUnsupported (the gateway then
// falls back to choosing without one).
func NewRemoteLeaser(c *client.Client) Leaser { return remoteLeaser{c: c} }

type remoteLeaser struct{ c *client.Client }

func (r remoteLeaser) Acquire(ctx context.Context, pool string, opts *pharox.AcquireOptions, wait time.Duration) (*pharox.Lease, error) {
	req, err := client.NewAcquireRequest(pool, opts)
	if err != nil {
		return nil, err
	}
	if wait > 0 {
		req.WaitSeconds = wait.Seconds()
	}
	l, err := r.c.Acquire(ctx, req)
	if err != nil {
		return nil, err
	}
	if l.Proxy == nil {
		// The gateway cannot dial a lease without its proxy; give it back.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		_, _ = r.c.Release(rctx, l.ID)
		return nil, fmt.Errorf("gateway: lease %s came without its proxy", l.ID)
	}
	return l, nil
}

func (r remoteLeaser) Release(ctx context.Context, id uuid.UUID, usage *pharox.Usage) error {
	var err error
	if usage != nil {
		_, err = r.c.ReleaseWithUsage(ctx, id, *usage)
	} else {
		_, err = r.c.Release(ctx, id)
	}
	return err
}

func (r remoteLeaser) Renew(ctx context.Context, id uuid.UUID, d time.Duration) error {
	_, err := r.c.Renew(ctx, id, d)
	return err
}

func (r remoteLeaser) ReportOutcome(ctx context.Context, lease *pharox.Lease, o pharox.Outcome) error {
	_, err := r.c.ReportOutcome(ctx, lease.ID, o)
	return err
}

func (r remoteLeaser) PoolByName(ctx context.Context, name string) (*pharox.Pool, error) {
	return r.c.GetPoolByName(ctx, name)
}

func (r remoteLeaser) PoolByID(ctx context.Context, id uuid.UUID) (*pharox.Pool, error) {
	return r.c.GetPool(ctx, id)
}
