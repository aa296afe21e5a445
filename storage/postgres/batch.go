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
	// quota: the batch enforces its consumer's and pool's quotas (see
	// acquireKey.quota), and consumer is its one consumer: a batch locks
	// its consumer's quota row, and batches of different consumers then
	// wait for no row of each other's (unless their pool has a quota).
	quota    bool
	consumer uuid.UUID
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
	_, _ = s.releaseStatement(ctx, l.ID, nil) // on failure the lease expires as usual
}

// batching reports whether concurrent calls share statements.
func (s *Store) batching() bool { return s.cfg.maxBatch > 1 && !s.naive }

// batchAcquire hands req to the acquisition batcher, to a batch with
// quota statements when quota. It returns errNotServed when the batch had
// no slot for it (or its quotas refused it: the single statement then
// says why), and errQuotaSeen when a plain batch found a quota on its
// consumer or pool.
func (s *Store) batchAcquire(ctx context.Context, req *pharox.AcquireRequest, leaseID uuid.UUID, lean string, leanArgs []any, quota bool) (*pharox.Lease, error) {
	a := &args{vals: make([]any, batchFixedParams, batchFixedParams+8)}
	if req.Target != "" {
		a.add(req.Target) // $6: see acquireBatchSQL
	}
	where := filterSQL(req.Filters, "p", a)
	item := &acquireItem{req: req, leaseID: leaseID, lean: lean, leanArgs: leanArgs, where: where, filter: a.vals[batchFixedParams:]}
	key := acquireBatchKey{pool: req.PoolName, strategy: req.Strategy.OrDefault(), target: req.Target, quota: quota}
	if quota {
		key.consumer = req.ConsumerID
	}
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
		lease, _, err := s.tryAcquire(ctx, it.req, it.lean, it.leanArgs, s.preStatements(it.req, key.quota), key.quota)
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
		if key.quota {
			// The quota rows, locked before the statement's snapshot is
			// taken (see tryAcquire).
			b.Queue(s.q(quotaBatchLockSQL), consumerIDs, key.pool)
		}
		b.Queue(s.acquireBatchSQL(key, items[0].where), vals...)
		br := s.pool.SendBatch(ctx, b)
		defer br.Close()
		for range b.Len() - 1 {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				poolOK, consumerOK   bool
				hasQuota             [2]bool // consumer's, pool's
				ord                  int64
				acquiredAt, expireAt *time.Time
				pr                   proxyRow
			)
			dest := append([]any{&poolOK, &ord, &consumerOK, &hasQuota[0], &hasQuota[1], &acquiredAt, &expireAt}, proxyDest(rows, 5, &pr)...)
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
			case !key.quota && (hasQuota[0] || hasQuota[1]):
				s.hints.note(it.req, hasQuota[0], hasQuota[1])
				r.Err = errQuotaSeen
			case acquiredAt == nil:
				if key.quota {
					s.hints.note(it.req, hasQuota[0], hasQuota[1])
				}
				r.Err = errNotServed
			default:
				if key.quota {
					s.hints.note(it.req, hasQuota[0], hasQuota[1])
				}
				r.Val = s.finishAcquire(acquiredLease(&pr, *acquiredAt, *expireAt), it.leaseID, it.req)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		// The pipeline is one implicit transaction, committed at its end:
		// the leases above exist only once Close has read that answer (a
		// server stopped after sending the rows has lost them).
		return br.Close()
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
//
// Quotas: a plain batch (key.quota false) serves only the requests whose
// consumer and pool have no quota (a primary-key probe per request and
// one for the pool) and reports the others, which go on with the quota
// statements. A quota batch runs after quotaBatchLockSQL locked its
// consumer's and its pool's quota rows in the same transaction (see
// execAcquireBatch), admits requests as Quota.Admit would one after
// another (CTEs qa to elig), and takes the tokens of the leases it
// inserted (tok); requests it refused go on alone, and the single
// statement returns their QuotaError.
func (s *Store) acquireBatchSQL(key acquireBatchKey, where string) string {
	// The statement depends on whether there is a target, not on which:
	// cached per pool, strategy and that.
	cacheKey := key
	cacheKey.consumer = uuid.Nil
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
		NOT EXISTS (SELECT 1 FROM {s}.leases x WHERE x.id = r.lease_id) AS fresh,
		coalesce((SELECT true FROM {s}.quotas q WHERE q.subject = 'consumer' AND q.subject_id = r.consumer_id), false) AS hc
	FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::bigint[]) WITH ORDINALITY AS r(lease_id, consumer_id, consumer_name, us, ord)
),
noqp AS MATERIALIZED (
	SELECT EXISTS (SELECT 1 FROM {s}.quotas q WHERE q.subject = 'pool' AND q.subject_id = (SELECT id FROM pool)) AS p
),`)
	if key.quota {
		// The requests the quotas admit, as acquisitions in sequence at
		// one time would be: a consumer's first allow requests pass its
		// quota (allow: its free leases under the cap, and the whole
		// tokens of its bucket, Quota.Admit applied request after
		// request; 0 over a byte limit), and of those, the pool's first
		// allow pass the pool's. (A request the pool refuses leaves its
		// consumer's place to a later request of the same consumer, but
		// the pool refuses every later request too.) Requests refused
		// here go on alone, and the single statement says why.
		b.WriteString(`
