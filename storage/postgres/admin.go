package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pharox/pharox"
)

// EnsureConsumer returns the consumer with this name, creating it if
// needed; concurrent calls agree on one consumer through the unique name.
func (s *Store) EnsureConsumer(ctx context.Context, name string) (*pharox.Consumer, error) {
	if err := pharox.ValidateName("consumer name", name); err != nil {
		return nil, err
	}
	var c pharox.Consumer
	for range 3 {
		err := s.pool.QueryRow(ctx, s.q(`WITH ins AS (
	INSERT INTO {s}.consumers (id, name, created_at) VALUES ($1, $2, clock_timestamp())
	ON CONFLICT (name) DO NOTHING
	RETURNING id, name, created_at
)
SELECT id, name, created_at FROM ins
UNION ALL
SELECT id, name, created_at FROM {s}.consumers WHERE name = $2
LIMIT 1`), uuid.New(), name).Scan(&c.ID, &c.Name, &c.CreatedAt)
		if errors.Is(err, pgx.ErrNoRows) {
			// The conflicting row was committed after this statement's
			// snapshot: the next statement sees it.
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("postgres: ensure consumer %q: %w", name, err)
		}
		c.CreatedAt = utc(c.CreatedAt)
		return &c, nil
	}
	return nil, fmt.Errorf("postgres: ensure consumer %q: no row after concurrent insert", name)
}

const consumerColumns = "id, name, created_at"

func scanConsumer(row pgx.Row) (*pharox.Consumer, error) {
	var c pharox.Consumer
	if err := row.Scan(&c.ID, &c.Name, &c.CreatedAt); err != nil {
		return nil, err
	}
	c.CreatedAt = utc(c.CreatedAt)
	return &c, nil
}

// GetConsumer returns the consumer by id.
func (s *Store) GetConsumer(ctx context.Context, id uuid.UUID) (*pharox.Consumer, error) {
	c, err := scanConsumer(s.pool.QueryRow(ctx, s.q(`SELECT `+consumerColumns+` FROM {s}.consumers WHERE id = $1`), id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: get consumer %s: %w", id, pharox.ErrConsumerNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: get consumer %s: %w", id, err)
	}
	return c, nil
}

// ListConsumers returns every consumer ordered by name, byte-wise
// (COLLATE "C"), as Go orders strings. The unique index on name uses the
// database collation, so this sorts; consumers are few, as pools are.
func (s *Store) ListConsumers(ctx context.Context) ([]*pharox.Consumer, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT `+consumerColumns+` FROM {s}.consumers ORDER BY name COLLATE "C"`))
	if err != nil {
		return nil, fmt.Errorf("postgres: list consumers: %w", err)
	}
	defer rows.Close()
	out := []*pharox.Consumer{}
	for rows.Next() {
		c, err := scanConsumer(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres: list consumers: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list consumers: %w", err)
	}
	return out, nil
}

const poolColumns = "id, name, description, created_at"

func scanPool(row pgx.Row) (*pharox.Pool, error) {
	var p pharox.Pool
	if err := row.Scan(&p.ID, &p.Name, &p.Description, &p.CreatedAt); err != nil {
		return nil, err
	}
	p.CreatedAt = utc(p.CreatedAt)
	return &p, nil
}

// CreatePool stores a new pool and its round-robin cursor.
func (s *Store) CreatePool(ctx context.Context, pool pharox.Pool) (*pharox.Pool, error) {
	if err := pool.Validate(); err != nil {
		return nil, err
	}
	if pool.ID == uuid.Nil {
		pool.ID = uuid.New()
	}
	out, err := scanPool(s.pool.QueryRow(ctx, s.q(`WITH p AS (
	INSERT INTO {s}.pools (id, name, description, created_at) VALUES ($1, $2, $3, clock_timestamp())
	RETURNING `+poolColumns+`
), c AS (
	INSERT INTO {s}.pool_cursors (pool_id) SELECT id FROM p
)
SELECT `+poolColumns+` FROM p`), pool.ID, pool.Name, pool.Description))
	if pgCode(err) == codeUniqueViolation {
		return nil, fmt.Errorf("postgres: create pool %q: %w", pool.Name, pharox.ErrAlreadyExists)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: create pool %q: %w", pool.Name, err)
	}
	return out, nil
}

// GetPool returns the pool by id.
func (s *Store) GetPool(ctx context.Context, id uuid.UUID) (*pharox.Pool, error) {
	p, err := scanPool(s.pool.QueryRow(ctx, s.q(`SELECT `+poolColumns+` FROM {s}.pools WHERE id = $1`), id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: get pool %s: %w", id, pharox.ErrPoolNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: get pool %s: %w", id, err)
	}
	return p, nil
}

// GetPoolByName returns the pool by name.
func (s *Store) GetPoolByName(ctx context.Context, name string) (*pharox.Pool, error) {
	p, err := scanPool(s.pool.QueryRow(ctx, s.q(`SELECT `+poolColumns+` FROM {s}.pools WHERE name = $1`), name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: get pool %q: %w", name, pharox.ErrPoolNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: get pool %q: %w", name, err)
	}
	return p, nil
}

// ListPools returns every pool ordered by name, byte-wise (COLLATE "C"),
// as Go orders strings.
func (s *Store) ListPools(ctx context.Context) ([]*pharox.Pool, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT `+poolColumns+` FROM {s}.pools ORDER BY name COLLATE "C"`))
	if err != nil {
		return nil, fmt.Errorf("postgres: list pools: %w", err)
	}
	defer rows.Close()
	out := []*pharox.Pool{}
	for rows.Next() {
		p, err := scanPool(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres: list pools: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list pools: %w", err)
	}
	return out, nil
}

