package mongo

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/pharox/pharox"
)

// EnsureConsumer returns the consumer with this name, creating it if
// needed; the unique name index makes concurrent first calls agree.
func (s *Store) EnsureConsumer(ctx context.Context, name string) (*pharox.Consumer, error) {
	if err := pharox.ValidateName("consumer name", name); err != nil {
		return nil, fmt.Errorf("mongo: ensure consumer: %w", err)
	}
	for range 3 {
		var d consumerDoc
		err := s.consumers.FindOne(ctx, bson.D{{Key: "name", Value: name}}).Decode(&d)
		if err == nil {
			return d.consumer(), nil
		}
		if !errors.Is(err, mongo.ErrNoDocuments) {
			return nil, fmt.Errorf("mongo: ensure consumer %q: %w", name, wrapErr(err))
		}
		d = consumerDoc{ID: idString(uuid.New()), Name: name, CreatedAt: now()}
		_, err = s.consumers.InsertOne(ctx, d)
		if err == nil {
			return d.consumer(), nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return nil, fmt.Errorf("mongo: ensure consumer %q: %w", name, wrapErr(err))
		}
	}
	return nil, fmt.Errorf("mongo: ensure consumer %q: %w: it was created and deleted concurrently", name, pharox.ErrUnavailable)
}

