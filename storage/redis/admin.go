package redis

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	goredis "github.com/redis/go-redis/v9"
)

// CreatePool stores a new pool; a zero ID gets a fresh one.
func (s *Store) CreatePool(ctx context.Context, pool pharox.Pool) (*pharox.Pool, error) {
	if err := pool.Validate(); err != nil {
		return nil, fmt.Errorf("redis: create pool: %w", err)
	}
	if pool.ID == uuid.Nil {
		pool.ID = uuid.New()
	}
	v, err := s.run(ctx, scriptCreatePool, pool.ID.String(), pool.Name, pool.Description, callToken())
	if err != nil {
		return nil, wrap(err, "create pool %q", pool.Name)
	}
	created, _ := v.(string)
	if pool.CreatedAt, err = micros(created); err != nil {
		return nil, fmt.Errorf("redis: create pool %q: %w", pool.Name, err)
	}
	return &pool, nil
}

func (s *Store) poolKey(id string) string { return s.prefix + "pool:" + id }

func decodePool(id string, m map[string]string) (*pharox.Pool, error) {
	p := &pharox.Pool{Name: m["name"], Description: m["desc"]}
	var err error
	if p.ID, err = uuid.Parse(id); err != nil {
		return nil, fmt.Errorf("bad pool id %q", id)
	}
	if p.CreatedAt, err = micros(m["created"]); err != nil {
		return nil, err
	}
	return p, nil
}

// GetPool returns the pool by id.
func (s *Store) GetPool(ctx context.Context, id uuid.UUID) (*pharox.Pool, error) {
	m, err := s.rdb.HGetAll(ctx, s.poolKey(id.String())).Result()
	if err != nil {
		return nil, wrap(err, "get pool %s", id)
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("redis: get pool %s: %w", id, pharox.ErrPoolNotFound)
	}
	p, err := decodePool(id.String(), m)
	if err != nil {
		return nil, fmt.Errorf("redis: get pool %s: %w", id, err)
	}
	return p, nil
}

// GetPoolByName returns the pool by name.
func (s *Store) GetPoolByName(ctx context.Context, name string) (*pharox.Pool, error) {
	id, err := s.rdb.HGet(ctx, s.prefix+"pools", name).Result()
	if errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("redis: get pool %q: %w", name, pharox.ErrPoolNotFound)
	}
	if err != nil {
		return nil, wrap(err, "get pool %q", name)
	}
	m, err := s.rdb.HGetAll(ctx, s.poolKey(id)).Result()
	if err != nil {
		return nil, wrap(err, "get pool %q", name)
	}
	if len(m) == 0 { // deleted between the two reads
		return nil, fmt.Errorf("redis: get pool %q: %w", name, pharox.ErrPoolNotFound)
	}
	p, err := decodePool(id, m)
	if err != nil {
		return nil, fmt.Errorf("redis: get pool %q: %w", name, err)
	}
	return p, nil
}