// poolQuotasSQL selects the quota rows of pool $1 and of its proxies (each
// proxy quota's proxy looked up by primary key).
const poolQuotasSQL = `(q.subject = 'pool' AND q.subject_id = $1)
   OR (q.subject = 'proxy' AND EXISTS (SELECT 1 FROM {s}.proxies p WHERE p.id = q.subject_id AND p.pool_id = $1))`

// DeletePool deletes the pool, its proxies, their ended leases, its session
// bindings and cursor, and the quotas of the pool and its proxies, in one
// transaction that first locks those quotas (quota rows come before pool
// and proxy rows in every transaction), then the pool and its proxies, and
// reclaims their expired leases.
func (s *Store) DeletePool(ctx context.Context, id uuid.UUID) error {
	var endErr error
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, s.q(`SELECT 1 FROM {s}.quotas q WHERE `+poolQuotasSQL+` ORDER BY q.subject, q.subject_id FOR UPDATE OF q`), id); err != nil {
			return err
		}
		var one int
		err := tx.QueryRow(ctx, s.q(`SELECT 1 FROM {s}.pools WHERE id = $1 FOR UPDATE`), id).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			endErr = pharox.ErrPoolNotFound
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, s.q(`SELECT 1 FROM {s}.proxies WHERE pool_id = $1 ORDER BY id FOR UPDATE`), id); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(ctx, s.q(reclaimSQL(`x.status = 'active' AND x.expires_at <= clock_timestamp()
		AND x.proxy_id IN (SELECT id FROM {s}.proxies WHERE pool_id = $1)`)), pgx.QueryExecModeExec, id).Scan(&n); err != nil {
			return err
		}
		var inUse bool
		if err := tx.QueryRow(ctx, s.q(`SELECT EXISTS (SELECT 1 FROM {s}.proxies WHERE pool_id = $1 AND current_leases > 0)`), id).Scan(&inUse); err != nil {
			return err
		}
		if inUse {
			endErr = pharox.ErrInUse
			return errRollback
		}
		for _, stmt := range []string{
			`DELETE FROM {s}.quotas q WHERE ` + poolQuotasSQL,
			`DELETE FROM {s}.leases WHERE pool_id = $1`,
			`DELETE FROM {s}.sessions WHERE pool_id = $1`,
			`DELETE FROM {s}.pool_cursors WHERE pool_id = $1`,
			`DELETE FROM {s}.pools WHERE id = $1`,
		} {
			if _, err := tx.Exec(ctx, s.q(stmt), id); err != nil {
				return err
			}
		}
		return nil
	})
	if endErr != nil {
		return fmt.Errorf("postgres: delete pool %s: %w", id, endErr)
	}
	if err != nil {
		return fmt.Errorf("postgres: delete pool %s: %w", id, err)
	}
	return nil
}

