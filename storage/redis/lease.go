package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	goredis "github.com/redis/go-redis/v9"
)

// EnsureConsumer returns the named consumer, creating it if needed.
func (s *Store) EnsureConsumer(ctx context.Context, name string) (*pharox.Consumer, error) {
	if strings.TrimSpace(name) == "" || len(name) > 200 || strings.ContainsAny(name, "\x00\r\n") {
		return nil, fmt.Errorf("redis: ensure consumer: %w: consumer name %q is empty, too long or has control characters", pharox.ErrInvalidArgument, name)
	}
	v, err := s.run(ctx, scriptConsumer, name, uuid.New().String())
	if err != nil {
		return nil, wrap(err, "ensure consumer %q", name)
	}
	str, _ := v.(string)
	c, err := decodeConsumer(name, str)
	if err != nil {
		return nil, fmt.Errorf("redis: ensure consumer %q: %w", name, err)
	}
	s.consumers.Store(c.ID, struct{}{})
	return c, nil
}

// AcquireLease atomically chooses a proxy and leases one of its slots.
// Concurrent requests without a session key for the same pool, strategy,
// filter and target are served together by one script (see doc.go,
// Batching). With a target, proxies cooling down for it are skipped inside
// the same script (see doc.go, Targets).
func (s *Store) AcquireLease(ctx context.Context, req pharox.AcquireRequest) (*pharox.Lease, error) {
	if err := req.Validate(); err != nil {
		return nil, fmt.Errorf("redis: acquire: %w", err)
	}
	sp, err := compileFilters(req.Filters)
	if err != nil {
		return nil, fmt.Errorf("redis: acquire from pool %q: %w", req.PoolName, err)
	}
	if s.acquires == nil || req.SessionKey != "" {
		return s.acquireOne(ctx, req, sp)
	}
	// A caller that has already gone must not start a batch: its lease
	// would be taken only to be released again.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("redis: acquire from pool %q: %w", req.PoolName, err)
	}
	l, err := s.acquires.Do(ctx, acquireKey{pool: req.PoolName, strategy: string(req.Strategy), spec: sp, target: req.Target}, req)
	if err != nil && err == ctx.Err() {
		return nil, fmt.Errorf("redis: acquire from pool %q: %w", req.PoolName, err)
	}
	return l, err
}

// acquireOne runs acquire.lua for one request; sp is its compiled filter.
func (s *Store) acquireOne(ctx context.Context, req pharox.AcquireRequest, sp string) (*pharox.Lease, error) {
	id := leaseIDOf(req)
	known := s.consumerKnown(req.ConsumerID)
	v, err := s.run(ctx, scriptAcquire, "acquire", req.PoolName, req.ConsumerID.String(), "",
		id.String(), req.Duration.Microseconds(), string(req.Strategy), req.SessionKey,
		req.SessionTTL.Microseconds(), sp, rand.Int64N(1<<50), known, s.poolHint(req.PoolName),
		encodeWho(req.ConsumerID, req.Target, req.ConsumerName, req.PoolName, req.SessionKey), req.Target)
	if errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("redis: acquire from pool %q: %w", req.PoolName, pharox.ErrNoProxyAvailable)
	}
	if err != nil {
		err = wrap(err, "acquire from pool %q", req.PoolName)
		if errors.Is(err, pharox.ErrPoolNotFound) {
			s.poolIDs.Delete(req.PoolName)
		}
		return nil, err
	}
	arr, ok := v.([]any)
	if ok && len(arr) == 3 {
		return s.leaseAgain(req, id, arr)
	}
	if !ok || len(arr) != 6 {
		return nil, fmt.Errorf("redis: acquire from pool %q: unexpected reply", req.PoolName)
	}
	str := func(i int) string { x, _ := arr[i].(string); return x }
	cur, _ := arr[4].(int64)
	return s.acquiredLease(req, id, known, str(0), str(1), str(2), str(3), cur, arr[5])
}

// leaseIDOf returns the id a new lease for req gets: the caller's LeaseID,
// or a fresh one. Either way it is chosen before the script runs, so that a
// script sent twice (go-redis retries after a timeout or a dropped
// connection) finds the lease its first run made and takes no second slot.
func leaseIDOf(req pharox.AcquireRequest) uuid.UUID {
	if req.LeaseID != uuid.Nil {
		return req.LeaseID
	}
	return uuid.New()
}

// leaseAgain decodes lease_again's reply (see lib.lua): the lease id's
// existing record, the proxy's lease count and DYN fields (nil when the
// proxy is gone).
func (s *Store) leaseAgain(req pharox.AcquireRequest, id uuid.UUID, arr []any) (*pharox.Lease, error) {
	record, _ := arr[0].(string)
	l, err := decodeLease(id.String(), record)
	if err == nil && arr[2] != nil {
		cur, _ := arr[1].(int64)
		l.Proxy, err = s.proxyFromDyn(l.ProxyID.String(), cur, arr[2])
	}
	if err != nil {
		return nil, fmt.Errorf("redis: acquire from pool %q: malformed reply: %v", req.PoolName, err)
	}
	return l, nil
}