// ListPools returns every pool ordered by name.
func (s *Store) ListPools(ctx context.Context) ([]*pharox.Pool, error) {
	names, err := s.rdb.HGetAll(ctx, s.prefix+"pools").Result()
	if err != nil {
		return nil, wrap(err, "list pools")
	}
	ids := make([]string, 0, len(names))
	for _, id := range names {
		ids = append(ids, id)
	}
	cmds, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for _, id := range ids {
			p.HGetAll(ctx, s.poolKey(id))
		}
		return nil
	})
	if err != nil {
		return nil, wrap(err, "list pools")
	}
	out := make([]*pharox.Pool, 0, len(ids))
	for i, c := range cmds {
		m := c.(*goredis.MapStringStringCmd).Val()
		if len(m) == 0 {
			continue // deleted meanwhile
		}
		p, err := decodePool(ids[i], m)
		if err != nil {
			return nil, fmt.Errorf("redis: list pools: %w", err)
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *pharox.Pool) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// DeletePool deletes the pool with its proxies, their ended leases and its
// session bindings, in one script.
func (s *Store) DeletePool(ctx context.Context, id uuid.UUID) error {
	if _, err := s.run(ctx, scriptDeletePool, id.String(), callToken()); err != nil {
		return wrap(err, "delete pool %s", id)
	}
	return nil
}

// AddProxies stores new proxies, all or none.
func (s *Store) AddProxies(ctx context.Context, proxies []pharox.Proxy) ([]*pharox.Proxy, error) {
	if len(proxies) == 0 {
		return []*pharox.Proxy{}, nil
	}
	out := make([]*pharox.Proxy, len(proxies))
	recs := make([]newProxy, len(proxies))
	seenID := make(map[uuid.UUID]bool, len(proxies))
	seenKey := make(map[string]bool, len(proxies))
	for i := range proxies {
		p := proxies[i].Clone()
		p.Normalize()
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("redis: add proxies: proxy %d: %w", i, err)
		}
		if p.PoolID == uuid.Nil {
			return nil, fmt.Errorf("redis: add proxies: proxy %d: %w: pool id is empty", i, pharox.ErrInvalidArgument)
		}
		if p.ID == uuid.Nil {
			p.ID = uuid.New()
		}
		// Health and load fields of the input are ignored.
		p.CurrentLeases, p.CheckedAt, p.LatencyMS, p.LastError = 0, nil, 0, ""
		p.LastStatusCode, p.FailureStreak, p.StatusChangedAt = 0, 0, nil
		rec := encodeProxy(p)
		if seenID[p.ID] {
			return nil, fmt.Errorf("redis: add proxies: proxy %d: %w: id %s given twice", i, pharox.ErrAlreadyExists, p.ID)
		}
		if k := rec.Pool + "|" + rec.Uniq; seenKey[k] {
			return nil, fmt.Errorf("redis: add proxies: proxy %d: %w: %s given twice", i, pharox.ErrAlreadyExists, p)
		} else {
			seenKey[k] = true
		}
		seenID[p.ID] = true
		recs[i] = rec
		out[i] = p
	}
	arg, err := jsonString(recs)
	if err != nil {
		return nil, fmt.Errorf("redis: add proxies: %w", err)
	}
	v, err := s.run(ctx, scriptAddProxies, arg, callToken())
	if err != nil {
		return nil, wrap(err, "add proxies")
	}
	created, _ := v.(string)
	at, err := micros(created)
	if err != nil {
		return nil, fmt.Errorf("redis: add proxies: %w", err)
	}
	for _, p := range out {
		p.CreatedAt = at
	}
	return out, nil
}

// GetProxy returns the proxy by id, after reclaiming its pool's expired leases.
func (s *Store) GetProxy(ctx context.Context, id uuid.UUID) (*pharox.Proxy, error) {
	v, err := s.run(ctx, scriptGetProxy, id.String())
	if errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("redis: get proxy %s: %w", id, pharox.ErrProxyNotFound)
	}
	if err != nil {
		return nil, wrap(err, "get proxy %s", id)
	}
	p, err := proxyFromReply(id.String(), v)
	if err != nil {
		return nil, fmt.Errorf("redis: get proxy %s: %w", id, err)
	}
	return p, nil
}

// listPage is how many proxies ListProxies reads per round trip.
const listPage = 500