// errRollback makes pgx.BeginFunc roll back without being a failure.
var errRollback = errors.New("rollback")

// AddProxies stores new proxies, all or none, in one transaction whose
// inserts travel in one batch.
func (s *Store) AddProxies(ctx context.Context, proxies []pharox.Proxy) ([]*pharox.Proxy, error) {
	in := make([]*pharox.Proxy, len(proxies))
	for i := range proxies {
		p := proxies[i].Clone()
		p.Normalize()
		p.CurrentLeases = 0
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("postgres: add proxy %d: %w", i, err)
		}
		if p.MaxConcurrency != nil && *p.MaxConcurrency > math.MaxInt32 {
			return nil, fmt.Errorf("%w: postgres: add proxy %d: max_concurrency %d above %d", pharox.ErrInvalidArgument, i, *p.MaxConcurrency, math.MaxInt32)
		}
		if p.ID == uuid.Nil {
			p.ID = uuid.New()
		}
		in[i] = p
	}
	out := make([]*pharox.Proxy, 0, len(in))
	if len(in) == 0 {
		return out, nil
	}
	sql := s.q(`INSERT INTO {s}.proxies AS p (id, pool_id, host, port, protocol, username, password,
	source, country, city, isp, asn, latitude, longitude, tags, status, max_concurrency, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, clock_timestamp())
RETURNING ` + proxyCols("p"))
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		for _, p := range in {
			var user, pass *string
			if p.Credentials != nil {
				user, pass = &p.Credentials.User, &p.Credentials.Password
			}
			tags := p.Tags
			if tags == nil {
				tags = []string{}
			}
			b.Queue(sql, p.ID, p.PoolID, p.Host, p.Port, string(p.Protocol), user, pass,
				p.Source, p.Country, p.City, p.ISP, p.ASN, p.Latitude, p.Longitude, tags,
				string(p.Status), p.MaxConcurrency)
		}
		res := tx.SendBatch(ctx, b)
		for range in {
			var pr proxyRow
			if err := res.QueryRow().Scan(pr.targets()...); err != nil {
				res.Close()
				return err
			}
			out = append(out, pr.proxy())
		}
		return res.Close()
	})
	switch pgCode(err) {
	case "":
	case codeUniqueViolation:
		return nil, fmt.Errorf("postgres: add proxies: %w", pharox.ErrAlreadyExists)
	case codeForeignKeyViolation:
		return nil, fmt.Errorf("postgres: add proxies: %w", pharox.ErrPoolNotFound)
	case codeCheckViolation:
		return nil, fmt.Errorf("postgres: add proxies: %w: %v", pharox.ErrInvalidArgument, err)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: add proxies: %w", err)
	}
	s.refreshProxyStats(ctx, len(in))
	return out, nil
}

