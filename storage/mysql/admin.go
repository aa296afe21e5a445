package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// EnsureConsumer returns the consumer with this name, creating it if needed.
// Concurrent calls with one name insert at most one row (the name is
// unique) and all read that row.
func (s *Store) EnsureConsumer(ctx context.Context, name string) (*pharox.Consumer, error) {
	if err := pharox.ValidateName("consumer name", name); err != nil {
		return nil, fail("mysql: ensure consumer: %w", err)
	}
	get := func() (*pharox.Consumer, error) {
		return scanConsumer(s.db.QueryRowContext(ctx, s.q(`SELECT `+consumerCols+` FROM {p}consumers WHERE name = ?`), name))
	}
	c, err := get()
	if errors.Is(err, sql.ErrNoRows) {
		// INSERT IGNORE would also hide other errors; a no-op update on a
		// duplicate name ignores only that one.
		if _, err = s.db.ExecContext(ctx, s.q(`INSERT INTO {p}consumers (id, name, created_at) VALUES (?, ?, UTC_TIMESTAMP(6))
			ON DUPLICATE KEY UPDATE name = name`), idArg(uuid.New()), name); err == nil {
			c, err = get()
		}
	}
	if err != nil {
		return nil, fail("mysql: ensure consumer %q: %w", name, err)
	}
	return c, nil
}

// GetConsumer returns the consumer by id.
func (s *Store) GetConsumer(ctx context.Context, id uuid.UUID) (*pharox.Consumer, error) {
	c, err := scanConsumer(s.db.QueryRowContext(ctx, s.q(`SELECT `+consumerCols+` FROM {p}consumers WHERE id = ?`), idArg(id)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fail("mysql: get consumer %s: %w", id, pharox.ErrConsumerNotFound)
	}
	if err != nil {
		return nil, fail("mysql: get consumer %s: %w", id, err)
	}
	return c, nil
}

// ListConsumers returns every consumer ordered by name.
func (s *Store) ListConsumers(ctx context.Context) ([]*pharox.Consumer, error) {
	out, err := list(ctx, s.db, s.q(`SELECT `+consumerCols+` FROM {p}consumers ORDER BY name`), nil, scanConsumer)
	if err != nil {
		return nil, fail("mysql: list consumers: %w", err)
	}
	return out, nil
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// list runs query and scans every row with scan.
func list[T any](ctx context.Context, q querier, query string, args []any, scan func(scanner) (*T, error)) ([]*T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []*T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// CreatePool stores a new pool and its round-robin cursor.
func (s *Store) CreatePool(ctx context.Context, pool pharox.Pool) (*pharox.Pool, error) {
	if err := pool.Validate(); err != nil {
		return nil, fail("mysql: create pool: %w", err)
	}
	if pool.ID == uuid.Nil {
		pool.ID = uuid.New()
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT UTC_TIMESTAMP(6)`).Scan(&pool.CreatedAt); err != nil {
			return err
		}
		pool.CreatedAt = utc(pool.CreatedAt)
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO {p}pools (id, name, description, created_at) VALUES (?, ?, ?, ?)`),
			idArg(pool.ID), pool.Name, pool.Description, pool.CreatedAt)
		switch code(err) {
		case errDupEntry:
			return fmt.Errorf("pool id %s or name %q in use: %w", pool.ID, pool.Name, pharox.ErrAlreadyExists)
		case errDataTooLong:
			return fmt.Errorf("%w: pool description longer than the database allows (16 MB)", pharox.ErrInvalidArgument)
		}
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, s.q(`INSERT INTO {p}pool_cursors (pool_id) VALUES (?) ON DUPLICATE KEY UPDATE last_proxy_id = NULL`), idArg(pool.ID))
		return err
	})
	if err != nil {
		return nil, fail("mysql: create pool %q: %w", pool.Name, err)
	}
	return &pool, nil
}