// ListProxies returns the pool's proxies ordered by id. It reclaims the
// pool's expired leases first, so the loads are current, then reads the
// proxies a page at a time outside any script, so that a large pool never
// keeps Redis from serving others; a proxy deleted meanwhile is left out.
func (s *Store) ListProxies(ctx context.Context, poolID uuid.UUID) ([]*pharox.Proxy, error) {
	pid := poolID.String()
	n, err := s.rdb.Exists(ctx, s.poolKey(pid)).Result()
	if err != nil {
		return nil, wrap(err, "list proxies of pool %s", poolID)
	}
	if n == 0 {
		return nil, fmt.Errorf("redis: list proxies of pool %s: %w", poolID, pharox.ErrPoolNotFound)
	}
	if _, err := s.run(ctx, scriptReclaim, pid); err != nil {
		return nil, wrap(err, "list proxies of pool %s", poolID)
	}
	all := s.prefix + "p:" + pid + ":all"
	out := []*pharox.Proxy{}
	for from := "-"; ; {
		ids, err := s.rdb.ZRangeArgs(ctx, goredis.ZRangeArgs{Key: all, Start: from, Stop: "+", ByLex: true, Count: listPage}).Result()
		if err != nil {
			return nil, wrap(err, "list proxies of pool %s", poolID)
		}
		if len(ids) == 0 {
			return out, nil
		}
		from = "(" + ids[len(ids)-1]
		cmds := make([]*goredis.MapStringStringCmd, len(ids))
		_, err = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for i, id := range ids {
				cmds[i] = p.HGetAll(ctx, s.prefix+"proxy:"+id)
			}
			return nil
		})
		if err != nil {
			return nil, wrap(err, "list proxies of pool %s", poolID)
		}
		for i, c := range cmds {
			m := c.Val()
			if len(m) == 0 {
				continue // deleted since the page was read
			}
			p, err := decodeProxy(ids[i], m)
			if err != nil {
				return nil, fmt.Errorf("redis: list proxies of pool %s: %w", poolID, err)
			}
			out = append(out, p)
		}
		if len(ids) < listPage {
			return out, nil
		}
	}
}

// SetProxyStatus sets a proxy's status by hand and resets its failure streak.
func (s *Store) SetProxyStatus(ctx context.Context, id uuid.UUID, status pharox.ProxyStatus) (*pharox.Proxy, error) {
	if !status.Valid() {
		return nil, fmt.Errorf("redis: set status of proxy %s: %w: unknown status %q", id, pharox.ErrInvalidArgument, status)
	}
	v, err := s.run(ctx, scriptSetStatus, id.String(), string(status))
	if err != nil {
		return nil, wrap(err, "set status of proxy %s", id)
	}
	p, err := proxyFromReply(id.String(), v)
	if err != nil {
		return nil, fmt.Errorf("redis: set status of proxy %s: %w", id, err)
	}
	return p, nil
}

// DeleteProxy deletes a proxy and its ended leases.
func (s *Store) DeleteProxy(ctx context.Context, id uuid.UUID) error {
	if _, err := s.run(ctx, scriptDeleteProxy, id.String(), callToken()); err != nil {
		return wrap(err, "delete proxy %s", id)
	}
	return nil
}

// GetLease returns a lease by id, ending it first if it has expired.
func (s *Store) GetLease(ctx context.Context, id uuid.UUID) (*pharox.Lease, error) {
	v, err := s.run(ctx, scriptGetLease, id.String())
	if errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("redis: get lease %s: %w", id, pharox.ErrLeaseNotFound)
	}
	if err != nil {
		return nil, wrap(err, "get lease %s", id)
	}
	l, err := leaseFromReply(id.String(), v)
	if err != nil {
		return nil, fmt.Errorf("redis: get lease %s: %w", id, err)
	}
	return l, nil
}