// refreshProxyStats runs ANALYZE on the proxies table when the rows just
// added are a tenth or more of what the planner believes it holds (or it
// was never analysed), as autovacuum's analyze would. Without statistics
// the planner guesses that a pool has a row or two, and may then sort a
// pool's proxies from another index instead of walking the strategy's
// proxies_free_* index; with them, it walks the index whatever the
// occupancy. So a store on a server without autovacuum keeps its plans
// after a bulk import. Best effort: without the right to ANALYZE (the
// store's role did not create the schema), nothing changes.
func (s *Store) refreshProxyStats(ctx context.Context, added int) {
	var tuples float64
	err := s.pool.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)`, s.schema+".proxies").Scan(&tuples)
	if err != nil || (tuples >= 0 && float64(added) < tuples/10) {
		return
	}
	_, _ = s.pool.Exec(ctx, `ANALYZE `+s.schema+`.proxies`)
}

// GetProxy returns the proxy by id.
func (s *Store) GetProxy(ctx context.Context, id uuid.UUID) (*pharox.Proxy, error) {
	var pr proxyRow
	err := s.pool.QueryRow(ctx, s.q(`SELECT `+proxyCols("p")+` FROM {s}.proxies p WHERE p.id = $1`), id).Scan(pr.targets()...)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: get proxy %s: %w", id, pharox.ErrProxyNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: get proxy %s: %w", id, err)
	}
	return pr.proxy(), nil
}

// ListProxies returns the pool's proxies ordered by id.
func (s *Store) ListProxies(ctx context.Context, poolID uuid.UUID) ([]*pharox.Proxy, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT `+proxyCols("p")+` FROM {s}.proxies p WHERE p.pool_id = $1 ORDER BY p.id`), poolID)
	if err != nil {
		return nil, fmt.Errorf("postgres: list proxies: %w", err)
	}
	defer rows.Close()
	out := []*pharox.Proxy{}
	for rows.Next() {
		var pr proxyRow
		if err := rows.Scan(pr.targets()...); err != nil {
			return nil, fmt.Errorf("postgres: list proxies: %w", err)
		}
		out = append(out, pr.proxy())
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list proxies: %w", err)
	}
	if len(out) == 0 {
		if _, err := s.GetPool(ctx, poolID); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// SetProxyStatus sets a proxy's status by hand.
func (s *Store) SetProxyStatus(ctx context.Context, id uuid.UUID, status pharox.ProxyStatus) (*pharox.Proxy, error) {
	if !status.Valid() {
		return nil, fmt.Errorf("%w: unknown proxy status %q", pharox.ErrInvalidArgument, status)
	}
	var pr proxyRow
	err := s.pool.QueryRow(ctx, s.q(`UPDATE {s}.proxies p SET status = $2::text, failure_streak = 0,
	status_changed_at = CASE WHEN p.status <> $2::text THEN clock_timestamp() ELSE p.status_changed_at END
WHERE p.id = $1
RETURNING `+proxyCols("p")), id, string(status)).Scan(pr.targets()...)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: set status of proxy %s: %w", id, pharox.ErrProxyNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: set status of proxy %s: %w", id, err)
	}
	return pr.proxy(), nil
}

// DeleteProxy deletes a proxy, its ended leases, its session bindings and
// its quota. Its quota row is locked first (quota rows come before proxy
// rows in every transaction), and its expired leases are reclaimed under
// the proxy's row lock.
func (s *Store) DeleteProxy(ctx context.Context, id uuid.UUID) error {
	var endErr error
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, s.q(`SELECT 1 FROM {s}.quotas WHERE subject = 'proxy' AND subject_id = $1 FOR UPDATE`), id); err != nil {
			return err
		}
		var poolID uuid.UUID
		err := tx.QueryRow(ctx, s.q(`SELECT pool_id FROM {s}.proxies WHERE id = $1 FOR UPDATE`), id).Scan(&poolID)
		if errors.Is(err, pgx.ErrNoRows) {
			endErr = pharox.ErrProxyNotFound
			return nil
		}
		if err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(ctx, s.q(reclaimSQL(`x.proxy_id = $1 AND x.status = 'active' AND x.expires_at <= clock_timestamp()`)), pgx.QueryExecModeExec, id).Scan(&n); err != nil {
			return err
		}
		var current int
		if err := tx.QueryRow(ctx, s.q(`SELECT current_leases FROM {s}.proxies WHERE id = $1`), id).Scan(&current); err != nil {
			return err
		}
		if current > 0 {
			endErr = pharox.ErrInUse
			return errRollback
		}
		for _, stmt := range []string{
			`DELETE FROM {s}.leases WHERE pool_id = $1 AND proxy_id = $2`,
			`DELETE FROM {s}.sessions WHERE pool_id = $1 AND proxy_id = $2`,
			`DELETE FROM {s}.quotas WHERE subject = 'proxy' AND subject_id = $2 AND $1::uuid IS NOT NULL`,
		} {
			if _, err := tx.Exec(ctx, s.q(stmt), poolID, id); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, s.q(`DELETE FROM {s}.proxies WHERE id = $1`), id)
		return err
	})
	if endErr != nil {
		return fmt.Errorf("postgres: delete proxy %s: %w", id, endErr)
	}
	if err != nil {
		return fmt.Errorf("postgres: delete proxy %s: %w", id, err)
	}
	return nil
}

