package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/batch"
)

// DefaultMaxBatch is how many concurrent acquisitions (or releases) of one
// Store may share a statement unless WithMaxBatch says otherwise.
const DefaultMaxBatch = 64

// batchesInFlight is how many batch statements of one kind (acquisitions
// of one pool, strategy and filter; releases) a Store runs at once. One:
// measured in one process against two and four (same schema, rounds
// alternated, 8 to 64 workers), it was never slower and gave 1.3-1.5× the
// throughput of two at 32 workers. More statements in flight only split
// the waiting callers into smaller batches, and the server's cost is per
// statement.
const batchesInFlight = 1

// errNotServed marks a batched acquisition that found no free, unlocked
// slot: the caller goes on with the single-statement path, which also
// reclaims expired leases and retries.
var errNotServed = errors.New("postgres: not served by the batch")

// errReleaseMissed marks a batched release whose lease was not active:
// the caller finds out why.
var errReleaseMissed = errors.New("postgres: lease not released by the batch")

// acquireBatchKey groups acquisitions that one batch statement can serve:
// same pool, strategy, target and filters (filter is the generated SQL and
// its bind values, so equal keys mean identical conditions).
type acquireBatchKey struct {
	pool     string
	strategy pharox.Strategy
	target   string
	filter   string
}

// acquireItem is one acquisition waiting for a batch.
type acquireItem struct {
	req     *pharox.AcquireRequest
	leaseID uuid.UUID
	// lean and leanArgs are the single statement, run when the item
	// makes a batch on its own.
	lean     string
	leanArgs []any
	// where is the filter condition for the batch statement, and filter
	// its bind values (the target's first, when there is one), numbered
	// from batchFixedParams+1.
	where  string
	filter []any
}

// batchFixedParams is the number of bind parameters of the batch
// statement that precede the filter's: pool name, lease ids, consumer
// ids, consumer names, durations.
const batchFixedParams = 5

func (s *Store) newBatchers() {
	s.acquirer = batch.New(s.execAcquireBatch, batch.Options[*pharox.Lease]{
		MaxBatch:    s.cfg.maxBatch,
		MaxInFlight: batchesInFlight,
		Discard:     s.discardLease,
	})
	s.releaser = batch.New(s.execReleaseBatch, batch.Options[*pharox.Lease]{
		MaxBatch:    s.cfg.maxBatch,
		MaxInFlight: batchesInFlight,
	})
}

// discardLease releases a lease whose caller stopped waiting before the
// batch that took it returned, so its slot does not stay taken until the
// lease expires.
func (s *Store) discardLease(l *pharox.Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = s.releaseStatement(ctx, l.ID) // on failure the lease expires as usual
}

// batching reports whether concurrent calls share statements.
func (s *Store) batching() bool { return s.cfg.maxBatch > 1 && !s.naive }

// batchAcquire hands req to the acquisition batcher. It returns
// errNotServed when the batch had no slot for it.
func (s *Store) batchAcquire(ctx context.Context, req *pharox.AcquireRequest, leaseID uuid.UUID, lean string, leanArgs []any) (*pharox.Lease, error) {
	a := &args{vals: make([]any, batchFixedParams, batchFixedParams+8)}
	if req.Target != "" {
		a.add(req.Target) // $6: see acquireBatchSQL
	}
	where := filterSQL(req.Filters, "p", a)
	item := &acquireItem{req: req, leaseID: leaseID, lean: lean, leanArgs: leanArgs, where: where, filter: a.vals[batchFixedParams:]}
	key := acquireBatchKey{pool: req.PoolName, strategy: req.Strategy.OrDefault(), target: req.Target}
	if where != "true" {
		key.filter = where + "\x00" + fmt.Sprintf("%#v", item.filter)
	}
	return s.acquirer.Do(ctx, key, item)
}