// GetConsumer returns the consumer by id.
func (s *Store) GetConsumer(ctx context.Context, id uuid.UUID) (*pharox.Consumer, error) {
	var d consumerDoc
	err := s.consumers.FindOne(ctx, bson.D{{Key: "_id", Value: idString(id)}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, fmt.Errorf("mongo: get consumer %s: %w", id, pharox.ErrConsumerNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("mongo: get consumer %s: %w", id, wrapErr(err))
	}
	return d.consumer(), nil
}

// ListConsumers returns every consumer ordered by name.
func (s *Store) ListConsumers(ctx context.Context) ([]*pharox.Consumer, error) {
	var ds []consumerDoc
	if err := s.findAll(ctx, s.consumers, bson.D{}, bson.D{{Key: "name", Value: 1}}, &ds); err != nil {
		return nil, fmt.Errorf("mongo: list consumers: %w", err)
	}
	out := make([]*pharox.Consumer, len(ds))
	for i := range ds {
		out[i] = ds[i].consumer()
	}
	return out, nil
}

// findAll decodes every document of c matching q, in sort order.
func (s *Store) findAll(ctx context.Context, c *mongo.Collection, q, sort bson.D, out any) error {
	opts := options.Find()
	if len(sort) > 0 {
		opts.SetSort(sort)
	}
	cur, err := c.Find(ctx, q, opts)
	if err != nil {
		return wrapErr(err)
	}
	return wrapErr(cur.All(ctx, out))
}

// CreatePool stores a new pool; the unique name index rejects a name in
// use.
func (s *Store) CreatePool(ctx context.Context, p pharox.Pool) (*pharox.Pool, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("mongo: create pool: %w", err)
	}
	if p.ID == uuid.Nil {
		p.ID = uuid.New()
	}
	d := poolDoc{ID: idString(p.ID), Name: p.Name, Description: p.Description, CreatedAt: now()}
	if _, err := s.pools.InsertOne(ctx, d); err != nil {
		if mongo.IsDuplicateKeyError(err) {
			return nil, fmt.Errorf("mongo: create pool %q: %w", p.Name, pharox.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("mongo: create pool %q: %w", p.Name, wrapErr(err))
	}
	if err := s.flagNewPool(ctx, d.ID); err != nil {
		return nil, fmt.Errorf("mongo: create pool %q: %w", p.Name, err)
	}
	return d.pool(), nil
}

func (s *Store) findPool(ctx context.Context, q bson.D, what string) (*poolDoc, error) {
	var d poolDoc
	err := s.pools.FindOne(ctx, q).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, fmt.Errorf("mongo: pool %s: %w", what, pharox.ErrPoolNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("mongo: pool %s: %w", what, wrapErr(err))
	}
	return &d, nil
}

// GetPool returns the pool by id.
func (s *Store) GetPool(ctx context.Context, id uuid.UUID) (*pharox.Pool, error) {
	d, err := s.findPool(ctx, bson.D{{Key: "_id", Value: idString(id)}}, id.String())
	if err != nil {
		return nil, err
	}
	return d.pool(), nil
}

// GetPoolByName returns the pool by name.
func (s *Store) GetPoolByName(ctx context.Context, name string) (*pharox.Pool, error) {
	d, err := s.findPool(ctx, bson.D{{Key: "name", Value: name}}, fmt.Sprintf("%q", name))
	if err != nil {
		return nil, err
	}
	return d.pool(), nil
}

// ListPools returns every pool ordered by name.
func (s *Store) ListPools(ctx context.Context) ([]*pharox.Pool, error) {
	var ds []poolDoc
	if err := s.findAll(ctx, s.pools, bson.D{}, bson.D{{Key: "name", Value: 1}}, &ds); err != nil {
		return nil, fmt.Errorf("mongo: list pools: %w", err)
	}
	out := make([]*pharox.Pool, len(ds))
	for i := range ds {
		out[i] = ds[i].pool()
	}
	return out, nil
}

// DeletePool deletes the pool with its proxies, ended leases, session
// bindings and round-robin cursor; ErrInUse while a lease is active.
func (s *Store) DeletePool(ctx context.Context, id uuid.UUID) error {
	pid := idString(id)
	if _, err := s.findPool(ctx, bson.D{{Key: "_id", Value: pid}}, id.String()); err != nil {
		return err
	}
	byPool := bson.D{{Key: "pool", Value: pid}}
	n, err := s.slots.CountDocuments(ctx, byPool)
	if err != nil {
		return fmt.Errorf("mongo: delete pool %s: %w", id, wrapErr(err))
	}
	if n > 0 {
		return fmt.Errorf("mongo: delete pool %s: %d active leases: %w", id, n, pharox.ErrInUse)
	}
	// The pool goes first, so no acquisition finds it while its proxies go.
	if _, err := s.pools.DeleteOne(ctx, bson.D{{Key: "_id", Value: pid}}); err != nil {
		return fmt.Errorf("mongo: delete pool %s: %w", id, wrapErr(err))
	}
	for _, c := range []*mongo.Collection{s.proxies, s.loads, s.leases, s.sessions, s.verdicts, s.targets} {
		if _, err := c.DeleteMany(ctx, byPool); err != nil {
			return fmt.Errorf("mongo: delete pool %s: %w", id, wrapErr(err))
		}
	}
	if _, err := s.cursors.DeleteOne(ctx, bson.D{{Key: "_id", Value: pid}}); err != nil {
		return fmt.Errorf("mongo: delete pool %s: %w", id, wrapErr(err))
	}
	// Its quota and its proxies' go with it (usage buckets stay: history).
	var qs []quotaDoc
	f := bson.D{{Key: "kind", Value: kindQuota}, {Key: "$or", Value: bson.A{
		bson.D{{Key: "_id", Value: quotaKey(pharox.QuotaPool, pid)}}, bson.D{{Key: "pool", Value: pid}},
	}}}
	if err := s.findAll(ctx, s.quotas, f, nil, &qs); err != nil {
		return fmt.Errorf("mongo: delete pool %s: %w", id, err)
	}
	if err := s.deleteQuotas(ctx, qs); err != nil {
		return fmt.Errorf("mongo: delete pool %s: %w", id, err)
	}
	return nil
}

// proxyKey is the identity AddProxies keeps unique within a pool.
type proxyKey struct {
	pool, protocol, host, user string
	port                       int
}

// AddProxies stores new proxies, all or none. The unique address index
// rejects duplicates of stored proxies; the proxies inserted before the
// failure are deleted again.
func (s *Store) AddProxies(ctx context.Context, in []pharox.Proxy) ([]*pharox.Proxy, error) {
	if len(in) == 0 {
		return nil, nil
	}
	ts := now()
	docs := make([]any, len(in))
	out := make([]*pharox.Proxy, len(in))
	seen := make(map[proxyKey]bool, len(in))
	pools := map[uuid.UUID]bool{}
	for i := range in {
		p := in[i].Clone()
		p.Normalize()
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("mongo: add proxies: %w", err)
		}
		if p.ID == uuid.Nil {
			p.ID = uuid.New()
		}
		if !pools[p.PoolID] {
			if _, err := s.findPool(ctx, bson.D{{Key: "_id", Value: idString(p.PoolID)}}, p.PoolID.String()); err != nil {
				return nil, fmt.Errorf("mongo: add proxies: %w", err)
			}
			pools[p.PoolID] = true
		}
		k := proxyKey{pool: idString(p.PoolID), protocol: string(p.Protocol), host: p.Host, port: p.Port}
		if p.Credentials != nil {
			k.user = p.Credentials.User
		}
		if seen[k] {
			return nil, fmt.Errorf("mongo: add proxies: %s appears twice: %w", p, pharox.ErrAlreadyExists)
		}
		seen[k] = true
		p.CurrentLeases = 0
		p.CheckedAt, p.LatencyMS, p.LastError, p.LastStatusCode, p.FailureStreak, p.StatusChangedAt = nil, 0, "", 0, 0, nil
		p.CreatedAt = ts
		docs[i] = newProxyDoc(p)
		out[i] = p
	}
	_, err := s.proxies.InsertMany(ctx, docs)
	if err != nil {
		// Undo what went in: with ordered inserts, the documents before
		// the first failed one.
		upTo := len(docs)
		var bwe mongo.BulkWriteException
		if errors.As(err, &bwe) && len(bwe.WriteErrors) > 0 {
			upTo = bwe.WriteErrors[0].Index
		}
		ids := make(bson.A, 0, upTo)
		for _, d := range docs[:upTo] {
			ids = append(ids, d.(*proxyDoc).ID)
		}
		if _, derr := s.proxies.DeleteMany(context.WithoutCancel(ctx), bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}}); derr != nil {
			return nil, fmt.Errorf("mongo: add proxies: %w (and undoing the partial insert failed: %v)", wrapErr(err), derr)
		}
		if mongo.IsDuplicateKeyError(err) {
			return nil, fmt.Errorf("mongo: add proxies: a proxy with the same pool, protocol, host, port and user exists: %w", pharox.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("mongo: add proxies: %w", wrapErr(err))
	}
	loads := make([]any, len(docs))
	ids := make(bson.A, len(docs))
	for i, d := range docs {
		loads[i] = newLoadDoc(d.(*proxyDoc), 0)
		ids[i] = d.(*proxyDoc).ID
	}
	if _, err := s.loads.InsertMany(ctx, loads, options.InsertMany().SetOrdered(false)); err != nil {
		in := bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}}
		ctx := context.WithoutCancel(ctx)
		_, derr := s.proxies.DeleteMany(ctx, in)
		if derr == nil {
			_, derr = s.loads.DeleteMany(ctx, in)
		}
		if derr != nil {
			return nil, fmt.Errorf("mongo: add proxies: %w (and undoing the insert failed: %v)", wrapErr(err), derr)
		}
		return nil, fmt.Errorf("mongo: add proxies: %w", wrapErr(err))
	}
	return out, nil
}

