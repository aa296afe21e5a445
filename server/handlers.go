package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

// ---- service ----

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.ServiceStatus{Status: "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		s.log.Warn("pharox server: storage ping failed", "err", err)
		w.Header().Set("Retry-After", strconv.Itoa(RetryAfterSeconds))
		writeJSON(w, http.StatusServiceUnavailable, api.Error{Detail: "Storage unavailable"})
		return
	}
	writeJSON(w, http.StatusOK, api.ServiceStatus{Status: "ok"})
}

// ---- path and query helpers ----

// pathID parses the named path parameter as the id of a thing the
// server keeps. A segment that is not a UUID names nothing the server
// knows, so it is notFound (a sentinel such as pharox.ErrLeaseNotFound),
// as for an unknown id: clients such as the Python SDK read 404 as "no
// such thing" whatever the string was.
func pathID(r *http.Request, name string, notFound error) (uuid.UUID, error) {
	raw := r.PathValue(name)
	id, err := uuid.Parse(raw)
	if err != nil {
		return uuid.Nil, fmt.Errorf("%s %q is not an id: %w", name, truncate(raw, 64), notFound)
	}
	return id, nil
}

// poolRef resolves a pool reference from the path or a query: a UUID is
// the pool's id; anything else is taken as the pool's name, a convenience
// for people and scripts.
func (s *Server) poolRef(ctx context.Context, ref string) (uuid.UUID, error) {
	if id, err := uuid.Parse(ref); err == nil {
		return id, nil
	}
	if ref == "" {
		return uuid.Nil, unprocessable("pool_id is empty")
	}
	p, err := s.store.GetPoolByName(ctx, ref)
	if err != nil {
		return uuid.Nil, err
	}
	return p.ID, nil
}

// poolRefName resolves a pool reference to the pool's name, which is what
// the Manager works with. It asks the store rather than the acquisition's
// cache: a deleted pool's id must not resolve to a new pool of that name.
func (s *Server) poolRefName(ctx context.Context, ref string) (string, error) {
	if id, err := uuid.Parse(ref); err == nil {
		p, err := s.store.GetPool(ctx, id)
		if err != nil {
			return "", err
		}
		return p.Name, nil
	}
	if _, err := s.store.GetPoolByName(ctx, ref); err != nil {
		return "", err
	}
	return ref, nil
}