qn AS MATERIALIZED (
	SELECT clock_timestamp() AS t
),
qr AS MATERIALIZED (
	` + quotaRowsSQL("(q.subject = 'consumer' AND q.subject_id = ANY ($3::uuid[])) OR (q.subject = 'pool' AND q.subject_id = (SELECT id FROM pool))") + `
),
qa AS MATERIALIZED (
	SELECT r.subject, r.subject_id, r.refill, r.requests_per_minute,
		CASE WHEN (r.bytes_per_day > 0 AND r.today >= r.bytes_per_day) OR (r.bytes_per_month > 0 AND r.this_month >= r.bytes_per_month) THEN 0
		ELSE least(CASE WHEN r.max_concurrent_leases > 0 THEN greatest(r.max_concurrent_leases - r.active, 0) END,
			CASE WHEN r.requests_per_minute > 0 THEN greatest(floor(r.refill), 0)::bigint END) END AS allow
	FROM qr r
),
cadm AS MATERIALIZED (
	SELECT r.ord, row_number() OVER (PARTITION BY r.consumer_id ORDER BY r.ord) AS k, a.allow
	FROM req r LEFT JOIN qa a ON a.subject = 'consumer' AND a.subject_id = r.consumer_id
	WHERE r.ok AND r.fresh
),
padm AS MATERIALIZED (
	SELECT c.ord, row_number() OVER (ORDER BY c.ord) AS k FROM cadm c WHERE c.allow IS NULL OR c.k <= c.allow
),
elig AS MATERIALIZED (
	SELECT r.*, row_number() OVER (ORDER BY r.ord) AS rn
	FROM req r JOIN padm a ON a.ord = r.ord
	WHERE coalesce(a.k <= (SELECT allow FROM qa WHERE subject = 'pool'), true)
),`)
	} else {
		// Only requests whose consumer and pool have no quota: the others
		// go on with the quota statements.
		b.WriteString(`
elig AS MATERIALIZED (
	SELECT r.*, row_number() OVER (ORDER BY r.ord) AS rn FROM req r WHERE r.ok AND r.fresh AND NOT r.hc AND NOT (SELECT p FROM noqp)
),`)
	}
	b.WriteString(`
want AS MATERIALIZED (
	SELECT count(*) AS n FROM elig
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
	FROM elig v
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
	INSERT INTO {s}.leases (id, proxy_id, pool_id, pool_name, consumer_id, consumer_name, status, acquired_at, expires_at, session_key, target)
	SELECT x.lease_id, x.proxy_id, x.pool_id, $1, x.consumer_id, x.consumer_name, 'active', x.at, x.at + x.us * interval '1 microsecond', '', %[4]s
	FROM (SELECT a.*, t.pool_id, clock_timestamp() AS at FROM assign a JOIN taken t ON t.id = a.proxy_id) x
	RETURNING id, consumer_id, acquired_at, expires_at
)`, slotOrder, proxyCols("p"), redraw, targetValue(tph))
	if key.quota {
		// Quota.TakeToken once per lease taken, at one time: Tokens
		// - n after n takes (exact in floating point: each take
		// subtracted 1 from a value >= 1).
		b.WriteString(`,