// countSlots returns how many slot documents matching q each proxy has;
// with live, only those of leases not past ExpiresAt (the ones a
// candidate check must respect: expired ones are reclaimed on touch).
func (s *Store) countSlots(ctx context.Context, q bson.D, live bool) (map[string]int, error) {
	if live {
		q = append(slices.Clone(q), bson.E{Key: "expires_at", Value: bson.D{{Key: "$gt", Value: now()}}})
	}
	cur, err := s.slots.Find(ctx, q, options.Find().SetProjection(bson.D{{Key: "proxy", Value: 1}}))
	if err != nil {
		return nil, wrapErr(err)
	}
	defer cur.Close(ctx)
	out := map[string]int{}
	for cur.Next(ctx) {
		var d struct {
			Proxy string `bson:"proxy"`
		}
		if err := cur.Decode(&d); err != nil {
			return nil, err
		}
		out[d.Proxy]++
	}
	return out, wrapErr(cur.Err())
}

func (s *Store) proxyLeases(ctx context.Context, id string) (int, error) {
	n, err := s.slots.CountDocuments(ctx, bson.D{{Key: "proxy", Value: id}})
	return int(n), wrapErr(err)
}

func (s *Store) getProxyDoc(ctx context.Context, id string) (*proxyDoc, error) {
	var d proxyDoc
	err := s.proxies.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, pharox.ErrProxyNotFound
	}
	if err != nil {
		return nil, wrapErr(err)
	}
	return &d, nil
}