// execAcquireBatch serves a batch: alone, with the lean single statement
// that AcquireLease would run; together, with one statement that leases a
// slot for as many of them as it finds free, unlocked slots.
func (s *Store) execAcquireBatch(ctx context.Context, key acquireBatchKey, items []*acquireItem) []batch.Result[*pharox.Lease] {
	out := make([]batch.Result[*pharox.Lease], len(items))
	if len(items) == 1 {
		it := items[0]
		lease, _, err := s.tryAcquire(ctx, it.lean, it.leanArgs, "")
		switch {
		case err != nil:
			out[0].Err = err
		case lease == nil:
			out[0].Err = errNotServed
		default:
			out[0].Val = s.finishAcquire(lease, it.leaseID, it.req)
		}
		return out
	}

	n := len(items)
	leaseIDs := make([]uuid.UUID, n)
	consumerIDs := make([]uuid.UUID, n)
	names := make([]string, n)
	micros := make([]int64, n)
	for i, it := range items {
		leaseIDs[i] = it.leaseID
		consumerIDs[i] = it.req.ConsumerID
		names[i] = it.req.ConsumerName
		micros[i] = it.req.Duration.Microseconds()
	}
	vals := append([]any{key.pool, leaseIDs, consumerIDs, names, micros}, items[0].filter...)
	err := func() error {
		// JIT off, local to the implicit transaction of this pipeline and
		// so in force when the statement is planned: the planner cannot
		// know how few slots a batch lays out (generate_series over a
		// computed range counts as 1,000 rows per candidate), so on a
		// large pool its estimate passes jit_above_cost, and compiling the
		// plan would cost every execution hundreds of milliseconds.
		b := &pgx.Batch{}
		b.Queue(`SELECT set_config('jit', 'off', true)`)
		b.Queue(s.acquireBatchSQL(key, items[0].where), vals...)
		br := s.pool.SendBatch(ctx, b)
		defer br.Close()
		if _, err := br.Exec(); err != nil {
			return err
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				poolOK, consumerOK   bool
				ord                  int64
				acquiredAt, expireAt *time.Time
				pr                   proxyRow
			)
			dest := append([]any{&poolOK, &ord, &consumerOK, &acquiredAt, &expireAt}, proxyDest(rows, 3, &pr)...)
			if err := rows.Scan(dest...); err != nil {
				return err
			}
			if ord < 1 || ord > int64(n) {
				return fmt.Errorf("batch statement returned ordinal %d of %d", ord, n)
			}
			r := &out[ord-1]
			it := items[ord-1]
			switch {
			case !poolOK:
				r.Err = fmt.Errorf("postgres: acquire: %w", pharox.ErrPoolNotFound)
			case !consumerOK:
				r.Err = fmt.Errorf("postgres: acquire: %w", pharox.ErrConsumerNotFound)
			case acquiredAt == nil:
				r.Err = errNotServed
			default:
				r.Val = s.finishAcquire(acquiredLease(&pr, *acquiredAt, *expireAt), it.leaseID, it.req)
			}
		}
		return rows.Err()
	}()
	for i := range out {
		switch {
		case pgCode(err) == codeUniqueViolation:
			// Two requests chose one lease id (AcquireRequest.LeaseID), or
			// a concurrent statement inserted it first: the statement took
			// nothing, and each request goes on alone, where that is
			// resolved.
			out[i] = batch.Result[*pharox.Lease]{Err: errNotServed}
		case err != nil:
			out[i] = batch.Result[*pharox.Lease]{Err: fmt.Errorf("postgres: acquire: %w", err)}
		case out[i].Val == nil && out[i].Err == nil:
			out[i].Err = errors.New("postgres: acquire: batch statement returned no row for a request")
		}
	}
	return out
}