tok AS (
	UPDATE {s}.quotas u SET tokens = a.refill - k.n, tokens_at = qn.t
	FROM (SELECT 'consumer'::text AS subject, x.consumer_id AS id, count(*) AS n FROM lease x GROUP BY x.consumer_id
		UNION ALL SELECT 'pool', (SELECT id FROM pool), count(*) FROM lease HAVING count(*) > 0) k, qa a, qn
	WHERE a.subject = k.subject AND a.subject_id = k.id AND a.requests_per_minute > 0
	  AND u.subject = a.subject AND u.subject_id = a.subject_id
)`)
	}
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
SELECT (SELECT id FROM pool) IS NOT NULL, r.ord, r.ok, r.hc, (SELECT p FROM noqp), l.acquired_at, l.expires_at, %s
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

// releaseItem is one release waiting for a batch; usage is its report
// when the batch's key says the releases report usage.
type releaseItem struct {
	id    uuid.UUID
	usage pharox.Usage
}

// execReleaseBatch releases a batch of leases: alone, with the single
// statement; together, with one statement over all of them. withUsage
// (the batch key) says the releases carry usage reports: releases with
// and without one are batched apart.
func (s *Store) execReleaseBatch(ctx context.Context, withUsage bool, items []releaseItem) []batch.Result[*pharox.Lease] {
	out := make([]batch.Result[*pharox.Lease], len(items))
	if len(items) == 1 {
		var u *pharox.Usage
		if withUsage {
			u = &items[0].usage
		}
		out[0].Val, out[0].Err = s.releaseStatement(ctx, items[0].id, u)
		return out
	}
	// A lease released twice in one batch ends once: the first of its
	// releases is sent, the others miss.
	ids := make([]uuid.UUID, 0, len(items))
	first := make(map[uuid.UUID]int, len(items))
	var requests, sent, received []int64
	for i, it := range items {
		if _, dup := first[it.id]; dup {
			continue
		}
		first[it.id] = i
		ids = append(ids, it.id)
		if withUsage {
			requests = append(requests, it.usage.Requests)
			sent = append(sent, it.usage.BytesSent)
			received = append(received, it.usage.BytesReceived)
		}
	}
	// Planned on each call (CacheDescribe runs an unnamed statement) rather
	// than with a cached generic plan: leases grows fast, and a generic
	// plan made while it was small scans the whole table for the ids until
	// an ANALYZE invalidates it. Planning costs far less than that scan.
	var rows pgx.Rows
	var err error
	if withUsage {
		rows, err = s.pool.Query(ctx, s.q(releaseBatchUsageSQL), pgx.QueryExecModeCacheDescribe, ids, s.releaseCommit(), requests, sent, received)
	} else {
		rows, err = s.pool.Query(ctx, s.q(releaseBatchSQL), pgx.QueryExecModeCacheDescribe, ids, s.releaseCommit())
	}
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
		for i, it := range items {
			if l, ok := byID[it.id]; ok && first[it.id] == i {
				out[i].Val = l
			} else {
				out[i].Err = errReleaseMissed
			}
		}
	}
	if err != nil {
		for i, it := range items {
			out[i] = batch.Result[*pharox.Lease]{Err: fmt.Errorf("postgres: release lease %s: %w", it.id, err)}
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

// releaseBatchUsageSQL is releaseBatchSQL for releases with usage
// reports: $3, $4 and $5 are the requests, bytes sent and bytes received
// of the leases $1 (distinct ids), in the same order. The tail
// (usageTailSQL) counts the reports before the proxy rows are locked.
var releaseBatchUsageSQL = `WITH u AS MATERIALIZED (
	SELECT * FROM unnest($1::uuid[], $3::bigint[], $4::bigint[], $5::bigint[]) AS u(id, requests, sent, received)
), l AS (
	UPDATE {s}.leases x SET status = 'released', released_at = clock_timestamp(),
		usage_requests = u.requests, usage_bytes_sent = u.sent, usage_bytes_received = u.received
	FROM u
	WHERE x.id = ANY ($1::uuid[]) AND x.id = u.id AND x.status NOT IN ('released', 'expired')
	RETURNING ` + leaseCols("x") + `
),` + usageTailSQL + `,
c AS MATERIALIZED (
	SELECT proxy_id, count(*)::integer AS n FROM l GROUP BY proxy_id
), locked AS MATERIALIZED (
	SELECT p.id FROM {s}.proxies p
	WHERE (SELECT count(*) FROM qu) >= 0 AND p.id = ANY (ARRAY(SELECT proxy_id FROM c))
	ORDER BY p.id FOR NO KEY UPDATE
), x AS MATERIALIZED (
	SELECT subject_id AS proxy_id, until FROM qu WHERE subject = 'proxy'
), p AS (
	UPDATE {s}.proxies p SET current_leases = p.current_leases - c.n,
		allowance_until = CASE WHEN x.proxy_id IS NOT NULL THEN x.until ELSE p.allowance_until END
	FROM c LEFT JOIN x ON x.proxy_id = c.proxy_id
	WHERE p.id = ANY (ARRAY(SELECT id FROM locked)) AND p.id = c.proxy_id
)
SELECT ` + leaseColumns + `, set_config('synchronous_commit', $2, true) FROM l`