// queryBool parses a boolean query parameter; absent is false.
func queryBool(r *http.Request, name string) (bool, error) {
	v := r.URL.Query().Get(name)
	switch strings.ToLower(v) {
	case "", "false", "0", "no":
		return false, nil
	case "true", "1", "yes":
		return true, nil
	}
	return false, unprocessable("query parameter %s must be true or false, got %q", name, truncate(v, 32))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// seconds converts a JSON number of seconds into a positive duration no
// longer than max, with a clear error naming the field.
func seconds(field string, v float64, max time.Duration) (time.Duration, error) {
	if math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {
		return 0, unprocessable("%s must be a positive number of seconds, got %v", field, v)
	}
	if v > max.Seconds() {
		return 0, unprocessable("%s %v exceeds the maximum of %v seconds", field, v, max.Seconds())
	}
	d := time.Duration(v * float64(time.Second))
	if d <= 0 {
		return 0, unprocessable("%s %v is shorter than a nanosecond", field, v)
	}
	return d, nil
}

// ---- pools ----

func (s *Server) createPool(r *http.Request) (any, error) {
	var req api.CreatePoolRequest
	if err := decodeBody(r, &req, false); err != nil {
		return nil, err
	}
	pool := pharox.Pool{Name: strings.TrimSpace(req.Name), Description: req.Description}
	if err := pool.Validate(); err != nil {
		return nil, err
	}
	p, err := s.store.CreatePool(r.Context(), pool)
	if errors.Is(err, pharox.ErrAlreadyExists) {
		return nil, withDetail(err, "A pool named %q already exists", pool.Name)
	}
	if err != nil {
		return nil, err
	}
	s.pools.Store(p.ID, p.Name)
	s.audit(r, "pool.create", "pool", p.ID.String(), fmt.Sprintf("created pool %q", p.Name))
	return api.FromPool(p), nil
}

func (s *Server) listPools(r *http.Request) (any, error) {
	pools, err := s.store.ListPools(r.Context())
	if err != nil {
		return nil, err
	}
	c := callerOf(r)
	out := make([]api.Pool, 0, len(pools))
	for _, p := range pools {
		if c.seesPool(p.Name) {
			out = append(out, api.FromPool(p))
		}
	}
	return out, nil
}

func (s *Server) getPool(r *http.Request) (any, error) {
	ref := r.PathValue("pool_id")
	var p *pharox.Pool
	var err error
	if id, perr := uuid.Parse(ref); perr == nil {
		p, err = s.store.GetPool(r.Context(), id)
	} else {
		p, err = s.store.GetPoolByName(r.Context(), ref)
	}
	if err != nil {
		return nil, err
	}
	if !callerOf(r).seesPool(p.Name) {
		return nil, fmt.Errorf("pool %q is outside the key's pools: %w", p.Name, pharox.ErrPoolNotFound)
	}
	return api.FromPool(p), nil
}

func (s *Server) deletePool(r *http.Request) (any, error) {
	id, err := s.poolRef(r.Context(), r.PathValue("pool_id"))
	if err != nil {
		return nil, err
	}
	if err := s.store.DeletePool(r.Context(), id); err != nil {
		if errors.Is(err, pharox.ErrInUse) {
			return nil, withDetail(err, "Pool %q is in use by active leases: release them (or let them expire), then delete it", r.PathValue("pool_id"))
		}
		return nil, err
	}
	s.forgetPool(id, "")
	s.audit(r, "pool.delete", "pool", id.String(), fmt.Sprintf("deleted pool %q", r.PathValue("pool_id")))
	return nil, nil
}

func (s *Server) poolStats(r *http.Request) (any, error) {
	name, err := s.poolRefName(r.Context(), r.PathValue("pool_id"))
	if err != nil {
		return nil, err
	}
	if !callerOf(r).seesPool(name) {
		return nil, fmt.Errorf("pool %q is outside the key's pools: %w", name, pharox.ErrPoolNotFound)
	}
	st, err := s.mgr.PoolStats(r.Context(), name)
	if err != nil {
		return nil, err
	}
	return api.FromPoolStats(st), nil
}

func (s *Server) sweepPool(r *http.Request) (any, error) {
	if s.opts.Sweep == nil {
		return nil, &httpError{http.StatusNotImplemented, "Health checks are not configured on this server"}
	}
	var req api.SweepRequest
	if err := decodeBody(r, &req, true); err != nil {
		return nil, err
	}
	if req.TargetURL != "" {
		u, err := url.Parse(req.TargetURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, unprocessable("target_url must be an absolute http or https URL")
		}
	}
	name, err := s.poolRefName(r.Context(), r.PathValue("pool_id"))
	if err != nil {
		return nil, err
	}
	return s.opts.Sweep(r.Context(), name, req.TargetURL)
}

// ---- proxies ----

// proxyInPool returns the proxy named by the path, checking that it
// belongs to the pool named by the path: a proxy of another pool is 404.
func (s *Server) proxyInPool(r *http.Request) (*pharox.Proxy, error) {
	poolID, err := s.poolRef(r.Context(), r.PathValue("pool_id"))
	if err != nil {
		return nil, err
	}
	proxyID, err := pathID(r, "proxy_id", pharox.ErrProxyNotFound)
	if err != nil {
		return nil, err
	}
	p, err := s.store.GetProxy(r.Context(), proxyID)
	if err != nil {
		return nil, err
	}
	if p.PoolID != poolID {
		return nil, fmt.Errorf("proxy %s is not in pool %s: %w", proxyID, poolID, pharox.ErrProxyNotFound)
	}
	return p, nil
}

func (s *Server) createProxy(r *http.Request) (any, error) {
	var req api.CreateProxyRequest
	if err := decodeBody(r, &req, false); err != nil {
		return nil, err
	}
	poolID, err := s.poolRef(r.Context(), r.PathValue("pool_id"))
	if err != nil {
		return nil, err
	}
	p, err := req.ToProxy(poolID)
	if err != nil {
		return nil, err
	}
	added, err := s.store.AddProxies(r.Context(), []pharox.Proxy{p})
	if errors.Is(err, pharox.ErrAlreadyExists) {
		return nil, withDetail(err, "Proxy %s already exists in pool %q", p.Address(), r.PathValue("pool_id"))
	}
	if err != nil {
		return nil, err
	}
	s.audit(r, "proxy.add", "proxy", added[0].ID.String(), fmt.Sprintf("added proxy %s to pool %q", added[0].Address(), r.PathValue("pool_id")))
	return api.FromProxy(added[0], false), nil
}

func (s *Server) importProxies(r *http.Request) (any, error) {
	var req api.ImportProxiesRequest
	if err := decodeBody(r, &req, false); err != nil {
		return nil, err
	}
	if len(req.Proxies) == 0 {
		return nil, unprocessable("proxies is empty: nothing to import")
	}
	poolID, err := s.poolRef(r.Context(), r.PathValue("pool_id"))
	if err != nil {
		return nil, err
	}
	proxies := make([]pharox.Proxy, len(req.Proxies))
	for i := range req.Proxies {
		p, err := req.Proxies[i].ToProxy(poolID)
		if err != nil {
			return nil, withDetail(err, "proxies[%d] is invalid: %s", i, lowerFirst(invalidDetail(err)))
		}
		proxies[i] = p
	}
	added, err := s.store.AddProxies(r.Context(), proxies)
	if errors.Is(err, pharox.ErrAlreadyExists) {
		return nil, withDetail(err, "%s, so nothing was imported", s.duplicateProxy(r, poolID, proxies))
	}
	if err != nil {
		return nil, err
	}
	s.audit(r, "proxy.import", "pool", poolID.String(), fmt.Sprintf("imported %d proxies into pool %q", len(added), r.PathValue("pool_id")))
	out := api.ImportProxiesResponse{Created: len(added), Proxies: make([]api.Proxy, len(added))}
	for i, p := range added {
		out.Proxies[i] = api.FromProxy(p, false)
	}
	return out, nil
}

// duplicateProxy names the first proxy of an import that repeats another
// one of the list or one already in the pool (the stores say only that
// one does, by their own numbering).
func (s *Server) duplicateProxy(r *http.Request, poolID uuid.UUID, proxies []pharox.Proxy) string {
	key := func(p *pharox.Proxy) string { return string(p.Protocol) + "://" + p.Address() }
	seen := make(map[string]int, len(proxies))
	for i := range proxies {
		k := key(&proxies[i])
		if j, ok := seen[k]; ok {
			return fmt.Sprintf("proxies[%d] repeats proxies[%d] (%s)", i, j, k)
		}
		seen[k] = i
	}
	existing, err := s.store.ListProxies(r.Context(), poolID)
	if err == nil {
		for _, p := range existing {
			if i, ok := seen[key(p)]; ok {
				return fmt.Sprintf("proxies[%d] (%s) already exists in pool %q", i, key(p), r.PathValue("pool_id"))
			}
		}
	}
	return fmt.Sprintf("A proxy of the list already exists in pool %q", r.PathValue("pool_id"))
}

// secretsAllowed answers 403 when a caller other than an admin asks for
// proxy passwords.
func secretsAllowed(r *http.Request, secrets bool) error {
	if c := callerOf(r); secrets && c != nil && c.role < RoleAdmin {
		return &httpError{http.StatusForbidden, fmt.Sprintf("This API key (%s) has the %s role; include_secrets needs admin", c.id.Name, c.role)}
	}
	return nil
}

func (s *Server) listProxies(r *http.Request) (any, error) {
	secrets, err := queryBool(r, "include_secrets")
	if err != nil {
		return nil, err
	}
	if err := secretsAllowed(r, secrets); err != nil {
		return nil, err
	}
	poolID, err := s.poolRef(r.Context(), r.PathValue("pool_id"))
	if err != nil {
		return nil, err
	}
	proxies, err := s.store.ListProxies(r.Context(), poolID)
	if err != nil {
		return nil, err
	}
	out := make([]api.Proxy, len(proxies))
	for i, p := range proxies {
		out[i] = api.FromProxy(p, secrets)
	}
	return out, nil
}

func (s *Server) getProxy(r *http.Request) (any, error) {
	secrets, err := queryBool(r, "include_secrets")
	if err != nil {
		return nil, err
	}
	if err := secretsAllowed(r, secrets); err != nil {
		return nil, err
	}
	p, err := s.proxyInPool(r)
	if err != nil {
		return nil, err
	}
	return api.FromProxy(p, secrets), nil
}

func (s *Server) updateProxy(r *http.Request) (any, error) {
	var req api.UpdateProxyRequest
	if err := decodeBody(r, &req, false); err != nil {
		return nil, err
	}
	if req.Status == "" {
		return nil, unprocessable("status is required (active, slow, inactive or banned)")
	}
	status, err := pharox.ParseProxyStatus(req.Status)
	if err != nil {
		return nil, err
	}
	p, err := s.proxyInPool(r)
	if err != nil {
		return nil, err
	}
	updated, err := s.store.SetProxyStatus(r.Context(), p.ID, status)
	if err != nil {
		return nil, err
	}
	s.audit(r, "proxy.status", "proxy", p.ID.String(), fmt.Sprintf("set proxy %s from %s to %s", p.Address(), p.Status, status))
	return api.FromProxy(updated, false), nil
}

func (s *Server) deleteProxy(r *http.Request) (any, error) {
	p, err := s.proxyInPool(r)
	if err != nil {
		return nil, err
	}
	err = s.store.DeleteProxy(r.Context(), p.ID)
	if errors.Is(err, pharox.ErrInUse) {
		return nil, withDetail(err, "Proxy %s is in use by an active lease: release it (or let it expire), then delete the proxy", p.Address())
	}
	if err != nil {
		return nil, err
	}
	s.audit(r, "proxy.delete", "proxy", p.ID.String(), fmt.Sprintf("deleted proxy %s", p.Address()))
	return nil, nil
}

// ---- consumers ----

func (s *Server) ensureConsumer(r *http.Request) (any, error) {
	var req api.CreateConsumerRequest
	if err := decodeBody(r, &req, false); err != nil {
		return nil, err
	}
	if req.Name != "" { // an empty name is refused below, not the default's
		if err := callerOf(r).checkConsumer(req.Name); err != nil {
			return nil, err
		}
		if err := s.allowConsumer(r, req.Name); err != nil {
			return nil, err
		}
	}
	c, err := s.mgr.EnsureConsumer(r.Context(), req.Name)
	if err != nil {
		return nil, err
	}
	s.consumers.Store(c.ID, c.Name)
	return api.Consumer{ID: c.ID, Name: c.Name}, nil
}

func (s *Server) listConsumers(r *http.Request) (any, error) {
	consumers, err := s.store.ListConsumers(r.Context())
	if err != nil {
		return nil, err
	}
	caller := callerOf(r)
	out := make([]api.Consumer, 0, len(consumers))
	for _, c := range consumers {
		if caller.ownsLease(c.Name) {
			out = append(out, api.Consumer{ID: c.ID, Name: c.Name})
		}
	}
	return out, nil
}

// consumerName resolves a consumer id to its name, from the consumers
// this server has seen or else from the store, so that a consumer ensured
// through another process (or before a restart) is the same consumer here.
// Consumers are never renamed or deleted, so the cache never goes stale.
// An id the store does not know is ErrConsumerNotFound.
func (s *Server) consumerName(ctx context.Context, id uuid.UUID) (string, error) {
	if name, ok := s.consumers.Load(id); ok {
		return name.(string), nil
	}
	c, err := s.store.GetConsumer(ctx, id)
	if err != nil {
		return "", err
	}
	s.consumers.Store(id, c.Name)
	return c.Name, nil
}

// consumerRef resolves an acquisition's consumer_id to the name the
// Manager acquires as. It is the id of a known consumer or else a
// consumer name, created on first use like consumer_name: the Python SDK
// sends whatever its user calls the consumer there ("default",
// "scraper-7"), and its local mode takes the same string as a name. An
// id-shaped string that is no consumer's id is a name too, so the same
// string always means the same consumer.
func (s *Server) consumerRef(ctx context.Context, ref string) (string, error) {
	if id, err := uuid.Parse(ref); err == nil {
		name, err := s.consumerName(ctx, id)
		if err == nil || !errors.Is(err, pharox.ErrConsumerNotFound) {
			return name, err
		}
	}
	if err := pharox.ValidateName("consumer_id", ref); err != nil {
		return "", err
	}
	return ref, nil
}

// knownPool checks that a pool of this name exists before anything is
// done in its name (a consumer is created on first use, and an unknown
// pool must not leave consumer rows behind). Names found stay cached until
// the pool is deleted through this server or an acquisition finds it gone.
func (s *Server) knownPool(ctx context.Context, name string) error {
	if _, ok := s.poolNames.Load(name); ok {
		return nil
	}
	p, err := s.store.GetPoolByName(ctx, name)
	if err != nil {
		return err
	}
	s.poolNames.Store(p.Name, p.ID)
	s.pools.Store(p.ID, p.Name)
	return nil
}

// forgetPool drops a pool from the caches, by id, name or both.
func (s *Server) forgetPool(id uuid.UUID, name string) {
	if id != uuid.Nil {
		if cached, ok := s.pools.LoadAndDelete(id); ok && name == "" {
			name = cached.(string)
		}
	}
	if name != "" {
		s.poolNames.Delete(name)
	}
}

// ---- leases ----

func (s *Server) acquire(r *http.Request) (any, error) {
	ctx := r.Context()
	body, err := readBody(r)
	if err != nil {
		return nil, err
	}
	var req api.AcquireRequest
	if err := decodeBytes(body, &req, false); err != nil {
		return nil, err
	}
	opts, err := acquireOptions(body, &req)
	if err != nil {
		return nil, err
	}
	if limit := s.opts.MaxWait.Seconds(); req.WaitSeconds > limit {
		// Refused rather than cut short: a client that asked for a longer
		// wait would otherwise take the early 409 for a busy pool.
		return nil, unprocessable("wait_seconds %v exceeds this server's maximum wait of %v seconds", req.WaitSeconds, limit)
	}

	var poolID uuid.UUID
	pool := strings.TrimSpace(req.PoolName)
	if req.PoolID != "" {
		if poolID, err = uuid.Parse(req.PoolID); err != nil {
			return nil, unprocessable("pool_id %q is not a valid UUID", truncate(req.PoolID, 64))
		}
		name, err := s.poolName(ctx, poolID)
		if err != nil {
			return nil, err
		}
		if pool != "" && pool != name {
			return nil, unprocessable("pool_id and pool_name name different pools")
		}
		pool = name
	}
	if pool == "" {
		return nil, unprocessable("pool_id or pool_name is required")
	}
	c := callerOf(r)
	if err := c.checkPool(pool); err != nil {
		return nil, err
	}
	if poolID == uuid.Nil {
		if err := s.knownPool(ctx, pool); err != nil {
			return nil, err
		}
	}

	if req.ConsumerID != "" {
		name, err := s.consumerRef(ctx, req.ConsumerID)
		if err != nil {
			return nil, err
		}
		if req.ConsumerName != "" && req.ConsumerName != name {
			return nil, unprocessable("consumer_id and consumer_name name different consumers")
		}
		opts.Consumer = name
	}
	if c.scoped() {
		if opts.Consumer == "" {
			opts.Consumer = c.id.DefaultConsumer()
		}
		if err := c.checkConsumer(opts.Consumer); err != nil {
			return nil, err
		}
	}
	if err := s.allowConsumer(r, opts.Consumer); err != nil {
		return nil, err
	}
	if opts.LeaseID, err = idempotentLeaseID(r, opts.Consumer); err != nil {
		return nil, err
	}

	var lease *pharox.Lease
	if req.WaitSeconds > 0 {
		wait := time.Duration(req.WaitSeconds * float64(time.Second))
		wctx, cancel := context.WithTimeout(ctx, wait)
		stop := context.AfterFunc(s.stopping, cancel)
		lease, err = s.mgr.AcquireWait(wctx, pool, opts)
		stop()
		cancel()
	} else {
		lease, err = s.mgr.Acquire(ctx, pool, opts)
	}
	if err != nil {
		if errors.Is(err, pharox.ErrPoolNotFound) {
			s.forgetPool(poolID, pool)
		}
		if opts.Target != "" {
			err = targetsUnsupported(err)
		}
		return nil, idempotencyConflict(r, err)
	}
	if poolID != uuid.Nil && lease.PoolID != poolID {
		// The pool was deleted and another one made under its name since
		// the name was cached: this lease is from a pool the client did
		// not ask for.
		s.forgetPool(poolID, pool)
		s.releaseQuietly(ctx, lease)
		return nil, pharox.ErrPoolNotFound
	}
	if ctx.Err() != nil {
		// The client is gone and will never learn of this lease: give
		// the slot back now rather than at expiry.
		s.releaseQuietly(ctx, lease)
		return nil, ctx.Err()
	}
	if _, known := s.consumers.Load(lease.ConsumerID); !known {
		s.consumers.Store(lease.ConsumerID, lease.ConsumerName)
	}
	s.expiries.note(lease.ID, lease.ExpiresAt)
	s.owners.note(lease.ID, lease.ConsumerName)
	return api.FromLease(lease, true), nil
}

func (s *Server) releaseQuietly(ctx context.Context, lease *pharox.Lease) {
	if _, err := s.mgr.Release(context.WithoutCancel(ctx), lease.ID); err != nil {
		s.log.Error("pharox server: release of an unwanted lease failed", "lease", lease.ID, "err", err)
	}
}

// acquireOptions checks the request's fields and builds the Manager's
// options; the Manager applies defaults and the remaining rules.
func acquireOptions(body []byte, req *api.AcquireRequest) (*pharox.AcquireOptions, error) {
	opts := &pharox.AcquireOptions{Consumer: req.ConsumerName, SessionKey: req.SessionKey}
	var err error
	if opts.Target, err = requestTarget(req.Target); err != nil {
		return nil, err
	}
	if req.TTLSeconds != nil {
		if opts.Duration, err = seconds("ttl_seconds", *req.TTLSeconds, pharox.MaxLeaseDuration); err != nil {
			return nil, err
		}
	}
	if req.SessionTTLSeconds != nil {
		if opts.SessionTTL, err = seconds("session_ttl_seconds", *req.SessionTTLSeconds, pharox.MaxLeaseDuration); err != nil {
			return nil, err
		}
	}
	if math.IsNaN(req.WaitSeconds) || req.WaitSeconds < 0 {
		return nil, unprocessable("wait_seconds must be zero or a positive number of seconds, got %v", req.WaitSeconds)
	}
	if opts.Strategy, err = pharox.ParseStrategy(req.Strategy); err != nil {
		return nil, err
	}
	if req.Filters != nil {
		// Decoding ignored unknown fields; an ignored filter would lease a
		// proxy the client excluded, so filters are checked strictly.
		f, err := strictFilters(body)
		if err != nil {
			return nil, err
		}
		if f.HasPredicate() {
			return nil, unprocessable("filters cannot carry a predicate")
		}
		// Checked here as well as by the Manager: bad filters are the
		// client's error, answered before the pool is looked up.
		if err := f.NormalizedClone().Validate(); err != nil {
			return nil, err
		}
		opts.Filters = f
	}
	return opts, nil
}

func (s *Server) getLease(r *http.Request) (any, error) {
	id, err := pathID(r, "lease_id", pharox.ErrLeaseNotFound)
	if err != nil {
		return nil, err
	}
	l, err := s.store.GetLease(r.Context(), id)
	if err != nil {
		return nil, err
	}
	if !callerOf(r).ownsLease(l.ConsumerName) {
		return nil, notOwned(id)
	}
	return api.FromLease(l, false), nil
}

// release ends a lease. On the wire releasing is idempotent, as a Python
// pharox release is: a lease that already ended (released, expired or
// reclaimed) is answered 200 as it ended, and nothing is freed; only a
// lease never seen is 404. The Manager keeps ErrLeaseNotActive for Go
// callers.
//
// A lease past its expiry that nothing has reclaimed yet is expired, on
// every store: stores differ there (some release it, some reclaim it), so
// such a lease is reclaimed first, as the reaper would, and the answer is
// the same whichever store is behind it. The normal case, a lease this
// server handed out or renewed that is well before its expiry, needs no
// such check and is one store round trip: the release itself.
//
// The body may report the traffic the lease carried; the store counts it
// only if this release ends the lease, so a repeated release counts
// nothing, and a lease that expired reports nothing.
func (s *Server) release(r *http.Request) (any, error) {
	id, err := pathID(r, "lease_id", pharox.ErrLeaseNotFound)
	if err != nil {
		return nil, err
	}
	usage, err := releaseUsage(r)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	if err := s.checkOwner(ctx, callerOf(r), id); err != nil {
		return nil, err
	}
	if s.expiries.farFromExpiry(id, time.Now()) {
		released, err := s.endLease(ctx, id, usage)
		if err == nil {
			s.auditRelease(r, released)
			return api.FromLease(released, false), nil
		}
		if !errors.Is(err, pharox.ErrLeaseNotActive) {
			return nil, err
		}
		// Ended meanwhile (another release, another server's reaper):
		// answered as it ended, below.
	}
	l, err := s.store.GetLease(ctx, id)
	if err != nil {
		return nil, err
	}
	if l.Status == pharox.LeaseActive && !time.Now().Before(l.ExpiresAt) {
		if _, err := s.mgr.CleanupExpiredLeases(ctx); err != nil {
			return nil, err
		}
		if l, err = s.store.GetLease(ctx, id); err != nil {
			return nil, err
		}
	}
	if l.Status != pharox.LeaseActive {
		return api.FromLease(l, false), nil
	}
	released, err := s.endLease(ctx, id, usage)
	if errors.Is(err, pharox.ErrLeaseNotActive) {
		// It ended between the read and the release (another release, the
		// reaper, or the store reclaiming it as expired).
		released, err = s.store.GetLease(ctx, id)
	} else if err == nil {
		s.auditRelease(r, released)
	}
	if err != nil {
		return nil, err
	}
	return api.FromLease(released, false), nil
}

// releaseUsage reads a release's optional body: nothing, {} or a usage
// report. A counter that is negative or absurd is refused, naming it.
func releaseUsage(r *http.Request) (*pharox.Usage, error) {
	var body api.ReleaseRequest
	if err := decodeBody(r, &body, true); err != nil {
		return nil, err
	}
	if body.Usage == nil {
		return nil, nil
	}
	if err := body.Usage.Validate(); err != nil {
		// "usage: bytes_sent must not be negative" names the field as
		// usage.bytes_sent, the way the client spells it.
		msg := err.Error()
		if i := strings.LastIndex(msg, "usage: "); i >= 0 {
			msg = msg[i+len("usage: "):]
		}
		return nil, unprocessable("usage.%s", msg)
	}
	return body.Usage, nil
}

// endLease releases a lease, with the traffic its holder reported if any.
func (s *Server) endLease(ctx context.Context, id uuid.UUID, usage *pharox.Usage) (*pharox.Lease, error) {
	if usage == nil {
		return s.mgr.Release(ctx, id)
	}
	return s.mgr.ReleaseWithUsage(ctx, id, *usage)
}

func (s *Server) renew(r *http.Request) (any, error) {
	id, err := pathID(r, "lease_id", pharox.ErrLeaseNotFound)
	if err != nil {
		return nil, err
	}
	var req api.RenewRequest
	if err := decodeBody(r, &req, false); err != nil {
		return nil, err
	}
	d, err := seconds("ttl_seconds", req.TTLSeconds, pharox.MaxLeaseDuration)
	if err != nil {
		return nil, err
	}
	if err := s.checkOwner(r.Context(), callerOf(r), id); err != nil {
		return nil, err
	}
	l, err := s.mgr.Renew(r.Context(), id, d)
	if errors.Is(err, pharox.ErrLeaseNotActive) {
		return nil, withDetail(err, "Lease %s is not active: it was released or has expired, so it cannot be renewed", id)
	}
	if err != nil {
		return nil, err
	}
	s.expiries.note(l.ID, l.ExpiresAt)
	return api.FromLease(l, false), nil
}

// maxReasonBytes bounds an outcome's reason, which becomes LastError.
const maxReasonBytes = 1024

func (s *Server) reportOutcome(r *http.Request) (any, error) {
	id, err := pathID(r, "lease_id", pharox.ErrLeaseNotFound)
	if err != nil {
		return nil, err
	}
	var req api.OutcomeRequest
	if err := decodeBody(r, &req, false); err != nil {
		return nil, err
	}
	if req.Kind == "" {
		return nil, unprocessable("kind is required (success, failure or banned)")
	}
	if math.IsNaN(req.LatencyMS) || req.LatencyMS < 0 || req.LatencyMS > 24*3600*1000 {
		return nil, unprocessable("latency_ms must be between 0 and 86400000, got %v", req.LatencyMS)
	}
	if req.StatusCode < 0 || req.StatusCode > 999 {
		return nil, unprocessable("status_code %d is not an HTTP status code", req.StatusCode)
	}
	if len(req.Reason) > maxReasonBytes {
		return nil, unprocessable("reason longer than %d bytes", maxReasonBytes)
	}
	target, err := requestTarget(req.Target)
	if err != nil {
		return nil, err
	}
	if err := s.checkOwner(r.Context(), callerOf(r), id); err != nil {
		return nil, err
	}
	// The Manager reads the lease itself: outcomes count only on active
	// leases, and one failure or ban per lease.
	kind := pharox.OutcomeKind(strings.ToLower(strings.TrimSpace(req.Kind)))
	p, err := s.mgr.ReportOutcome(r.Context(), &pharox.Lease{ID: id}, pharox.Outcome{
		Kind:       kind,
		Latency:    time.Duration(req.LatencyMS * float64(time.Millisecond)),
		StatusCode: req.StatusCode,
		Reason:     req.Reason,
		Target:     target,
	})
	if target != "" {
		err = targetsUnsupported(err)
		if err == nil {
			s.metrics.targetOutcome(kind)
		}
	}
	if errors.Is(err, pharox.ErrLeaseNotActive) {
		return nil, withDetail(err, "Lease %s is not active: it was released or has expired, so outcomes are no longer accepted for it", id)
	}
	if err != nil {
		return nil, err
	}
	return api.FromProxy(p, false), nil
}

func (s *Server) listLeases(r *http.Request) (any, error) {
	if c := callerOf(r); c != nil && c.role == RoleConsumer && !c.scoped() {
		return nil, &httpError{http.StatusForbidden,
			"This API key (bootstrap) has the consumer role and no consumers of its own; listing leases needs a key bound to consumers, a viewer or an admin key"}
	}
	q := r.URL.Query()
	var lq pharox.LeaseQuery
	var err error
	if v := q.Get("pool_id"); v != "" {
		if lq.PoolID, err = s.poolRef(r.Context(), v); err != nil {
			return nil, err
		}
	}
	for _, f := range []struct {
		name string
		dst  *uuid.UUID
	}{{"proxy_id", &lq.ProxyID}, {"consumer_id", &lq.ConsumerID}} {
		if v := q.Get(f.name); v != "" {
			if *f.dst, err = uuid.Parse(v); err != nil {
				return nil, unprocessable("query parameter %s %q is not a valid UUID", f.name, truncate(v, 64))
			}
		}
	}
	if v := q.Get("status"); v != "" {
		lq.Status = pharox.LeaseStatus(strings.ToLower(v))
		if !lq.Status.Valid() {
			return nil, unprocessable("query parameter status must be active, released or expired, got %q", truncate(v, 32))
		}
	}
	lq.Limit = DefaultListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxListLimit {
			return nil, unprocessable("query parameter limit must be an integer from 1 to %d, got %q", MaxListLimit, truncate(v, 32))
		}
		lq.Limit = n
	}
	leases, err := s.listLeasesOf(r.Context(), callerOf(r), lq)
	if err != nil {
		return nil, err
	}
	out := make([]api.Lease, len(leases))
	for i, l := range leases {
		out[i] = api.FromLease(l, false)
	}
	return out, nil
}

// strictFilters decodes the request's filters again, rejecting fields
// pharox does not know.
func strictFilters(body []byte) (*pharox.Filters, error) {
	var raw struct {
		Filters json.RawMessage `json:"filters"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, jsonError(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw.Filters))
	dec.DisallowUnknownFields()
	var f pharox.Filters
	if err := dec.Decode(&f); err != nil {
		if field, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return nil, unprocessable("filters: unknown field %s", field)
		}
		return nil, jsonError(err)
	}
	return &f, nil
}