// consumerKnown returns "1" when the consumer is known to exist, else "0",
// as acquire.lua and acquire_many.lua take it.
func (s *Store) consumerKnown(id uuid.UUID) string {
	if _, ok := s.consumers.Load(id); ok {
		return "1"
	}
	return "0"
}

// acquiredLease builds the lease id acquired for req from an acquisition
// script's reply: the pool id, acquisition and expiry times, the proxy id,
// its lease count and its DYN fields (see lib.lua); it updates the
// client's caches.
func (s *Store) acquiredLease(req pharox.AcquireRequest, id uuid.UUID, known, pidStr, acq, exp, chosen string, cur int64, dyn any) (*pharox.Lease, error) {
	if known == "0" {
		s.consumers.Store(req.ConsumerID, struct{}{})
	}
	l := &pharox.Lease{
		ID:           id,
		ConsumerID:   req.ConsumerID,
		ConsumerName: req.ConsumerName,
		PoolName:     req.PoolName,
		Status:       pharox.LeaseActive,
		SessionKey:   req.SessionKey,
		Target:       req.Target,
	}
	var errs [4]error
	l.PoolID, errs[0] = uuid.Parse(pidStr)
	l.AcquiredAt, errs[1] = micros(acq)
	l.ExpiresAt, errs[2] = micros(exp)
	l.Proxy, errs[3] = s.proxyFromDyn(chosen, cur, dyn)
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("redis: acquire from pool %q: malformed reply: %v", req.PoolName, err)
	}
	l.ProxyID = l.Proxy.ID
	if pidStr != s.poolHint(req.PoolName) {
		s.poolIDs.Store(req.PoolName, pidStr)
	}
	return l, nil
}

// FindAvailableProxy returns the proxy AcquireLease would choose now.
func (s *Store) FindAvailableProxy(ctx context.Context, pool string, filters *pharox.Filters, strategy pharox.Strategy) (*pharox.Proxy, error) {
	strategy = strategy.OrDefault()
	if !strategy.Valid() {
		return nil, fmt.Errorf("redis: find proxy: %w: unknown strategy %q", pharox.ErrInvalidArgument, strategy)
	}
	sp, err := compileFilters(filters)
	if err != nil {
		return nil, fmt.Errorf("redis: find proxy in pool %q: %w", pool, err)
	}
	v, err := s.run(ctx, scriptAcquire, "find", pool, "", "", "", 0, string(strategy), "", 0, sp, rand.Int64N(1<<50), "1", s.poolHint(pool))
	if errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("redis: find proxy in pool %q: %w", pool, pharox.ErrNoProxyAvailable)
	}
	if err != nil {
		return nil, wrap(err, "find proxy in pool %q", pool)
	}
	m, err := fields(v)
	if err != nil {
		return nil, fmt.Errorf("redis: find proxy in pool %q: %w", pool, err)
	}
	p, err := decodeProxy(m["id"], m)
	if err != nil {
		return nil, fmt.Errorf("redis: find proxy in pool %q: %w", pool, err)
	}
	return p, nil
}

// ReleaseLease ends an active lease as released; a usage report is kept
// on the lease and counted in the same script (see doc.go, Usage and
// quotas). Concurrent releases are served together by one script (see
// doc.go, Batching).
func (s *Store) ReleaseLease(ctx context.Context, leaseID uuid.UUID, usage *pharox.Usage) (*pharox.Lease, error) {
	if usage != nil {
		if err := usage.Validate(); err != nil {
			return nil, fmt.Errorf("redis: release lease %s: %w", leaseID, err)
		}
	}
	if s.releases == nil {
		return s.releaseOne(ctx, releaseReq{leaseID, encodeUsage(usage)})
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("redis: release lease %s: %w", leaseID, err)
	}
	l, err := s.releases.Do(ctx, struct{}{}, releaseReq{leaseID, encodeUsage(usage)})
	if err != nil && err == ctx.Err() {
		return nil, fmt.Errorf("redis: release lease %s: %w", leaseID, err)
	}
	return l, err
}

// releaseReq is one release: the lease id and its usage report as
// release.lua takes it (see encodeUsage).
type releaseReq struct {
	id    uuid.UUID
	usage string
}

// releaseOne runs release.lua for one lease.
func (s *Store) releaseOne(ctx context.Context, r releaseReq) (*pharox.Lease, error) {
	leaseID := r.id
	v, err := s.run(ctx, scriptRelease, leaseID.String(), callToken(), r.usage, s.usageTTL())
	if err != nil {
		return nil, wrap(err, "release lease %s", leaseID)
	}
	l, err := leaseFromReply(leaseID.String(), v)
	if err != nil {
		return nil, fmt.Errorf("redis: release lease %s: %w", leaseID, err)
	}
	return l, nil
}

