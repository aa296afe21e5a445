package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// EnsureConsumer returns the consumer with this name, creating it if needed.
func (s *Store) EnsureConsumer(ctx context.Context, name string) (*pharox.Consumer, error) {
	if strings.TrimSpace(name) == "" {
		return nil, fmt.Errorf("sqlite: ensure consumer: %w: consumer name is empty", pharox.ErrInvalidArgument)
	}
	c, err := s.consumerByName(ctx, s.r, name)
	if err == nil || !errors.Is(err, sql.ErrNoRows) {
		if err != nil {
			return nil, fmt.Errorf("sqlite: ensure consumer %q: %w", name, err)
		}
		return c, nil
	}
	err = s.writeTx(ctx, func(tx *wtx) error {
		now := s.stamp()
		if _, err := tx.exec(`INSERT INTO consumers (id, name, created_at) VALUES (?, ?, ?)
			ON CONFLICT (name) DO NOTHING`, idArg(uuid.New()), name, micros(now)); err != nil {
			return err
		}
		c, err = s.consumerByName(ctx, tx, name)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: ensure consumer %q: %w", name, err)
	}
	return c, nil
}

type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (s *Store) consumerByName(ctx context.Context, q queryer, name string) (*pharox.Consumer, error) {
	return scanConsumer(q.QueryRowContext(ctx, `SELECT `+consumerCols+` FROM consumers WHERE name = ?`, name))
}

const consumerCols = `id, name, created_at`

func scanConsumer(sc scanner) (*pharox.Consumer, error) {
	var (
		c       pharox.Consumer
		created int64
	)
	if err := sc.Scan(&c.ID, &c.Name, &created); err != nil {
		return nil, err
	}
	c.CreatedAt = fromMicros(created)
	return &c, nil
}

// GetConsumer returns the consumer by id.
func (s *Store) GetConsumer(ctx context.Context, id uuid.UUID) (*pharox.Consumer, error) {
	c, err := scanConsumer(s.r.QueryRowContext(ctx, `SELECT `+consumerCols+` FROM consumers WHERE id = ?`, idArg(id)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: get consumer %s: %w", id, pharox.ErrConsumerNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: get consumer %s: %w", id, err)
	}
	return c, nil
}

// ListConsumers returns every consumer ordered by name; the UNIQUE
// constraint on name gives the index that serves the ORDER BY.
func (s *Store) ListConsumers(ctx context.Context) ([]*pharox.Consumer, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+consumerCols+` FROM consumers ORDER BY name`)
	out, err := collect(rows, err, scanConsumer)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list consumers: %w", err)
	}
	return out, nil
}