// acquireBatchSQL builds the statement that leases one slot for each of a
// batch of acquisitions sharing key. Its parameters are $1 pool name, $2
// lease ids, $3 consumer ids, $4 consumer names, $5 durations in
// microseconds (arrays in request order), then the target ($6) when key
// has one, then the filter's values. With a target, the walk passes over
// proxies cooling down for it, as the single statement does.
//
// It locks up to n free candidates in strategy order, FOR UPDATE SKIP
// LOCKED as the single statement does, and lays out their free slots in
// the order n acquisitions in sequence would take them: FirstAvailable
// fills the first proxy before the next; LeastUsed always takes the slot
// that leaves the lowest count (its first n candidates hold every slot it
// could pick); RoundRobin and Random give each proxy one lease before any
// proxy gets a second. The i-th request with an existing consumer takes
// the i-th slot; the proxies are incremented once each, under the same
// max_concurrency predicate as the single statement, and the leases
// inserted. Requests whose lease id is taken (AcquireRequest.LeaseID)
// and requests left without a slot (their candidates were locked by other
// transactions) come back unserved and fall back to the single
// statement, which also reclaims expired leases.
func (s *Store) acquireBatchSQL(key acquireBatchKey, where string) string {
	// The statement depends on whether there is a target, not on which:
	// cached per pool, strategy and that.
	cacheKey := key
	tph := ""
	if key.target != "" {
		cacheKey.target, tph = "\x00", "$6"
	}
	if key.filter == "" {
		if v, ok := s.batchSQL.Load(cacheKey); ok {
			return v.(string)
		}
	}
	var b strings.Builder
	b.WriteString(`WITH pool AS MATERIALIZED (
	SELECT id FROM {s}.pools WHERE name = $1
),
req AS MATERIALIZED (
	SELECT r.ord, r.lease_id, r.consumer_id, r.consumer_name, r.us,
		EXISTS (SELECT 1 FROM {s}.consumers c WHERE c.id = r.consumer_id) AS ok,
		NOT EXISTS (SELECT 1 FROM {s}.leases x WHERE x.id = r.lease_id) AS fresh
	FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::bigint[]) WITH ORDINALITY AS r(lease_id, consumer_id, consumer_name, us, ord)
),
want AS MATERIALIZED (
	SELECT count(*) AS n FROM req WHERE ok AND fresh
),`)
	if key.strategy == pharox.RoundRobin {
		b.WriteString(`
cur AS MATERIALIZED (
	SELECT c.last_proxy_id FROM {s}.pool_cursors c WHERE c.pool_id = (SELECT id FROM pool)
),`)
	}
	slotOrder := map[pharox.Strategy]string{
		pharox.FirstAvailable: "f.status_rank, f.checked_at DESC NULLS LAST, f.id, j",
		pharox.LeastUsed:      "f.status_rank, f.current_leases + j, f.id",
		pharox.RoundRobin:     "j, f.id <= coalesce((SELECT last_proxy_id FROM cur), '00000000-0000-0000-0000-000000000000'::uuid), f.id",
		pharox.Random:         "j, f.rnd",
	}[key.strategy]
	redraw := ""
	if key.strategy == pharox.Random {
		b.WriteString(`
rs AS MATERIALIZED (
	SELECT random() AS r
),`)
		redraw = ", rnd = random()"
	}
	fmt.Fprintf(&b, `
free AS MATERIALIZED (
	%[1]s
),
`, s.pickSQL(pick{strategy: key.strategy, cols: "p.id, p.status_rank, p.checked_at, p.current_leases, p.max_concurrency, p.rnd",
		filter: where, limit: "(SELECT n FROM want)", lock: "FOR UPDATE OF p SKIP LOCKED", target: tph}))
	fmt.Fprintf(&b, `slots AS MATERIALIZED (
	SELECT f.id, row_number() OVER (ORDER BY %[1]s) AS rn
	FROM free f, generate_series(0, least(coalesce(f.max_concurrency - f.current_leases, (SELECT n FROM want)), (SELECT n FROM want)) - 1) AS j
),
assign AS MATERIALIZED (
	SELECT v.ord, v.lease_id, v.consumer_id, v.consumer_name, v.us, s.id AS proxy_id, s.rn,
		row_number() OVER (PARTITION BY s.id ORDER BY s.rn) AS k
	FROM (SELECT r.*, row_number() OVER (ORDER BY r.ord) AS rn FROM req r WHERE r.ok AND r.fresh) v
	JOIN slots s ON s.rn = v.rn
),
counts AS MATERIALIZED (
	SELECT proxy_id, count(*)::integer AS n FROM assign GROUP BY proxy_id
),
taken AS (
	UPDATE {s}.proxies p SET current_leases = p.current_leases + c.n%[3]s
	FROM counts c
	WHERE p.id = ANY (ARRAY(SELECT proxy_id FROM counts)) AND p.id = c.proxy_id
	  AND (p.max_concurrency IS NULL OR p.current_leases + c.n <= p.max_concurrency)
	RETURNING %[2]s, c.n AS batch_n
),
lease AS (
	INSERT INTO {s}.leases (id, proxy_id, pool_id, pool_name, consumer_id, consumer_name, status, acquired_at, expires_at, session_key)
	SELECT x.lease_id, x.proxy_id, x.pool_id, $1, x.consumer_id, x.consumer_name, 'active', x.at, x.at + x.us * interval '1 microsecond', ''
	FROM (SELECT a.*, t.pool_id, clock_timestamp() AS at FROM assign a JOIN taken t ON t.id = a.proxy_id) x
	RETURNING id, acquired_at, expires_at
)`, slotOrder, proxyCols("p"), redraw)
	if key.strategy == pharox.RoundRobin {
		b.WriteString(`,
moved AS (
	UPDATE {s}.pool_cursors c SET last_proxy_id = (
		SELECT a.proxy_id FROM assign a JOIN taken t ON t.id = a.proxy_id ORDER BY a.rn DESC LIMIT 1)
	WHERE EXISTS (SELECT 1 FROM taken)
	  AND c.pool_id = ANY (ARRAY(
		SELECT k.pool_id FROM {s}.pool_cursors k WHERE k.pool_id = (SELECT id FROM pool) FOR NO KEY UPDATE SKIP LOCKED))
)`)
	}
	// Each lease reports its proxy as it was right after that lease, as if
	// the batch's leases had been taken one by one.
	cols := make([]string, len(proxyColumns))
	for i, c := range proxyColumns {
		cols[i] = "t." + c
		if c == "current_leases" {
			cols[i] = "t.current_leases - t.batch_n + a.k::integer"
		}
	}
	fmt.Fprintf(&b, `
SELECT (SELECT id FROM pool) IS NOT NULL, r.ord, r.ok, l.acquired_at, l.expires_at, %s
FROM req r
LEFT JOIN assign a ON a.ord = r.ord
LEFT JOIN lease l ON l.id = a.lease_id
LEFT JOIN taken t ON t.id = a.proxy_id AND l.id IS NOT NULL
ORDER BY r.ord`, strings.Join(cols, ", "))
	sql := s.q(b.String())
	if key.filter == "" {
		s.batchSQL.Store(cacheKey, sql)
	}
	return sql
}