// GetProxy returns the proxy by id, with its active leases counted.
func (s *Store) GetProxy(ctx context.Context, id uuid.UUID) (*pharox.Proxy, error) {
	d, err := s.getProxyDoc(ctx, idString(id))
	if err != nil {
		return nil, fmt.Errorf("mongo: get proxy %s: %w", id, err)
	}
	n, err := s.proxyLeases(ctx, d.ID)
	if err != nil {
		return nil, fmt.Errorf("mongo: get proxy %s: %w", id, err)
	}
	return d.proxy(n), nil
}

// ListProxies returns the pool's proxies ordered by id.
func (s *Store) ListProxies(ctx context.Context, poolID uuid.UUID) ([]*pharox.Proxy, error) {
	pid := idString(poolID)
	if _, err := s.findPool(ctx, bson.D{{Key: "_id", Value: pid}}, poolID.String()); err != nil {
		return nil, err
	}
	var ds []proxyDoc
	if err := s.findAll(ctx, s.proxies, bson.D{{Key: "pool", Value: pid}}, bson.D{{Key: "_id", Value: 1}}, &ds); err != nil {
		return nil, fmt.Errorf("mongo: list proxies of pool %s: %w", poolID, err)
	}
	counts, err := s.countSlots(ctx, bson.D{{Key: "pool", Value: pid}}, false)
	if err != nil {
		return nil, fmt.Errorf("mongo: list proxies of pool %s: %w", poolID, err)
	}
	out := make([]*pharox.Proxy, len(ds))
	for i := range ds {
		out[i] = ds[i].proxy(counts[ds[i].ID])
	}
	return out, nil
}

// maxCASAttempts bounds compare-and-set loops on one proxy document.
const maxCASAttempts = 32

// updateProxy applies change to the proxy's document with a
// compare-and-set on its write counter, retrying when another write got
// in between. It returns nil, ErrProxyNotFound for an unknown proxy.
func (s *Store) updateProxy(ctx context.Context, id string, change func(p *pharox.Proxy)) (*pharox.Proxy, error) {
	for range maxCASAttempts {
		d, err := s.getProxyDoc(ctx, id)
		if err != nil {
			return nil, err
		}
		p := d.proxy(0)
		change(p)
		nd := newProxyDoc(p)
		set := bson.D{
			{Key: "status", Value: nd.Status}, {Key: "rank", Value: nd.Rank},
			{Key: "latency_ms", Value: nd.LatencyMS}, {Key: "last_error", Value: nd.LastError},
			{Key: "last_status_code", Value: nd.LastStatusCode}, {Key: "failure_streak", Value: nd.FailureStreak},
			{Key: "protocol", Value: nd.Protocol},
			{Key: "v", Value: d.V + 1},
		}
		var unset bson.D
		for _, f := range []struct {
			key string
			t   *time.Time
		}{{"checked_at", nd.CheckedAt}, {"status_changed_at", nd.StatusChangedAt}} {
			if f.t != nil {
				set = append(set, bson.E{Key: f.key, Value: *f.t})
			} else {
				unset = append(unset, bson.E{Key: f.key, Value: ""})
			}
		}
		upd := bson.D{{Key: "$set", Value: set}}
		if len(unset) > 0 {
			upd = append(upd, bson.E{Key: "$unset", Value: unset})
		}
		res, err := s.proxies.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "v", Value: d.V}}, upd)
		if err != nil {
			if mongo.IsDuplicateKeyError(err) {
				return nil, fmt.Errorf("%w: another proxy of the pool has that address", pharox.ErrAlreadyExists)
			}
			return nil, wrapErr(err)
		}
		if res.MatchedCount == 1 {
			if nd.Rank != d.Rank {
				if _, err := s.loads.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}}, bson.D{{Key: "$set", Value: bson.D{{Key: "rank", Value: nd.Rank}}}}); err != nil {
					return nil, wrapErr(err)
				}
			}
			n, err := s.proxyLeases(ctx, id)
			if err != nil {
				return nil, err
			}
			p.CurrentLeases = n
			return p, nil
		}
	}
	return nil, fmt.Errorf("%w: proxy %s kept changing under %d attempts to update it", pharox.ErrUnavailable, id, maxCASAttempts)
}