// CreatePool stores a new pool; a zero ID gets a fresh one.
func (s *Store) CreatePool(ctx context.Context, pool pharox.Pool) (*pharox.Pool, error) {
	if err := pool.Validate(); err != nil {
		return nil, fmt.Errorf("sqlite: create pool: %w", err)
	}
	if pool.ID == uuid.Nil {
		pool.ID = uuid.New()
	}
	pool.CreatedAt = s.stamp()
	err := s.writeTx(ctx, func(tx *wtx) error {
		_, err := tx.exec(`INSERT INTO pools (id, name, description, created_at) VALUES (?, ?, ?, ?)`,
			idArg(pool.ID), pool.Name, pool.Description, micros(pool.CreatedAt))
		if isConstraint(err) {
			return fmt.Errorf("pool id %s or name %q in use: %w", pool.ID, pool.Name, pharox.ErrAlreadyExists)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: create pool %q: %w", pool.Name, err)
	}
	return &pool, nil
}

// GetPool returns the pool by id.
func (s *Store) GetPool(ctx context.Context, id uuid.UUID) (*pharox.Pool, error) {
	p, err := scanPool(s.r.QueryRowContext(ctx, `SELECT `+poolCols+` FROM pools WHERE id = ?`, idArg(id)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: get pool %s: %w", id, pharox.ErrPoolNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: get pool %s: %w", id, err)
	}
	return p, nil
}

// GetPoolByName returns the pool by name.
func (s *Store) GetPoolByName(ctx context.Context, name string) (*pharox.Pool, error) {
	p, err := scanPool(s.r.QueryRowContext(ctx, `SELECT `+poolCols+` FROM pools WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: get pool %q: %w", name, pharox.ErrPoolNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: get pool %q: %w", name, err)
	}
	return p, nil
}

// ListPools returns every pool ordered by name.
func (s *Store) ListPools(ctx context.Context) ([]*pharox.Pool, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+poolCols+` FROM pools ORDER BY name`)
	out, err := collect(rows, err, scanPool)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list pools: %w", err)
	}
	return out, nil
}

// DeletePool deletes the pool with its proxies, their ended leases and its
// session bindings, unless one of its proxies holds an active lease.
func (s *Store) DeletePool(ctx context.Context, id uuid.UUID) error {
	err := s.writeTx(ctx, func(tx *wtx) error {
		var name string
		if err := tx.queryRow(`SELECT name FROM pools WHERE id = ?`, idArg(id)).Scan(&name); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return pharox.ErrPoolNotFound
			}
			return err
		}
		now := s.stamp()
		if _, err := reclaimPool(tx, id, now); err != nil {
			return err
		}
		var active int
		if err := tx.queryRow(`SELECT count(*) FROM leases WHERE pool_id = ? AND status = 'active'`, idArg(id)).Scan(&active); err != nil {
			return err
		}
		if active > 0 {
			return errAfterCommit{fmt.Errorf("%d active leases: %w", active, pharox.ErrInUse)}
		}
		// Foreign keys cascade to proxies, leases, sessions and the
		// round-robin position.
		_, err := tx.exec(`DELETE FROM pools WHERE id = ?`, idArg(id))
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlite: delete pool %s: %w", id, err)
	}
	return nil
}

// proxyKey is a proxy's identity within its pool.
type proxyKey struct {
	pool     uuid.UUID
	protocol pharox.Protocol
	host     string
	port     int
	user     string
}

// AddProxies stores new proxies, all or none.
func (s *Store) AddProxies(ctx context.Context, proxies []pharox.Proxy) ([]*pharox.Proxy, error) {
	in := make([]*pharox.Proxy, len(proxies))
	seen := make(map[proxyKey]bool, len(proxies))
	ids := make(map[uuid.UUID]bool, len(proxies))
	for i := range proxies {
		p := proxies[i].Clone()
		p.Normalize()
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("sqlite: add proxies: #%d: %w", i, err)
		}
		if p.PoolID == uuid.Nil {
			return nil, fmt.Errorf("sqlite: add proxies: #%d: %w: pool id is empty", i, pharox.ErrInvalidArgument)
		}
		if p.ID == uuid.Nil {
			p.ID = uuid.New()
		}
		k := proxyKey{pool: p.PoolID, protocol: p.Protocol, host: p.Host, port: p.Port}
		if p.Credentials != nil {
			k.user = p.Credentials.User
		}
		if seen[k] || ids[p.ID] {
			return nil, fmt.Errorf("sqlite: add proxies: #%d %s: duplicate in batch: %w", i, p, pharox.ErrAlreadyExists)
		}
		seen[k], ids[p.ID] = true, true
		// Only Status is taken from the input's state fields.
		*p = pharox.Proxy{
			ID: p.ID, PoolID: p.PoolID, Host: p.Host, Port: p.Port, Protocol: p.Protocol,
			Credentials: p.Credentials, Source: p.Source, Country: p.Country, City: p.City,
			ISP: p.ISP, ASN: p.ASN, Latitude: p.Latitude, Longitude: p.Longitude, Tags: p.Tags,
			Status: p.Status, MaxConcurrency: p.MaxConcurrency,
		}
		if len(p.Tags) == 0 {
			p.Tags = nil
		}
		in[i] = p
	}
	err := s.writeTx(ctx, func(tx *wtx) error {
		now := s.stamp()
		pools := map[uuid.UUID]bool{}
		for i, p := range in {
			if !pools[p.PoolID] {
				var one int
				err := tx.queryRow(`SELECT 1 FROM pools WHERE id = ?`, idArg(p.PoolID)).Scan(&one)
				if errors.Is(err, sql.ErrNoRows) {
					return fmt.Errorf("#%d: pool %s: %w", i, p.PoolID, pharox.ErrPoolNotFound)
				}
				if err != nil {
					return err
				}
				pools[p.PoolID] = true
			}
			p.CreatedAt = now
			tags, err := tagsValue(p.Tags)
			if err != nil {
				return err
			}
			var user, pass string
			if p.Credentials != nil {
				user, pass = p.Credentials.User, p.Credentials.Password
			}
			_, err = tx.exec(`INSERT INTO proxies (id, pool_id, host, port, protocol, has_credentials,
				username, password, source, country, city, isp, asn, latitude, longitude, tags,
				status, max_concurrency, created_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				idArg(p.ID), idArg(p.PoolID), p.Host, p.Port, string(p.Protocol), p.Credentials != nil,
				user, pass, p.Source, p.Country, p.City, p.ISP, nullInt(p.ASN), nullFloat(p.Latitude),
				nullFloat(p.Longitude), tags, string(p.Status), nullInt(p.MaxConcurrency), micros(now))
			if isConstraint(err) {
				return fmt.Errorf("#%d %s: %w", i, p, pharox.ErrAlreadyExists)
			}
			if err != nil {
				return fmt.Errorf("#%d %s: %w", i, p, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: add proxies: %w", err)
	}
	return in, nil
}

// GetProxy returns the proxy by id.
func (s *Store) GetProxy(ctx context.Context, id uuid.UUID) (*pharox.Proxy, error) {
	if err := s.reclaimIfDue(ctx); err != nil {
		return nil, fmt.Errorf("sqlite: get proxy %s: %w", id, err)
	}
	p, err := scanProxy(s.r.QueryRowContext(ctx, `SELECT `+proxyCols+` FROM proxies WHERE id = ?`, idArg(id)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: get proxy %s: %w", id, pharox.ErrProxyNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: get proxy %s: %w", id, err)
	}
	return p, nil
}

// ListProxies returns the pool's proxies ordered by id.
func (s *Store) ListProxies(ctx context.Context, poolID uuid.UUID) ([]*pharox.Proxy, error) {
	if err := s.reclaimIfDue(ctx); err != nil {
		return nil, fmt.Errorf("sqlite: list proxies of pool %s: %w", poolID, err)
	}
	out, err := s.listProxies(ctx, poolID)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list proxies of pool %s: %w", poolID, err)
	}
	return out, nil
}

func (s *Store) listProxies(ctx context.Context, poolID uuid.UUID) ([]*pharox.Proxy, error) {
	// One read transaction: the pool check and the list see one snapshot.
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	var one int
	if err := tx.QueryRowContext(ctx, `SELECT 1 FROM pools WHERE id = ?`, idArg(poolID)).Scan(&one); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, pharox.ErrPoolNotFound
		}
		return nil, err
	}
	rows, err := tx.QueryContext(ctx, `SELECT `+proxyCols+` FROM proxies WHERE pool_id = ? ORDER BY id`, idArg(poolID))
	return collect(rows, err, scanProxy)
}

// SetProxyStatus sets a proxy's status by hand and resets its failure streak.
func (s *Store) SetProxyStatus(ctx context.Context, id uuid.UUID, status pharox.ProxyStatus) (*pharox.Proxy, error) {
	if !status.Valid() {
		return nil, fmt.Errorf("sqlite: set proxy %s status: %w: unknown status %q", id, pharox.ErrInvalidArgument, status)
	}
	var out *pharox.Proxy
	err := s.writeTx(ctx, func(tx *wtx) error {
		now := s.stamp()
		if _, err := reclaimProxy(tx, id, now); err != nil {
			return err
		}
		p, err := scanProxy(tx.queryRow(`SELECT `+proxyCols+` FROM proxies WHERE id = ?`, idArg(id)))
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrProxyNotFound
		}
		if err != nil {
			return err
		}
		if p.Status != status {
			p.Status = status
			p.StatusChangedAt = &now
		}
		p.FailureStreak = 0
		if _, err := tx.exec(`UPDATE proxies SET status = ?, failure_streak = 0, status_changed_at = ? WHERE id = ?`,
			string(p.Status), nullTime(microsPtr(p.StatusChangedAt)), idArg(id)); err != nil {
			return err
		}
		out = p
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: set proxy %s status: %w", id, err)
	}
	return out, nil
}

// DeleteProxy deletes a proxy and its ended leases, unless it holds an
// active lease.
func (s *Store) DeleteProxy(ctx context.Context, id uuid.UUID) error {
	err := s.writeTx(ctx, func(tx *wtx) error {
		now := s.stamp()
		if _, err := reclaimProxy(tx, id, now); err != nil {
			return err
		}
		var current int
		if err := tx.queryRow(`SELECT current_leases FROM proxies WHERE id = ?`, idArg(id)).Scan(&current); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return pharox.ErrProxyNotFound
			}
			return err
		}
		if current > 0 {
			return errAfterCommit{fmt.Errorf("%d active leases: %w", current, pharox.ErrInUse)}
		}
		_, err := tx.exec(`DELETE FROM proxies WHERE id = ?`, idArg(id))
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlite: delete proxy %s: %w", id, err)
	}
	return nil
}

// GetLease returns a lease by id. Ended leases are kept until
// PurgeEndedLeases deletes them.
func (s *Store) GetLease(ctx context.Context, id uuid.UUID) (*pharox.Lease, error) {
	if err := s.reclaimIfDue(ctx); err != nil {
		return nil, fmt.Errorf("sqlite: get lease %s: %w", id, err)
	}
	l, err := scanLease(s.r.QueryRowContext(ctx, `SELECT `+leaseCols+` FROM leases WHERE id = ?`, idArg(id)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: get lease %s: %w", id, pharox.ErrLeaseNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: get lease %s: %w", id, err)
	}
	return l, nil
}

// ListLeases returns the leases matching q, oldest AcquiredAt first.
func (s *Store) ListLeases(ctx context.Context, q pharox.LeaseQuery) ([]*pharox.Lease, error) {
	if q.Status != "" && !q.Status.Valid() {
		return nil, fmt.Errorf("sqlite: list leases: %w: unknown lease status %q", pharox.ErrInvalidArgument, q.Status)
	}
	if q.Limit < 0 {
		return nil, fmt.Errorf("sqlite: list leases: %w: negative limit", pharox.ErrInvalidArgument)
	}
	if err := s.reclaimIfDue(ctx); err != nil {
		return nil, fmt.Errorf("sqlite: list leases: %w", err)
	}
	var (
		where []string
		args  []any
	)
	if q.PoolID != uuid.Nil {
		// Through the pool's proxies and the lease index by proxy: a lease
		// belongs to its proxy's pool, and proxies never change pools.
		where = append(where, "proxy_id IN (SELECT id FROM proxies WHERE pool_id = ?) AND pool_id = ?")
		args = append(args, idArg(q.PoolID), idArg(q.PoolID))
	}
	if q.ProxyID != uuid.Nil {
		where, args = append(where, "proxy_id = ?"), append(args, idArg(q.ProxyID))
	}
	if q.ConsumerID != uuid.Nil {
		where, args = append(where, "consumer_id = ?"), append(args, idArg(q.ConsumerID))
	}
	if q.Status != "" {
		where, args = append(where, "status = ?"), append(args, string(q.Status))
	}
	query := `SELECT ` + leaseCols + ` FROM leases`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	query += ` ORDER BY acquired_at, id`
	if q.Limit > 0 {
		query += ` LIMIT ?`
		args = append(args, q.Limit)
	}
	rows, err := s.r.QueryContext(ctx, query, args...)
	out, err := collect(rows, err, scanLease)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list leases: %w", err)
	}
	return out, nil
}

