package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

func poolPath(id uuid.UUID) string { return "/v1/pools/" + id.String() }

// CreatePool creates a pool (ErrAlreadyExists when the name is taken).
func (c *Client) CreatePool(ctx context.Context, name, description string) (*pharox.Pool, error) {
	var out api.Pool
	_, err := c.do(ctx, call{method: http.MethodPost, path: "/v1/pools/", mode: retryUnsent,
		body: api.CreatePoolRequest{Name: name, Description: description}, out: &out})
	if err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// ListPools returns every pool, ordered by name.
func (c *Client) ListPools(ctx context.Context) ([]*pharox.Pool, error) {
	var out []api.Pool
	if _, err := c.do(ctx, call{method: http.MethodGet, path: "/v1/pools/", out: &out}); err != nil {
		return nil, err
	}
	pools := make([]*pharox.Pool, len(out))
	for i := range out {
		pools[i] = out[i].Model()
	}
	return pools, nil
}

// GetPool returns a pool by id (ErrPoolNotFound).
func (c *Client) GetPool(ctx context.Context, id uuid.UUID) (*pharox.Pool, error) {
	var out api.Pool
	if _, err := c.do(ctx, call{method: http.MethodGet, path: poolPath(id), out: &out, notFound: pharox.ErrPoolNotFound}); err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// GetPoolByName returns the pool with this name (ErrPoolNotFound). The
// service has no lookup by name, so it lists the pools.
func (c *Client) GetPoolByName(ctx context.Context, name string) (*pharox.Pool, error) {
	pools, err := c.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range pools {
		if p.Name == name {
			return p, nil
		}
	}
	return nil, fmt.Errorf("client: pool %q: %w", name, pharox.ErrPoolNotFound)
}

// DeletePool deletes a pool with its proxies (ErrPoolNotFound; ErrInUse
// while it has active leases).
func (c *Client) DeletePool(ctx context.Context, id uuid.UUID) error {
	_, err := c.do(ctx, call{method: http.MethodDelete, path: poolPath(id), mode: retryUnsent, notFound: pharox.ErrPoolNotFound})
	return err
}

// PoolStats returns a pool's occupancy (ErrPoolNotFound).
func (c *Client) PoolStats(ctx context.Context, poolID uuid.UUID) (*pharox.PoolStats, error) {
	var out api.PoolStats
	if _, err := c.do(ctx, call{method: http.MethodGet, path: poolPath(poolID) + "/stats", out: &out, notFound: pharox.ErrPoolNotFound}); err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// Sweep probes every proxy of the pool now (ErrPoolNotFound;
// ErrUnsupported when the server has no health checker). It is not
// retried: a sweep is slow and a second one would probe everything again.
func (c *Client) Sweep(ctx context.Context, poolID uuid.UUID, req api.SweepRequest) (*api.SweepResult, error) {
	var out api.SweepResult
	if _, err := c.do(ctx, call{method: http.MethodPost, path: poolPath(poolID) + "/health-check", body: req,
		out: &out, mode: retryUnsent, notFound: pharox.ErrPoolNotFound}); err != nil {
		return nil, err
	}
	return &out, nil
}

// PoolTargets returns the per-site health of a pool: for each site any of
// its proxies has a record for, how many proxies are usable for it, how
// many cool down for it, and how many started a cool-down in the last
// hour, ordered by site (ErrPoolNotFound; ErrUnsupported when the
// server's store keeps no per-site health).
func (c *Client) PoolTargets(ctx context.Context, poolID uuid.UUID) ([]*pharox.TargetStats, error) {
	var out []api.TargetStats
	if _, err := c.do(ctx, call{method: http.MethodGet, path: poolPath(poolID) + "/targets", out: &out, notFound: pharox.ErrPoolNotFound}); err != nil {
		return nil, err
	}
	stats := make([]*pharox.TargetStats, len(out))
	for i := range out {
		stats[i] = out[i].Model()
	}
	return stats, nil
}

// ProxyTargets returns a proxy's health per site, ordered by site
// (ErrProxyNotFound; ErrUnsupported as for PoolTargets).
func (c *Client) ProxyTargets(ctx context.Context, poolID, proxyID uuid.UUID) ([]*pharox.TargetState, error) {
	var out []api.TargetState
	if _, err := c.do(ctx, call{method: http.MethodGet, path: poolPath(poolID) + "/proxies/" + proxyID.String() + "/targets",
		out: &out, notFound: pharox.ErrProxyNotFound}); err != nil {
		return nil, err
	}
	states := make([]*pharox.TargetState, len(out))
	for i := range out {
		states[i] = out[i].Model()
	}
	return states, nil
}

// CreateProxy adds one proxy to a pool and returns the stored copy.
func (c *Client) CreateProxy(ctx context.Context, poolID uuid.UUID, p *pharox.Proxy) (*pharox.Proxy, error) {
	var out api.Proxy
	if _, err := c.do(ctx, call{method: http.MethodPost, path: poolPath(poolID) + "/proxies/", mode: retryUnsent,
		body: api.FromProxyModel(p), out: &out, notFound: pharox.ErrPoolNotFound}); err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// ImportProxies adds proxies to a pool, all or none: if any is invalid
// (ErrInvalidArgument) or a duplicate (ErrAlreadyExists), nothing is
// stored. The answer does not carry the passwords back.
func (c *Client) ImportProxies(ctx context.Context, poolID uuid.UUID, proxies []pharox.Proxy) ([]*pharox.Proxy, error) {
	if len(proxies) == 0 {
		return nil, nil
	}
	req := api.ImportProxiesRequest{Proxies: make([]api.CreateProxyRequest, len(proxies))}
	for i := range proxies {
		req.Proxies[i] = api.FromProxyModel(&proxies[i])
	}
	var out api.ImportProxiesResponse
	if _, err := c.do(ctx, call{method: http.MethodPost, path: poolPath(poolID) + "/proxies/import", mode: retryUnsent,
		body: req, out: &out, notFound: pharox.ErrPoolNotFound}); err != nil {
		return nil, err
	}
	return api.ProxyModels(out.Proxies), nil
}

// ListProxies returns a pool's proxies ordered by id, without passwords.
func (c *Client) ListProxies(ctx context.Context, poolID uuid.UUID) ([]*pharox.Proxy, error) {
	return c.listProxies(ctx, poolID, false)
}

// ListProxiesWithSecrets is ListProxies with passwords, for admins that
// export a pool.
func (c *Client) ListProxiesWithSecrets(ctx context.Context, poolID uuid.UUID) ([]*pharox.Proxy, error) {
	return c.listProxies(ctx, poolID, true)
}

func (c *Client) listProxies(ctx context.Context, poolID uuid.UUID, secrets bool) ([]*pharox.Proxy, error) {
	var q url.Values
	if secrets {
		q = url.Values{"include_secrets": {"true"}}
	}
	var out []api.Proxy
	if _, err := c.do(ctx, call{method: http.MethodGet, path: poolPath(poolID) + "/proxies/", query: q,
		out: &out, notFound: pharox.ErrPoolNotFound}); err != nil {
		return nil, err
	}
	return api.ProxyModels(out), nil
}

// GetProxy returns one proxy of a pool, without its password
// (ErrProxyNotFound).
func (c *Client) GetProxy(ctx context.Context, poolID, proxyID uuid.UUID) (*pharox.Proxy, error) {
	var out api.Proxy
	if _, err := c.do(ctx, call{method: http.MethodGet, path: poolPath(poolID) + "/proxies/" + proxyID.String(),
		out: &out, notFound: pharox.ErrProxyNotFound}); err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// SetProxyStatus sets a proxy's status by hand (ErrProxyNotFound). Setting
// a status is idempotent, so it is retried like a read.
func (c *Client) SetProxyStatus(ctx context.Context, poolID, proxyID uuid.UUID, status pharox.ProxyStatus) (*pharox.Proxy, error) {
	var out api.Proxy
	if _, err := c.do(ctx, call{method: http.MethodPatch, path: poolPath(poolID) + "/proxies/" + proxyID.String(),
		body: api.UpdateProxyRequest{Status: string(status)}, out: &out, notFound: pharox.ErrProxyNotFound}); err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// DeleteProxy deletes a proxy (ErrProxyNotFound; ErrInUse while leased).
func (c *Client) DeleteProxy(ctx context.Context, poolID, proxyID uuid.UUID) error {
	_, err := c.do(ctx, call{method: http.MethodDelete, path: poolPath(poolID) + "/proxies/" + proxyID.String(),
		mode: retryUnsent, notFound: pharox.ErrProxyNotFound})
	return err
}

// EnsureConsumer returns the consumer with this name, creating it if
// needed. It is idempotent by name, so it is retried like a read.
func (c *Client) EnsureConsumer(ctx context.Context, name string) (*pharox.Consumer, error) {
	var out api.Consumer
	if _, err := c.do(ctx, call{method: http.MethodPost, path: "/v1/consumers/",
		body: api.CreateConsumerRequest{Name: name}, out: &out}); err != nil {
		return nil, err
	}
	return &pharox.Consumer{ID: out.ID, Name: out.Name}, nil
}

// ListConsumers returns the registered consumers.
func (c *Client) ListConsumers(ctx context.Context) ([]*pharox.Consumer, error) {
	var out []api.Consumer
	if _, err := c.do(ctx, call{method: http.MethodGet, path: "/v1/consumers/", out: &out}); err != nil {
		return nil, err
	}
	consumers := make([]*pharox.Consumer, len(out))
	for i, co := range out {
		consumers[i] = &pharox.Consumer{ID: co.ID, Name: co.Name}
	}
	return consumers, nil
}

// NewAcquireRequest builds the wire request for leasing from the pool
// named pool with opts (nil for defaults). It fails with ErrUnsupported
// when the filters carry a Go predicate, which cannot cross the wire.
func NewAcquireRequest(pool string, opts *pharox.AcquireOptions) (api.AcquireRequest, error) {
	req := api.AcquireRequest{PoolName: pool}
	if opts == nil {
		return req, nil
	}
	if opts.Filters.HasPredicate() {
		return req, fmt.Errorf("client: %w: a filter predicate runs only in-process", pharox.ErrUnsupported)
	}
	req.ConsumerName = opts.Consumer
	req.Strategy = string(opts.Strategy)
	req.SessionKey = opts.SessionKey
	req.Target = opts.Target
	if !opts.Filters.IsZero() {
		f := *opts.Filters
		req.Filters = &f
	}
	if opts.Duration != 0 {
		s := opts.Duration.Seconds()
		req.TTLSeconds = &s
	}
	if opts.SessionTTL != 0 {
		s := opts.SessionTTL.Seconds()
		req.SessionTTLSeconds = &s
	}
	return req, nil
}

// Acquire leases a proxy. The lease carries the proxy with its credentials,
// so lease.Proxy.URL() is ready to use. A miss is an error wrapping
// pharox.ErrNoProxyAvailable; with req.WaitSeconds the server first waits
// that long for a slot (keep ctx's deadline longer than the wait).
//
// Each call sends a new random Idempotency-Key, the same on each of its
// attempts, so that it may be retried after a 503 or a lost answer without
// taking a second slot, once the server has shown it honours keys (see the
// package documentation); until then it is retried only when the request
// certainly did not reach the server.
func (c *Client) Acquire(ctx context.Context, req api.AcquireRequest) (*pharox.Lease, error) {
	return c.AcquireWithKey(ctx, uuid.NewString(), req)
}

// AcquireWithKey is Acquire with the caller's idempotency key: acquiring
// again with the same key (and consumer) returns the same lease, as it is
// now, for as long as the server keeps the lease record, even from another
// process. Keys are 1 to 255 printable ASCII characters, no spaces.
func (c *Client) AcquireWithKey(ctx context.Context, key string, req api.AcquireRequest) (*pharox.Lease, error) {
	if req.Filters.HasPredicate() {
		return nil, fmt.Errorf("client: %w: a filter predicate runs only in-process", pharox.ErrUnsupported)
	}
	if key == "" {
		return nil, fmt.Errorf("client: %w: the idempotency key is empty", pharox.ErrInvalidArgument)
	}
	var out api.Lease
	if _, err := c.do(ctx, call{method: http.MethodPost, path: "/v1/leases/", body: req, out: &out,
		mode: retryUnsent, notFound: pharox.ErrPoolNotFound, idempotencyKey: key}); err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// GetLease returns a lease (ErrLeaseNotFound).
func (c *Client) GetLease(ctx context.Context, id uuid.UUID) (*pharox.Lease, error) {
	var out api.Lease
	if _, err := c.do(ctx, call{method: http.MethodGet, path: "/v1/leases/" + id.String(), out: &out,
		notFound: pharox.ErrLeaseNotFound}); err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// Release ends a lease and frees its slot, and returns the lease as it
// ended. Like the Python SDK and the service, it is idempotent: a lease
// that already ended (released, or expired) is returned as it ended, with
// a nil error, and nothing is freed; only an unknown lease is an error
// (ErrLeaseNotFound). Use GetLease first to tell whether this call ended
// it. (pharox.Manager.Release, in-process, keeps ErrLeaseNotActive.)
//
// Release is retried on transient failures.
func (c *Client) Release(ctx context.Context, id uuid.UUID) (*pharox.Lease, error) {
	return c.release(ctx, id, api.ReleaseRequest{})
}

// ReleaseWithUsage is Release reporting the traffic the lease carried (see
// [pharox.Manager.ReleaseWithUsage]). The server counts it once: a release
// retried after it acted returns the ended lease and counts nothing again.
func (c *Client) ReleaseWithUsage(ctx context.Context, id uuid.UUID, usage pharox.Usage) (*pharox.Lease, error) {
	if err := usage.Validate(); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return c.release(ctx, id, api.ReleaseRequest{Usage: &usage})
}

func (c *Client) release(ctx context.Context, id uuid.UUID, body api.ReleaseRequest) (*pharox.Lease, error) {
	var out api.Lease
	_, err := c.do(ctx, call{method: http.MethodPost, path: "/v1/leases/" + id.String() + "/release",
		body: body, out: &out, notFound: pharox.ErrLeaseNotFound})
	if errors.Is(err, pharox.ErrLeaseNotActive) {
		// Servers from before releases were idempotent answer 409 for an
		// ended lease (also when a retried release had already acted):
		// answer as current ones do.
		if l, gerr := c.GetLease(ctx, id); gerr == nil && l.Status != pharox.LeaseActive {
			return l, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// Renew moves an active lease's expiry to d from now (ErrLeaseNotFound;
// ErrLeaseNotActive). Renewing sets an absolute expiry, so a retry does no
// harm and it is retried like a read.
func (c *Client) Renew(ctx context.Context, id uuid.UUID, d time.Duration) (*pharox.Lease, error) {
	if d <= 0 {
		return nil, fmt.Errorf("client: %w: renew duration must be positive, got %v", pharox.ErrInvalidArgument, d)
	}
	var out api.Lease
	if _, err := c.do(ctx, call{method: http.MethodPost, path: "/v1/leases/" + id.String() + "/renew",
		body: api.RenewRequest{TTLSeconds: d.Seconds()}, out: &out, notFound: pharox.ErrLeaseNotFound}); err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// ReportOutcome reports how a request through the leased proxy went and
// returns the proxy with its updated health. Outcomes count failures, so
// a report is not retried once it may have reached the server.
func (c *Client) ReportOutcome(ctx context.Context, leaseID uuid.UUID, o pharox.Outcome) (*pharox.Proxy, error) {
	req := api.OutcomeRequest{Kind: string(o.Kind), StatusCode: o.StatusCode, Reason: o.Reason, Target: o.Target,
		LatencyMS: float64(o.Latency) / float64(time.Millisecond)}
	var out api.Proxy
	if _, err := c.do(ctx, call{method: http.MethodPost, path: "/v1/leases/" + leaseID.String() + "/outcome",
		body: req, out: &out, mode: retryUnsent, notFound: pharox.ErrLeaseNotFound}); err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// ListLeases returns the leases matching q, oldest first. The server caps
// an unlimited query at its default page size.
func (c *Client) ListLeases(ctx context.Context, q pharox.LeaseQuery) ([]*pharox.Lease, error) {
	v := url.Values{}
	if q.PoolID != uuid.Nil {
		v.Set("pool_id", q.PoolID.String())
	}
	if q.ProxyID != uuid.Nil {
		v.Set("proxy_id", q.ProxyID.String())
	}
	if q.ConsumerID != uuid.Nil {
		v.Set("consumer_id", q.ConsumerID.String())
	}
	if q.Status != "" {
		v.Set("status", string(q.Status))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var out []api.Lease
	if _, err := c.do(ctx, call{method: http.MethodGet, path: "/v1/leases/", query: v, out: &out,
		notFound: pharox.ErrPoolNotFound}); err != nil {
		return nil, err
	}
	leases := make([]*pharox.Lease, len(out))
	for i := range out {
		leases[i] = out[i].Model()
	}
	return leases, nil
}

// WithLease acquires a lease, runs fn with it and always releases it: on
// success, on error and on panic (the panic then continues). The release
// runs even when ctx was cancelled, bounded by ReleaseTimeout. A failed
// release is joined to fn's error; after a panic it is lost with the panic.
func (c *Client) WithLease(ctx context.Context, req api.AcquireRequest, fn func(context.Context, *pharox.Lease) error) (err error) {
	lease, err := c.Acquire(ctx, req)
	if err != nil {
		return err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ReleaseTimeout)
		_, relErr := c.Release(rctx, lease.ID)
		cancel()
		if p := recover(); p != nil {
			panic(p)
		}
		if relErr != nil {
			err = errors.Join(err, fmt.Errorf("client: release lease %s: %w", lease.ID, relErr))
		}
	}()
	return fn(ctx, lease)
}