// SetProxyStatus sets a proxy's status by hand and resets its failure
// streak, stamping StatusChangedAt when the status changes.
func (s *Store) SetProxyStatus(ctx context.Context, id uuid.UUID, status pharox.ProxyStatus) (*pharox.Proxy, error) {
	if !status.Valid() {
		return nil, fmt.Errorf("mongo: set proxy status: %w: unknown status %q (want active, slow, inactive or banned)", pharox.ErrInvalidArgument, status)
	}
	ts := now()
	p, err := s.updateProxy(ctx, idString(id), func(p *pharox.Proxy) {
		p.FailureStreak = 0
		if p.Status != status {
			p.Status = status
			t := ts
			p.StatusChangedAt = &t
		}
	})
	if err != nil {
		return nil, fmt.Errorf("mongo: set proxy status %s: %w", id, err)
	}
	return p, nil
}

// ApplyHealthCheckResult applies r with Proxy.ApplyHealthCheck under a
// compare-and-set; an unknown proxy gives (nil, nil).
func (s *Store) ApplyHealthCheckResult(ctx context.Context, r pharox.HealthCheckResult) (*pharox.Proxy, error) {
	r.CheckedAt = r.CheckedAt.UTC().Truncate(time.Millisecond)
	p, err := s.updateProxy(ctx, idString(r.ProxyID), func(p *pharox.Proxy) { p.ApplyHealthCheck(r) })
	if errors.Is(err, pharox.ErrProxyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mongo: apply health check to %s: %w", r.ProxyID, err)
	}
	return p, nil
}

// DeleteProxy deletes a proxy and its ended leases; ErrInUse while it has
// an active lease.
func (s *Store) DeleteProxy(ctx context.Context, id uuid.UUID) error {
	pid := idString(id)
	if _, err := s.getProxyDoc(ctx, pid); err != nil {
		return fmt.Errorf("mongo: delete proxy %s: %w", id, err)
	}
	n, err := s.proxyLeases(ctx, pid)
	if err != nil {
		return fmt.Errorf("mongo: delete proxy %s: %w", id, err)
	}
	if n > 0 {
		return fmt.Errorf("mongo: delete proxy %s: %d active leases: %w", id, n, pharox.ErrInUse)
	}
	if _, err := s.proxies.DeleteOne(ctx, bson.D{{Key: "_id", Value: pid}}); err != nil {
		return fmt.Errorf("mongo: delete proxy %s: %w", id, wrapErr(err))
	}
	if _, err := s.loads.DeleteOne(ctx, bson.D{{Key: "_id", Value: pid}}); err != nil {
		return fmt.Errorf("mongo: delete proxy %s: %w", id, wrapErr(err))
	}
	for _, c := range []*mongo.Collection{s.leases, s.verdicts, s.targets} {
		if _, err := c.DeleteMany(ctx, bson.D{{Key: "proxy", Value: pid}}); err != nil {
			return fmt.Errorf("mongo: delete proxy %s: %w", id, wrapErr(err))
		}
	}
	var qs []quotaDoc
	if err := s.findAll(ctx, s.quotas, bson.D{{Key: "_id", Value: quotaKey(pharox.QuotaProxy, pid)}}, nil, &qs); err != nil {
		return fmt.Errorf("mongo: delete proxy %s: %w", id, err)
	}
	if err := s.deleteQuotas(ctx, qs); err != nil {
		return fmt.Errorf("mongo: delete proxy %s: %w", id, err)
	}
	return nil
}

// GetLease returns a lease by id: its ended record if it has one, else its
// active slot.
func (s *Store) GetLease(ctx context.Context, id uuid.UUID) (*pharox.Lease, error) {
	d, err := s.findLease(ctx, idString(id))
	if err != nil {
		return nil, fmt.Errorf("mongo: get lease %s: %w", id, err)
	}
	return d.lease(), nil
}

// findLease looks a lease up: the ended record wins over a slot not yet
// deleted; the second look at leases catches a lease that ended between
// the first two reads.
func (s *Store) findLease(ctx context.Context, id string) (*leaseDoc, error) {
	q := bson.D{{Key: "_id", Value: id}}
	for i, c := range []*mongo.Collection{s.leases, s.slots, s.leases} {
		var d leaseDoc
		err := c.FindOne(ctx, q).Decode(&d)
		if err == nil {
			if i == 1 {
				d.Status = string(pharox.LeaseActive)
			}
			return &d, nil
		}
		if !errors.Is(err, mongo.ErrNoDocuments) {
			return nil, wrapErr(err)
		}
	}
	return nil, pharox.ErrLeaseNotFound
}