// GetPoolStats aggregates the pool's proxy rows: the counters kept on them
// mean no lease is scanned.
func (s *Store) GetPoolStats(ctx context.Context, pool string) (*pharox.PoolStats, error) {
	st := &pharox.PoolStats{PoolName: pool, ByStatus: map[pharox.ProxyStatus]int{}}
	var total, active, avail, leased, leases, nActive, nSlow, nInactive, nBanned int
	err := s.pool.QueryRow(ctx, s.q(`SELECT count(p.id)::integer,
	(count(*) FILTER (WHERE p.status IN ('active', 'slow')))::integer,
	(count(*) FILTER (WHERE p.status IN ('active', 'slow') AND (p.max_concurrency IS NULL OR p.current_leases < p.max_concurrency)))::integer,
	(count(*) FILTER (WHERE p.current_leases > 0))::integer,
	coalesce(sum(p.current_leases), 0)::integer,
	(count(*) FILTER (WHERE p.status = 'active'))::integer,
	(count(*) FILTER (WHERE p.status = 'slow'))::integer,
	(count(*) FILTER (WHERE p.status = 'inactive'))::integer,
	(count(*) FILTER (WHERE p.status = 'banned'))::integer,
	clock_timestamp()
FROM {s}.pools pl LEFT JOIN {s}.proxies p ON p.pool_id = pl.id
WHERE pl.name = $1
GROUP BY pl.id`), pool).Scan(&total, &active, &avail, &leased, &leases, &nActive, &nSlow, &nInactive, &nBanned, &st.CollectedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: pool stats %q: %w", pool, pharox.ErrPoolNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: pool stats %q: %w", pool, err)
	}
	st.TotalProxies, st.ActiveProxies, st.AvailableProxies = total, active, avail
	st.LeasedProxies, st.TotalLeases = leased, leases
	for status, n := range map[pharox.ProxyStatus]int{
		pharox.StatusActive: nActive, pharox.StatusSlow: nSlow,
		pharox.StatusInactive: nInactive, pharox.StatusBanned: nBanned,
	} {
		if n > 0 {
			st.ByStatus[status] = n
		}
	}
	st.CollectedAt = utc(st.CollectedAt)
	return st, nil
}

// ApplyHealthCheckResult applies r in one UPDATE, which holds the proxy's
// row lock while it computes the new state from the current one, following
// pharox.Proxy.ApplyHealthCheck. An unknown proxy returns (nil, nil).
func (s *Store) ApplyHealthCheckResult(ctx context.Context, r pharox.HealthCheckResult) (*pharox.Proxy, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	var pr proxyRow
	err := s.pool.QueryRow(ctx, s.q(`UPDATE {s}.proxies p SET
	checked_at = $2, latency_ms = $3, last_status_code = $4, last_error = $5,
	failure_streak = CASE WHEN $6::boolean THEN 0 ELSE p.failure_streak + 1 END,
	status = CASE WHEN $6::boolean OR p.failure_streak + 1 >= $8::integer THEN $7::text ELSE p.status END,
	status_changed_at = CASE
		WHEN (CASE WHEN $6::boolean OR p.failure_streak + 1 >= $8::integer THEN $7::text ELSE p.status END) <> p.status THEN $2
		ELSE p.status_changed_at END
WHERE p.id = $1
RETURNING `+proxyCols("p")),
		r.ProxyID, micro(r.CheckedAt), r.Latency.Milliseconds(), int32(min(max(r.StatusCode, math.MinInt32), math.MaxInt32)), r.Error,
		r.Status.Leasable(), string(r.Status), int32(min(max(1, r.FailureThreshold), math.MaxInt32))).Scan(pr.targets()...)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: apply health result to proxy %s: %w", r.ProxyID, err)
	}
	return pr.proxy(), nil
}