// callToken returns a fresh token for one script call that must tell its
// own second run (go-redis retries after a timeout or a dropped
// connection) from another call: a release keeps it in the released
// lease's record, so the same call sent again returns the lease it
// released rather than ErrLeaseNotActive, while any other release still
// gets ErrLeaseNotActive; administrative writes keep their reply under it
// for a minute (see once in lib.lua). 64 random bits, as 13 base-36
// digits or fewer.
func callToken() string { return strconv.FormatUint(rand.Uint64(), 36) }

// RenewLease moves an active, unexpired lease's expiry to now + d.
func (s *Store) RenewLease(ctx context.Context, leaseID uuid.UUID, d time.Duration) (*pharox.Lease, error) {
	if d <= 0 {
		return nil, fmt.Errorf("redis: renew lease %s: %w: duration must be positive, got %v", leaseID, pharox.ErrInvalidArgument, d)
	}
	v, err := s.run(ctx, scriptRenew, leaseID.String(), d.Microseconds())
	if err != nil {
		return nil, wrap(err, "renew lease %s", leaseID)
	}
	l, err := leaseFromReply(leaseID.String(), v)
	if err != nil {
		return nil, fmt.Errorf("redis: renew lease %s: %w", leaseID, err)
	}
	return l, nil
}

// CleanupExpiredLeases ends every lease past its expiry, drops dead session
// bindings and forgets ended leases older than the retention, in batches of
// at most cleanupBatch leases per script so acquisitions interleave.
func (s *Store) CleanupExpiredLeases(ctx context.Context) (int, error) {
	retention := int64(0)
	if s.retention > 0 {
		retention = s.retention.Microseconds()
	}
	total := 0
	for {
		v, err := s.run(ctx, scriptCleanup, cleanupBatch, retention)
		if err != nil {
			return total, wrap(err, "cleanup expired leases")
		}
		arr, _ := v.([]any)
		if len(arr) != 2 {
			return total, fmt.Errorf("redis: cleanup expired leases: unexpected reply")
		}
		n, _ := arr[0].(int64)
		more, _ := arr[1].(int64)
		total += int(n)
		if more == 0 {
			return total, nil
		}
	}
}

// GetPoolStats returns the pool's occupancy from counters and set sizes.
func (s *Store) GetPoolStats(ctx context.Context, pool string) (*pharox.PoolStats, error) {
	v, err := s.run(ctx, scriptStats, pool)
	if err != nil {
		return nil, wrap(err, "pool stats %q", pool)
	}
	arr, _ := v.([]any)
	if len(arr) != 5 {
		return nil, fmt.Errorf("redis: pool stats %q: unexpected reply", pool)
	}
	now, _ := arr[0].(string)
	total, _ := arr[1].(int64)
	avail, _ := arr[2].(int64)
	leases, _ := arr[3].(int64)
	cnt, err := fields(arr[4])
	if err != nil {
		return nil, fmt.Errorf("redis: pool stats %q: %w", pool, err)
	}
	st := &pharox.PoolStats{
		PoolName:         pool,
		TotalProxies:     int(total),
		AvailableProxies: int(avail),
		TotalLeases:      int(leases),
		LeasedProxies:    atoi(cnt["leased"]),
		ByStatus:         make(map[pharox.ProxyStatus]int, len(pharox.AllProxyStatuses)),
	}
	for _, ps := range pharox.AllProxyStatuses {
		n := atoi(cnt[string(ps)])
		st.ByStatus[ps] = n
		if ps.Leasable() {
			st.ActiveProxies += n
		}
	}
	if st.CollectedAt, err = micros(now); err != nil {
		return nil, fmt.Errorf("redis: pool stats %q: %w", pool, err)
	}
	return st, nil
}

// ApplyHealthCheckResult applies r atomically (see pharox.Proxy.ApplyHealthCheck).
func (s *Store) ApplyHealthCheckResult(ctx context.Context, r pharox.HealthCheckResult) (*pharox.Proxy, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("redis: apply health result: %w", err)
	}
	checked := r.CheckedAt.UTC().Truncate(time.Microsecond)
	v, err := s.run(ctx, scriptHealth, r.ProxyID.String(), string(r.Status),
		strconv.FormatInt(checked.UnixMicro(), 10), r.Latency.Milliseconds(), r.StatusCode, r.Error, r.FailureThreshold)
	if errors.Is(err, goredis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, wrap(err, "apply health result to proxy %s", r.ProxyID)
	}
	p, err := proxyFromReply(r.ProxyID.String(), v)
	if err != nil {
		return nil, fmt.Errorf("redis: apply health result to proxy %s: %w", r.ProxyID, err)
	}
	return p, nil
}

// poolHint returns the pool id last seen for name, or "".
func (s *Store) poolHint(name string) string {
	if v, ok := s.poolIDs.Load(name); ok {
		return v.(string)
	}
	return ""
}