// ListLeases returns the leases matching q, oldest AcquiredAt first. It
// reclaims expired leases of the pools concerned, then reads without
// blocking Redis: active leases from the pools' expiry sets, ended ones
// from the proxy's, the pool's proxies' or the global ended set.
func (s *Store) ListLeases(ctx context.Context, q pharox.LeaseQuery) ([]*pharox.Lease, error) {
	if q.Limit < 0 {
		return nil, fmt.Errorf("redis: list leases: %w: negative limit", pharox.ErrInvalidArgument)
	}
	if q.Status != "" && !q.Status.Valid() {
		return nil, fmt.Errorf("redis: list leases: %w: unknown status %q", pharox.ErrInvalidArgument, q.Status)
	}
	var pools []string
	if q.PoolID != uuid.Nil {
		pools = []string{q.PoolID.String()}
	} else {
		m, err := s.rdb.HGetAll(ctx, s.prefix+"pools").Result()
		if err != nil {
			return nil, wrap(err, "list leases")
		}
		for _, id := range m {
			pools = append(pools, id)
		}
	}
	args := make([]any, len(pools))
	for i, p := range pools {
		args[i] = p
	}
	if len(pools) > 0 {
		if _, err := s.run(ctx, scriptReclaim, args...); err != nil {
			return nil, wrap(err, "list leases")
		}
	}
	ids := map[string]struct{}{}
	addAll := func(list []string) {
		for _, id := range list {
			ids[id] = struct{}{}
		}
	}
	if q.Status == "" || q.Status == pharox.LeaseActive {
		for _, pid := range pools {
			list, err := s.rdb.ZRange(ctx, s.prefix+"p:"+pid+":exp", 0, -1).Result()
			if err != nil {
				return nil, wrap(err, "list leases")
			}
			addAll(list)
		}
	}
	if q.Status != pharox.LeaseActive {
		switch {
		case q.ProxyID != uuid.Nil:
			list, err := s.rdb.SMembers(ctx, s.prefix+"proxy:"+q.ProxyID.String()+":ended").Result()
			if err != nil {
				return nil, wrap(err, "list leases")
			}
			addAll(list)
		case q.PoolID != uuid.Nil:
			proxies, err := s.rdb.ZRange(ctx, s.prefix+"p:"+q.PoolID.String()+":all", 0, -1).Result()
			if err != nil {
				return nil, wrap(err, "list leases")
			}
			for _, px := range proxies {
				list, err := s.rdb.SMembers(ctx, s.prefix+"proxy:"+px+":ended").Result()
				if err != nil {
					return nil, wrap(err, "list leases")
				}
				addAll(list)
			}
		default:
			for start := int64(0); ; start += cleanupBatch {
				list, err := s.rdb.ZRange(ctx, s.prefix+"ended", start, start+cleanupBatch-1).Result()
				if err != nil {
					return nil, wrap(err, "list leases")
				}
				addAll(list)
				if len(list) < cleanupBatch {
					break
				}
			}
		}
	}
	all := make([]string, 0, len(ids))
	for id := range ids {
		all = append(all, id)
	}
	var out []*pharox.Lease
	for start := 0; start < len(all); start += cleanupBatch {
		part := all[start:min(start+cleanupBatch, len(all))]
		records, err := s.rdb.HMGet(ctx, s.prefix+"leases", part...).Result()
		if err != nil {
			return nil, wrap(err, "list leases")
		}
		for i, v := range records {
			record, ok := v.(string)
			if !ok {
				continue // purged meanwhile
			}
			l, err := decodeLease(part[i], record)
			if err != nil {
				return nil, fmt.Errorf("redis: list leases: %w", err)
			}
			if q.PoolID != uuid.Nil && l.PoolID != q.PoolID ||
				q.ProxyID != uuid.Nil && l.ProxyID != q.ProxyID ||
				q.ConsumerID != uuid.Nil && l.ConsumerID != q.ConsumerID ||
				q.Status != "" && l.Status != q.Status {
				continue
			}
			out = append(out, l)
		}
	}
	slices.SortFunc(out, func(a, b *pharox.Lease) int {
		if c := a.AcquiredAt.Compare(b.AcquiredAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID.String(), b.ID.String())
	})
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	if out == nil {
		out = []*pharox.Lease{}
	}
	return out, nil
}

// PurgeEndedLeases deletes released and expired leases that ended before
// the given time, in batches.
func (s *Store) PurgeEndedLeases(ctx context.Context, endedBefore time.Time) (int, error) {
	us := endedBefore.UnixMicro()
	if endedBefore.After(time.UnixMicro(us)) {
		us++ // a sub-microsecond remainder: ends at us itself are still before
	}
	before := strconv.FormatInt(us, 10)
	total := 0
	for {
		v, err := s.run(ctx, scriptPurge, before, cleanupBatch)
		if err != nil {
			return total, wrap(err, "purge ended leases")
		}
		n, _ := v.(int64)
		total += int(n)
		if n < cleanupBatch {
			return total, nil
		}
	}
}