// ListLeases returns the leases matching q, oldest AcquiredAt first.
func (s *Store) ListLeases(ctx context.Context, q pharox.LeaseQuery) ([]*pharox.Lease, error) {
	if q.Status != "" && !q.Status.Valid() {
		return nil, fmt.Errorf("mongo: list leases: %w: unknown lease status %q", pharox.ErrInvalidArgument, q.Status)
	}
	if q.Limit < 0 {
		return nil, fmt.Errorf("mongo: list leases: %w: negative limit %d", pharox.ErrInvalidArgument, q.Limit)
	}
	filter := bson.D{}
	for _, f := range []struct {
		key string
		id  uuid.UUID
	}{{"pool", q.PoolID}, {"proxy", q.ProxyID}, {"consumer", q.ConsumerID}} {
		if f.id != uuid.Nil {
			filter = append(filter, bson.E{Key: f.key, Value: idString(f.id)})
		}
	}
	opts := options.Find().SetSort(bson.D{{Key: "acquired_at", Value: 1}, {Key: "_id", Value: 1}})
	if q.Limit > 0 {
		opts.SetLimit(int64(q.Limit))
	}
	var ended, active []leaseDoc
	if q.Status != pharox.LeaseActive {
		ef := slices.Clone(filter)
		if q.Status != "" {
			ef = append(ef, bson.E{Key: "status", Value: string(q.Status)})
		}
		cur, err := s.leases.Find(ctx, ef, opts)
		if err == nil {
			err = cur.All(ctx, &ended)
		}
		if err != nil {
			return nil, fmt.Errorf("mongo: list leases: %w", wrapErr(err))
		}
	}
	if q.Status == "" || q.Status == pharox.LeaseActive {
		cur, err := s.slots.Find(ctx, filter, opts)
		if err == nil {
			err = cur.All(ctx, &active)
		}
		if err != nil {
			return nil, fmt.Errorf("mongo: list leases: %w", wrapErr(err))
		}
	}
	endedIDs := make(map[string]bool, len(ended))
	for _, d := range ended {
		endedIDs[d.ID] = true
	}
	all := ended
	for _, d := range active {
		if !endedIDs[d.ID] {
			d.Status = string(pharox.LeaseActive)
			all = append(all, d)
		}
	}
	slices.SortStableFunc(all, func(a, b leaseDoc) int {
		if c := a.AcquiredAt.Compare(b.AcquiredAt); c != 0 {
			return c
		}
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	if q.Limit > 0 && len(all) > q.Limit {
		all = all[:q.Limit]
	}
	out := make([]*pharox.Lease, len(all))
	for i := range all {
		out[i] = all[i].lease()
	}
	return out, nil
}

// PurgeEndedLeases deletes released and expired leases that ended before
// endedBefore, with their verdict claims.
func (s *Store) PurgeEndedLeases(ctx context.Context, endedBefore time.Time) (int, error) {
	q := bson.D{{Key: "released_at", Value: bson.D{{Key: "$lt", Value: endedBefore.UTC()}}}}
	cur, err := s.leases.Find(ctx, q, options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		return 0, fmt.Errorf("mongo: purge ended leases: %w", wrapErr(err))
	}
	var ids []struct {
		ID string `bson:"_id"`
	}
	if err := cur.All(ctx, &ids); err != nil {
		return 0, fmt.Errorf("mongo: purge ended leases: %w", wrapErr(err))
	}
	n := 0
	for lo := 0; lo < len(ids); lo += 1000 {
		batch := make(bson.A, 0, 1000)
		for _, d := range ids[lo:min(lo+1000, len(ids))] {
			batch = append(batch, d.ID)
		}
		in := bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: batch}}}}
		res, err := s.leases.DeleteMany(ctx, in)
		if err != nil {
			return n, fmt.Errorf("mongo: purge ended leases: %w", wrapErr(err))
		}
		n += int(res.DeletedCount)
		if _, err := s.verdicts.DeleteMany(ctx, in); err != nil {
			return n, fmt.Errorf("mongo: purge ended leases: %w", wrapErr(err))
		}
	}
	return n, nil
}