// purgeBatch bounds the leases one purge transaction deletes.
const purgeBatch = 1000

// PurgeEndedLeases deletes released and expired leases that ended before
// endedBefore, in transactions of purgeBatch leases. A lease that ended
// before endedBefore was acquired before it, and store-made lease ids sort
// by acquisition time (see newLeaseID), so the purge walks only the primary
// key range of leases acquired before endedBefore. Caller-chosen ids
// (AcquireRequest.LeaseID) sort anywhere: their ended leases have an index
// of their own.
func (s *Store) PurgeEndedLeases(ctx context.Context, endedBefore time.Time) (int, error) {
	bound, before := leaseIDBound(endedBefore), micros(endedBefore)
	total := 0
	for _, q := range []struct {
		query string
		args  []any
	}{
		{`DELETE FROM leases WHERE id IN (SELECT id FROM leases
			WHERE id < ? AND status <> 'active' AND released_at < ? LIMIT ?)`, []any{bound, before, purgeBatch}},
		{`DELETE FROM leases WHERE id IN (SELECT id FROM leases INDEXED BY leases_caller_id_ended
			WHERE caller_id = 1 AND status <> 'active' AND released_at < ? LIMIT ?)`, []any{before, purgeBatch}},
	} {
		for {
			var n int64
			err := s.writeTx(ctx, func(tx *wtx) error {
				res, err := tx.exec(q.query, q.args...)
				if err != nil {
					return err
				}
				n, err = res.RowsAffected()
				return err
			})
			total += int(n)
			if err != nil {
				return total, fmt.Errorf("sqlite: purge ended leases: %w", err)
			}
			if n < purgeBatch {
				break
			}
		}
	}
	return total, nil
}

func microsPtr(t *time.Time) *int64 {
	if t == nil {
		return nil
	}
	v := micros(*t)
	return &v
}