// GetPool returns the pool by id.
func (s *Store) GetPool(ctx context.Context, id uuid.UUID) (*pharox.Pool, error) {
	p, err := scanPool(s.db.QueryRowContext(ctx, s.q(`SELECT `+poolCols+` FROM {p}pools WHERE id = ?`), idArg(id)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fail("mysql: get pool %s: %w", id, pharox.ErrPoolNotFound)
	}
	if err != nil {
		return nil, fail("mysql: get pool %s: %w", id, err)
	}
	return p, nil
}

// GetPoolByName returns the pool by name.
func (s *Store) GetPoolByName(ctx context.Context, name string) (*pharox.Pool, error) {
	p, err := scanPool(s.db.QueryRowContext(ctx, s.q(`SELECT `+poolCols+` FROM {p}pools WHERE name = ?`), name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fail("mysql: get pool %q: %w", name, pharox.ErrPoolNotFound)
	}
	if err != nil {
		return nil, fail("mysql: get pool %q: %w", name, err)
	}
	return p, nil
}

// ListPools returns every pool ordered by name.
func (s *Store) ListPools(ctx context.Context) ([]*pharox.Pool, error) {
	out, err := list(ctx, s.db, s.q(`SELECT `+poolCols+` FROM {p}pools ORDER BY name`), nil, scanPool)
	if err != nil {
		return nil, fail("mysql: list pools: %w", err)
	}
	return out, nil
}

// DeletePool deletes the pool with its proxies, their ended leases, its
// session bindings and cursor, and the quotas of the pool and of its
// proxies, unless one of its proxies holds an active lease. It locks the
// pool and all of its proxies, reclaiming their expired leases first.
// Usage buckets stay: they are history.
func (s *Store) DeletePool(ctx context.Context, id uuid.UUID) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var got string
		err := tx.QueryRowContext(ctx, s.q(`SELECT id FROM {p}pools WHERE id = ? FOR UPDATE`), idArg(id)).Scan(&got)
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrPoolNotFound
		}
		if err != nil {
			return err
		}
		type row struct {
			id  uuid.UUID
			cur int
		}
		rows, err := tx.QueryContext(ctx, s.q(`SELECT id, current_leases FROM {p}proxies WHERE pool_id = ? ORDER BY id FOR UPDATE`), idArg(id))
		if err != nil {
			return err
		}
		var busy []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.id, &r.cur); err != nil {
				rows.Close()
				return err
			}
			if r.cur > 0 {
				busy = append(busy, r)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		active := 0
		for _, r := range busy {
			n, err := s.reclaimLocked(ctx, stdTx{tx}, r.id)
			if err != nil {
				return err
			}
			active += r.cur - n
		}
		if active > 0 {
			return errAfterCommit{fmt.Errorf("%d active leases: %w", active, pharox.ErrInUse)}
		}
		for _, q := range []string{
			`DELETE FROM {p}quotas WHERE subject = 'pool' AND subject_id = ?`,
			`DELETE FROM {p}quotas WHERE subject = 'proxy' AND subject_id IN (SELECT id FROM {p}proxies WHERE pool_id = ?)`,
			`DELETE FROM {p}leases WHERE pool_id = ?`,
			`DELETE FROM {p}sessions WHERE pool_id = ?`,
			`DELETE FROM {p}pool_cursors WHERE pool_id = ?`,
			`DELETE FROM {p}proxies WHERE pool_id = ?`,
			`DELETE FROM {p}pools WHERE id = ?`,
		} {
			if _, err := tx.ExecContext(ctx, s.q(q), idArg(id)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fail("mysql: delete pool %s: %w", id, err)
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

// insertBatch is how many proxies one INSERT statement carries.
const insertBatch = 200

// AddProxies stores new proxies, all or none, in one transaction of
// multi-row INSERTs.
func (s *Store) AddProxies(ctx context.Context, proxies []pharox.Proxy) ([]*pharox.Proxy, error) {
	in := make([]*pharox.Proxy, len(proxies))
	seen := make(map[proxyKey]bool, len(proxies))
	ids := make(map[uuid.UUID]bool, len(proxies))
	for i := range proxies {
		p := proxies[i].Clone()
		p.Normalize()
		if err := p.Validate(); err != nil {
			return nil, fail("mysql: add proxies: #%d: %w", i, err)
		}
		if p.PoolID == uuid.Nil {
			return nil, fail("mysql: add proxies: #%d: %w: pool id is empty", i, pharox.ErrInvalidArgument)
		}
		if p.ID == uuid.Nil {
			p.ID = uuid.New()
		}
		k := proxyKey{pool: p.PoolID, protocol: p.Protocol, host: p.Host, port: p.Port}
		if p.Credentials != nil {
			k.user = p.Credentials.User
		}
		if seen[k] || ids[p.ID] {
			return nil, fail("mysql: add proxies: #%d %s: duplicate in batch: %w", i, p, pharox.ErrAlreadyExists)
		}
		seen[k], ids[p.ID] = true, true
		if err := checkLengths(p); err != nil {
			return nil, fail("mysql: add proxies: #%d: %w", i, err)
		}
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
	if len(in) == 0 {
		return []*pharox.Proxy{}, nil
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var now time.Time
		if err := tx.QueryRowContext(ctx, `SELECT UTC_TIMESTAMP(6)`).Scan(&now); err != nil {
			return err
		}
		now = utc(now)
		const row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
		for start := 0; start < len(in); start += insertBatch {
			batch := in[start:min(start+insertBatch, len(in))]
			args := make([]any, 0, len(batch)*20)
			for _, p := range batch {
				p.CreatedAt = now
				tags, err := tagsValue(p.Tags)
				if err != nil {
					return err
				}
				var user string
				var pass any
				if p.Credentials != nil {
					user, pass = p.Credentials.User, p.Credentials.Password
				}
				args = append(args, idArg(p.ID), idArg(p.PoolID), p.Host, p.Port, string(p.Protocol), p.Credentials != nil,
					user, pass, p.Source, p.Country, p.City, p.ISP, nullInt(p.ASN), nullFloat(p.Latitude),
					nullFloat(p.Longitude), tags, string(p.Status), nullInt(p.MaxConcurrency), rand.Int64(), now)
			}
			_, err := tx.ExecContext(ctx, s.q(`INSERT INTO {p}proxies (id, pool_id, host, port, protocol, has_credentials,
				username, password, source, country, city, isp, asn, latitude, longitude, tags,
				status, max_concurrency, rnd, created_at) VALUES `+strings.TrimSuffix(strings.Repeat(row+", ", len(batch)), ", ")), args...)
			switch code(err) {
			case 0:
			case errDupEntry:
				return fmt.Errorf("a proxy with the same pool, protocol, host, port and user (or id) exists: %w", pharox.ErrAlreadyExists)
			case errNoReferencedRow:
				return fmt.Errorf("pool of a proxy: %w", pharox.ErrPoolNotFound)
			case errDataTooLong:
				return fmt.Errorf("%w: a proxy field is too long for the database: %v", pharox.ErrInvalidArgument, err)
			default:
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fail("mysql: add proxies: %w", err)
	}
	return in, nil
}

// Column limits of the proxies table (bytes).
var proxyLimits = []struct {
	name string
	max  int
	get  func(p *pharox.Proxy) string
}{
	{"host", 253, func(p *pharox.Proxy) string { return p.Host }},
	{"user name", 255, func(p *pharox.Proxy) string {
		if p.Credentials == nil {
			return ""
		}
		return p.Credentials.User
	}},
	{"source", 255, func(p *pharox.Proxy) string { return p.Source }},
	{"country", 64, func(p *pharox.Proxy) string { return p.Country }},
	{"city", 255, func(p *pharox.Proxy) string { return p.City }},
	{"isp", 255, func(p *pharox.Proxy) string { return p.ISP }},
}

// checkLengths names the first field longer than its column.
func checkLengths(p *pharox.Proxy) error {
	for _, l := range proxyLimits {
		if n := len(l.get(p)); n > l.max {
			return fmt.Errorf("%w: proxy: %s is %d bytes, at most %d are allowed", pharox.ErrInvalidArgument, l.name, n, l.max)
		}
	}
	return nil
}

// GetProxy returns the proxy by id.
func (s *Store) GetProxy(ctx context.Context, id uuid.UUID) (*pharox.Proxy, error) {
	p, err := scanProxy(s.db.QueryRowContext(ctx, s.q(`SELECT `+proxyCols+` FROM {p}proxies WHERE id = ?`), idArg(id)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fail("mysql: get proxy %s: %w", id, pharox.ErrProxyNotFound)
	}
	if err != nil {
		return nil, fail("mysql: get proxy %s: %w", id, err)
	}
	return p, nil
}

// ListProxies returns the pool's proxies ordered by id.
func (s *Store) ListProxies(ctx context.Context, poolID uuid.UUID) ([]*pharox.Proxy, error) {
	var out []*pharox.Proxy
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var got string
		err := tx.QueryRowContext(ctx, s.q(`SELECT id FROM {p}pools WHERE id = ?`), idArg(poolID)).Scan(&got)
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrPoolNotFound
		}
		if err != nil {
			return err
		}
		out, err = list(ctx, tx, s.q(`SELECT `+proxyCols+` FROM {p}proxies WHERE pool_id = ? ORDER BY id`), []any{idArg(poolID)},
			func(sc scanner) (*pharox.Proxy, error) { return scanProxy(sc) })
		return err
	})
	if err != nil {
		return nil, fail("mysql: list proxies of pool %s: %w", poolID, err)
	}
	return out, nil
}

// SetProxyStatus sets a proxy's status by hand, resets its failure streak
// and stamps StatusChangedAt when the status changes.
func (s *Store) SetProxyStatus(ctx context.Context, id uuid.UUID, status pharox.ProxyStatus) (*pharox.Proxy, error) {
	if !status.Valid() {
		return nil, fail("mysql: set proxy %s status: %w: unknown status %q", id, pharox.ErrInvalidArgument, status)
	}
	var out *pharox.Proxy
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var now time.Time
		p, err := scanProxy(tx.QueryRowContext(ctx, s.q(`SELECT `+proxyCols+`, UTC_TIMESTAMP(6) FROM {p}proxies WHERE id = ? FOR UPDATE`), idArg(id)), &now)
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrProxyNotFound
		}
		if err != nil {
			return err
		}
		if p.Status != status {
			now = utc(now)
			p.Status = status
			p.StatusChangedAt = &now
		}
		p.FailureStreak = 0
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE {p}proxies SET status = ?, failure_streak = 0, status_changed_at = ? WHERE id = ?`),
			string(p.Status), nullTime(p.StatusChangedAt), idArg(id)); err != nil {
			return err
		}
		out = p
		return nil
	})
	if err != nil {
		return nil, fail("mysql: set proxy %s status: %w", id, err)
	}
	return out, nil
}

// DeleteProxy deletes a proxy, its ended leases and its quota, unless it
// holds an active lease (after reclaiming its expired ones).
func (s *Store) DeleteProxy(ctx context.Context, id uuid.UUID) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var current int
		err := tx.QueryRowContext(ctx, s.q(`SELECT current_leases FROM {p}proxies WHERE id = ? FOR UPDATE`), idArg(id)).Scan(&current)
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrProxyNotFound
		}
		if err != nil {
			return err
		}
		if current > 0 {
			n, err := s.reclaimLocked(ctx, stdTx{tx}, id)
			if err != nil {
				return err
			}
			if current -= n; current > 0 {
				return errAfterCommit{fmt.Errorf("%d active leases: %w", current, pharox.ErrInUse)}
			}
		}
		for _, q := range []string{
			`DELETE FROM {p}quotas WHERE subject = 'proxy' AND subject_id = ?`,
			`DELETE FROM {p}leases WHERE proxy_id = ?`,
		} {
			if _, err := tx.ExecContext(ctx, s.q(q), idArg(id)); err != nil {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, s.q(`DELETE FROM {p}proxies WHERE id = ?`), idArg(id))
		return err
	})
	if err != nil {
		return fail("mysql: delete proxy %s: %w", id, err)
	}
	return nil
}

// GetLease returns a lease by id. Ended leases are kept until
// PurgeEndedLeases deletes them.
func (s *Store) GetLease(ctx context.Context, id uuid.UUID) (*pharox.Lease, error) {
	l, err := scanLease(s.db.QueryRowContext(ctx, s.q(`SELECT `+leaseCols+` FROM {p}leases WHERE id = ?`), idArg(id)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fail("mysql: get lease %s: %w", id, pharox.ErrLeaseNotFound)
	}
	if err != nil {
		return nil, fail("mysql: get lease %s: %w", id, err)
	}
	return l, nil
}

// ListLeases returns the leases matching q, oldest AcquiredAt first.
func (s *Store) ListLeases(ctx context.Context, q pharox.LeaseQuery) ([]*pharox.Lease, error) {
	if q.Status != "" && !q.Status.Valid() {
		return nil, fail("mysql: list leases: %w: unknown lease status %q", pharox.ErrInvalidArgument, q.Status)
	}
	if q.Limit < 0 {
		return nil, fail("mysql: list leases: %w: negative limit", pharox.ErrInvalidArgument)
	}
	var (
		where []string
		args  []any
	)
	if q.PoolID != uuid.Nil {
		where, args = append(where, "pool_id = ?"), append(args, idArg(q.PoolID))
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
	query := `SELECT ` + leaseCols + ` FROM {p}leases`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	query += ` ORDER BY acquired_at, id`
	if q.Limit > 0 {
		query += ` LIMIT ?`
		args = append(args, q.Limit)
	}
	out, err := list(ctx, s.db, s.q(query), args, func(sc scanner) (*pharox.Lease, error) { return scanLease(sc) })
	if err != nil {
		return nil, fail("mysql: list leases: %w", err)
	}
	return out, nil
}

// purgeBatch bounds the leases one purge statement deletes.
const purgeBatch = 1000

// PurgeEndedLeases deletes released and expired leases that ended before
// endedBefore, purgeBatch at a time through the (status, released_at)
// index.
func (s *Store) PurgeEndedLeases(ctx context.Context, endedBefore time.Time) (int, error) {
	before := micro(endedBefore)
	total := 0
	for _, status := range []pharox.LeaseStatus{pharox.LeaseReleased, pharox.LeaseExpired} {
		for {
			res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM {p}leases WHERE status = ? AND released_at < ? LIMIT `+fmt.Sprint(purgeBatch)),
				string(status), before)
			if err != nil {
				return total, fail("mysql: purge ended leases: %w", err)
			}
			n, _ := res.RowsAffected()
			total += int(n)
			if n < purgeBatch {
				break
			}
		}
	}
	return total, nil
}