// execReleaseBatch releases a batch of leases: alone, with the single
// statement; together, with one statement over all of them.
func (s *Store) execReleaseBatch(ctx context.Context, _ struct{}, ids []uuid.UUID) []batch.Result[*pharox.Lease] {
	out := make([]batch.Result[*pharox.Lease], len(ids))
	if len(ids) == 1 {
		out[0].Val, out[0].Err = s.releaseStatement(ctx, ids[0])
		return out
	}
	// Planned on each call (CacheDescribe runs an unnamed statement) rather
	// than with a cached generic plan: leases grows fast, and a generic
	// plan made while it was small scans the whole table for the ids until
	// an ANALYZE invalidates it. Planning costs far less than that scan.
	rows, err := s.pool.Query(ctx, s.q(releaseBatchSQL), pgx.QueryExecModeCacheDescribe, ids, s.releaseCommit())
	if err == nil {
		byID := make(map[uuid.UUID]*pharox.Lease, len(ids))
		for rows.Next() {
			var lr leaseRow
			if err = rows.Scan(append(lr.targets(), nil)...); err != nil {
				break
			}
			byID[lr.id] = lr.lease()
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
		for i, id := range ids {
			if l, ok := byID[id]; ok {
				out[i].Val = l
				delete(byID, id) // a lease released twice in one batch ends once
			} else {
				out[i].Err = errReleaseMissed
			}
		}
	}
	if err != nil {
		for i, id := range ids {
			out[i] = batch.Result[*pharox.Lease]{Err: fmt.Errorf("postgres: release lease %s: %w", id, err)}
		}
	}
	return out
}

// releaseBatchSQL releases the active leases among $1 (uuid[]) and frees
// their slots; $2 is the synchronous_commit setting (see ReleaseLease).
// Proxy rows are locked in id order, as CleanupExpiredLeases locks them,
// so that two statements freeing slots of several proxies cannot
// deadlock. Lease rows are locked in scan order: two batches contend for
// a lease row only when one lease is released twice at the same moment,
// and the second release finds it ended (were two leases each released
// twice at once, in batches that scanned them in opposite orders,
// PostgreSQL's deadlock detector would fail one batch). Rows are found by = ANY over
// arrays, which keeps every step a primary-key lookup whatever the
// planner guesses about the size of a CTE.
const releaseBatchSQL = `WITH l AS (
	UPDATE {s}.leases SET status = 'released', released_at = clock_timestamp()
	WHERE id = ANY ($1::uuid[]) AND status NOT IN ('released', 'expired')
	RETURNING ` + leaseColumns + `
), c AS MATERIALIZED (
	SELECT proxy_id, count(*)::integer AS n FROM l GROUP BY proxy_id
), locked AS MATERIALIZED (
	SELECT p.id FROM {s}.proxies p WHERE p.id = ANY (ARRAY(SELECT proxy_id FROM c)) ORDER BY p.id FOR NO KEY UPDATE
), p AS (
	UPDATE {s}.proxies p SET current_leases = p.current_leases - c.n FROM c
	WHERE p.id = ANY (ARRAY(SELECT id FROM locked)) AND p.id = c.proxy_id
)
SELECT ` + leaseColumns + `, set_config('synchronous_commit', $2, true) FROM l`
