package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pharox/pharox"
)

// acquireKey identifies a generated acquisition statement without filters.
type acquireKey struct {
	strategy pharox.Strategy
	sticky   bool
	naive    bool
	// idem: the caller chose the lease id (AcquireRequest.LeaseID), so
	// the statement first checks that no lease has it.
	idem bool
	// target: the request names a target (AcquireRequest.Target), so
	// the statement passes over proxies cooling down for it.
	target bool
	// quota: the statement enforces the quotas of the consumer and the
	// pool, whose rows a statement before it in its transaction locked
	// (quotaLockSQL); without, it only checks that they have none.
	quota bool
}

// acquireSQLs are the two forms of the acquisition statement: lean looks
// only for a proxy with a free slot and is what almost every acquisition
// runs; full also looks for a full proxy with an expired lease to reclaim
// and reports whether a retry could succeed. It runs only after lean found
// nothing, which keeps the plan of the hot statement small (PostgreSQL
// initialises every node of a plan on each execution, used or not).
//
// wait is not an acquisition: before the last of the WithAcquireAttempts
// tries, it waits (up to waitLockTimeout) until the transaction holding
// the first candidate's row ends, so that a candidate locked through every
// earlier try is waited for rather than reported as missing. It waits for
// exactly one row, FOR SHARE, in its own implicit transaction that holds
// nothing else, so it can take part in no deadlock.
type acquireSQLs struct{ lean, full, wait string }

// waitLockTimeout bounds how long the waiting try waits for one row lock.
const waitLockTimeout = "2s"

// codeLockNotAvailable is the error of a lock wait that hit lock_timeout.
const codeLockNotAvailable = "55P03"

// acquireStatements returns the two forms of the single statement that
// performs one acquisition; a must already hold the fixed parameters ($1
// pool name, $2 consumer id, $3 lease id, $4 consumer name, $5 duration, $6
// session key and, when sticky, $7 session ttl). The target, when there
// is one, and then the filter values are appended to a; all forms use the
// same parameters.
//
// The statement, CTE by CTE:
//
//   - pool: the pool's id by name.
//   - noq (plain statements): whether the consumer or the pool has a quota,
//     one primary-key probe of quotas each. When one has, the statement
//     takes nothing (the gate below) and says so; AcquireLease then goes
//     on with the quota statement, and remembers to start with it for
//     that consumer or pool (quotaHints).
//   - qn, qr, adm (quota statements): the time, read after quotaLockSQL
//     (run first in the same transaction) locked the quota rows of the
//     consumer and the pool; those rows, with their byte counters rolled
//     to that time, their refilled token bucket and, when they cap
//     concurrent leases, the subject's active unexpired leases counted
//     through leases_active_consumer or leases_active_pool (at most the
//     cap of them); and Quota.Admit over them, consumer then pool (see
//     usage.go for the rules in SQL). A refusal is a gate like the
//     consumer check: no slot, lease, binding or token is taken, and the
//     final row carries the rows as JSON, from which quotaError builds
//     the reference rule's QuotaError.
//   - cur (RoundRobin): the pool's round-robin position, read without a
//     lock. Other strategies never touch it.
//   - bound (sticky): the proxy bound to (pool, key) if the binding is live
//     and the proxy is still a candidate; when there is one, it is the only
//     proxy the statement may take.
//   - free: the first proxy in strategy order with a free slot that no
//     other transaction has locked, locked FOR UPDATE SKIP LOCKED. With a
//     target, proxies cooling down for it are passed over (a primary-key
//     probe of proxy_targets per proxy the walk reaches), here and in
//     every other choice below (bound, stale, the retry check).
//     Concurrent acquisitions therefore never wait for each other: each
//     takes the next free row. LockRows re-checks the WHERE clause against
//     the newest row version, so a proxy filled since the snapshot is
//     skipped. The condition reads only the proxy row.
//   - stale (full form only): when free found nothing, the first full
//     proxy that holds an expired, unreclaimed lease, locked the same way.
//     Keeping this lease lookup out of free keeps the hot path to one
//     index walk.
//   - cand: whichever of the two found a proxy.
//   - expired, reclaimed: lock the chosen proxy's expired leases (SKIP
//     LOCKED: a lease that a concurrent release or cleanup holds is theirs
//     to end) and end them as expired in the same statement that takes the
//     slot. The cardinality test is a one-time filter: when there is
//     nothing to reclaim, the usual case, the UPDATE scans nothing, whatever
//     plan the cached statement has.
//   - taken: increments current_leases, net of the reclaimed leases, under
//     the row lock and only while that stays within max_concurrency. This
//     predicate (plus the proxies_slots CHECK constraint) is what makes
//     over-leasing impossible whatever the selection did.
//   - lease: inserts the lease. Its acquired_at is clock_timestamp() read
//     after the row was locked and updated, and never earlier than the
//     end of a lease it reclaimed.
//   - moved (RoundRobin): moves the position to the leased proxy, unless
//     a concurrent round-robin acquisition holds the cursor row (SKIP
//     LOCKED): it is moving it too. Acquisitions in sequence therefore
//     rotate exactly; concurrent ones read the same position and take
//     successive free proxies, each skipping the rows the others locked,
//     without ever waiting for one another.
//   - bind (sticky): (re)binds the session key until now + ttl; concurrent
//     acquisitions with one key wait for each other only here.
//   - tok (quota statements): Quota.TakeToken on the quotas with a request
//     rate, only when a lease was inserted.
//
// The final row reports whether pool and consumer exist, (full form)
// when no lease was taken, whether a candidate existed in the statement's
// snapshot (it was then locked by a concurrent transaction, and
// AcquireLease tries again), and what the statement saw of quotas (see
// quotaSeen).
//
// Why a statement of its own locks the quota rows: under READ COMMITTED a
// statement reads every table as of its start, so a statement that both
// waited for a quota row and counted leases would count them as they were
// before the holder of that row committed its lease. quotaLockSQL,
// pipelined before the acquisition in one round trip and one implicit
// transaction (see tryAcquire), makes the acquisition start after the
// lock was granted. The lock is held until the acquisition commits: that
// serialises the acquisitions of a capped consumer (or pool) across
// processes, which is what makes a cap exact.
func (s *Store) acquireStatements(st pharox.Strategy, sticky, idem, quota bool, target string, f *pharox.Filters, a *args) acquireSQLs {
	key := acquireKey{strategy: st.OrDefault(), sticky: sticky, naive: s.naive, idem: idem, target: target != "", quota: quota}
	tph := ""
	if target != "" {
		tph = a.add(target)
	}
	if f.IsZero() {
		if v, ok := s.acquireSQL.Load(key); ok {
			return v.(acquireSQLs)
		}
	}
	filter := filterSQL(f, "p", a)
	out := acquireSQLs{
		lean: s.acquireStatement(key, filter, tph, false, false),
		full: s.acquireStatement(key, filter, tph, true, false),
		wait: s.acquireStatement(key, filter, tph, true, true),
	}
	if f.IsZero() {
		s.acquireSQL.Store(key, out)
	}
	return out
}

// acquireStatement builds one form of the statement (see acquireSQLs);
// target is the target's placeholder, "" for none.
func (s *Store) acquireStatement(key acquireKey, filter, target string, full, wait bool) string {
	sticky := key.sticky
	lock := "FOR UPDATE OF p SKIP LOCKED"
	if key.naive {
		lock = "FOR UPDATE OF p"
	}
	var b strings.Builder
	b.WriteString("WITH pool AS MATERIALIZED (\n\tSELECT id FROM {s}.pools WHERE name = $1\n),\n" +
		"consumer AS MATERIALIZED (\n\tSELECT EXISTS (SELECT 1 FROM {s}.consumers WHERE id = $2) AS ok\n)")
	switch key.strategy {
	case pharox.RoundRobin:
		b.WriteString(",\ncur AS MATERIALIZED (\n\tSELECT c.last_proxy_id FROM {s}.pool_cursors c WHERE c.pool_id = (SELECT id FROM pool)\n)")
	case pharox.Random:
		b.WriteString(",\nrs AS MATERIALIZED (\n\tSELECT random() AS r\n)")
	}
	gate := "(SELECT ok FROM consumer)"
	if !wait {
		if key.quota {
			// The quota rows of the consumer and the pool, locked by the
			// statement before (quotaLockSQL), so read here as the last
			// holder committed them, with the active leases counted in a
			// snapshot taken after that commit; the time is read after the
			// lock too. adm is Quota.Admit, consumer and pool.
			b.WriteString(",\nqn AS MATERIALIZED (\n\tSELECT clock_timestamp() AS t\n)" +
				",\nqr AS MATERIALIZED (\n\t" + quotaRowsSQL("(q.subject = 'consumer' AND q.subject_id = $2) OR (q.subject = 'pool' AND q.subject_id = (SELECT id FROM pool))") + "\n)" +
				",\nadm AS MATERIALIZED (\n\tSELECT (SELECT " + limitSQL("r") + " FROM qr r WHERE r.subject = 'consumer') AS cl," +
				"\n\t\t(SELECT " + limitSQL("r") + " FROM qr r WHERE r.subject = 'pool') AS pl\n)")
			gate += " AND (SELECT cl IS NULL AND pl IS NULL FROM adm)"
		} else {
			// Neither the consumer nor the pool may have a quota: one
			// primary-key probe each. When one has, the statement takes
			// nothing and says so, and AcquireLease goes on with the
			// quota statement.
			b.WriteString(",\nnoq AS MATERIALIZED (\n\tSELECT EXISTS (SELECT 1 FROM {s}.quotas q WHERE q.subject = 'consumer' AND q.subject_id = $2) AS c," +
				"\n\t\tEXISTS (SELECT 1 FROM {s}.quotas q WHERE q.subject = 'pool' AND q.subject_id = (SELECT id FROM pool)) AS p\n)")
			gate += " AND NOT (SELECT c OR p FROM noq)"
		}
	}
	if key.idem {
		// A lease with this id exists: take nothing (AcquireLease then
		// returns that lease). A concurrent statement inserting the same
		// id fails on the primary key instead, taking nothing either.
		gate += " AND NOT EXISTS (SELECT 1 FROM {s}.leases WHERE id = $3)"
	}
	free := s.pickSQL(pick{strategy: key.strategy, cols: "p.id", filter: filter, gate: gate, limit: "1", lock: lock, target: target})
	// tf: the filter and, with a target, not cooling down for it.
	tf := withTarget(filter, "p", target)
	staleFilter := tf
	if sticky {
		// A bound proxy cooling down for the target is no candidate: the
		// key is bound anew in strategy order.
		cand := candidateSQL("p", tf)
		b.WriteString(",\nbound AS MATERIALIZED (\n\tSELECT p.id FROM {s}.sessions se JOIN {s}.proxies p ON p.id = se.proxy_id AND p.pool_id = se.pool_id" +
			"\n\tWHERE se.pool_id = (SELECT id FROM pool) AND se.key = $6 AND se.expires_at > clock_timestamp()\n\t  AND " + cand + "\n)")
		// A live binding names the only proxy the statement may take, by
		// primary key; strategy order only without one.
		free = unionSQL([]string{
			"SELECT p.id FROM {s}.proxies p WHERE p.id = (SELECT id FROM bound) AND " + gate + " AND " + freeSQL("p", tf) + " " + lock,
			s.pickSQL(pick{strategy: key.strategy, cols: "p.id", filter: filter, gate: gate + " AND NOT EXISTS (SELECT 1 FROM bound)", limit: "1", lock: lock, target: target}),
		}, "1")
		staleFilter = "(" + tf + " AND (NOT EXISTS (SELECT 1 FROM bound) OR p.id = (SELECT id FROM bound)))"
	}
	// The candidates in the statement's snapshot, unlocked, best first.
	candidates := s.pickSQL(pick{strategy: key.strategy, cols: "p.id", filter: filter, limit: "1", target: target})
	if sticky {
		candidates = unionSQL([]string{
			"SELECT p.id FROM {s}.proxies p WHERE p.id = (SELECT id FROM bound) AND " + freeSQL("p", tf),
			s.pickSQL(pick{strategy: key.strategy, cols: "p.id", filter: filter, gate: "NOT EXISTS (SELECT 1 FROM bound)", limit: "1", target: target}),
		}, "1")
	}
	if wait {
		// Every parameter must appear for its type to be known; the
		// unused CTE is never run.
		b.WriteString(",\nunused AS (\n\tSELECT $3::uuid, $4::text, $5::interval, $6::text")
		if sticky {
			b.WriteString(", $7::interval")
		}
		b.WriteString("\n)")
		fmt.Fprintf(&b, "\nSELECT p.id FROM {s}.proxies p WHERE p.id = (SELECT id FROM (%s) w) FOR SHARE OF p",
			unionSQL([]string{candidates, s.staleSQL(staleFilter, "", "")}, "1"))
		return s.q(b.String())
	}
	staleCTEs := `
cand AS MATERIALIZED (
	SELECT id FROM free
),`
	if full {
		staleCTEs = fmt.Sprintf(`
stale AS MATERIALIZED (
	%s
),
cand AS MATERIALIZED (
	SELECT id FROM free UNION ALL SELECT id FROM stale
),`, s.staleSQL(staleFilter, "NOT EXISTS (SELECT 1 FROM free) AND "+gate, lock))
	}
	redraw := ""
	if key.strategy == pharox.Random {
		redraw = ", rnd = random()"
	}
	fmt.Fprintf(&b, `,
free AS MATERIALIZED (
	%[1]s
),%[2]s
expired AS MATERIALIZED (
	SELECT ARRAY(
		SELECT x.id FROM {s}.leases x
		WHERE x.proxy_id = (SELECT id FROM cand) AND x.status = 'active' AND x.expires_at <= clock_timestamp()
		FOR UPDATE SKIP LOCKED) AS ids
),
reclaimed AS (
	UPDATE {s}.leases l SET status = 'expired', released_at = clock_timestamp()
	WHERE cardinality((SELECT ids FROM expired)) > 0
	  AND l.id = ANY ((SELECT ids FROM expired)::uuid[])
	  AND l.proxy_id = (SELECT id FROM cand) AND l.status = 'active'
	RETURNING l.released_at
),
freed AS MATERIALIZED (
	SELECT count(*)::integer AS n, max(released_at) AS last FROM reclaimed
),
taken AS (
	UPDATE {s}.proxies p SET current_leases = p.current_leases - freed.n + 1%[4]s
	FROM cand, freed
	WHERE p.id = cand.id
	  AND (p.max_concurrency IS NULL OR p.current_leases - freed.n < p.max_concurrency)
	RETURNING %[3]s
),
lease AS (
	INSERT INTO {s}.leases (id, proxy_id, pool_id, pool_name, consumer_id, consumer_name, status, acquired_at, expires_at, session_key, target)
	SELECT $3, t.id, t.pool_id, $1, $2, $4, 'active', ts.at, ts.at + $5::interval, $6, %[5]s
	FROM taken t, freed, LATERAL (SELECT greatest(clock_timestamp(), freed.last) AS at) ts
	RETURNING acquired_at, expires_at
)`, free, staleCTEs, proxyCols("p"), redraw, targetValue(target))
	if key.quota {
		// Quota.TakeToken, only when a lease was taken.
		b.WriteString(",\ntok AS (\n\tUPDATE {s}.quotas u SET tokens = r.refill - 1, tokens_at = qn.t FROM qr r, qn" +
			"\n\tWHERE u.subject = r.subject AND u.subject_id = r.subject_id AND r.requests_per_minute > 0 AND EXISTS (SELECT 1 FROM lease)\n)")
	}
	if key.strategy == pharox.RoundRobin {
		hit := ""
		if sticky {
			// A sticky hit leaves the position where it was, as in the
			// reference store: only a choice in strategy order moves it.
			hit = " NOT EXISTS (SELECT 1 FROM bound) AND"
		}
		b.WriteString(",\nmoved AS (\n\tUPDATE {s}.pool_cursors c SET last_proxy_id = t.id FROM taken t" +
			"\n\tWHERE" + hit + " c.pool_id = ANY (ARRAY(\n\t\tSELECT k.pool_id FROM {s}.pool_cursors k WHERE k.pool_id = t.pool_id FOR NO KEY UPDATE SKIP LOCKED))\n)")
	}
	if sticky {
		b.WriteString(",\nbind AS (\n\tINSERT INTO {s}.sessions (pool_id, key, proxy_id, expires_at)" +
			"\n\tSELECT t.pool_id, $6, t.id, clock_timestamp() + $7::interval FROM taken t" +
			"\n\tON CONFLICT (pool_id, key) DO UPDATE SET proxy_id = excluded.proxy_id, expires_at = excluded.expires_at\n)")
	}
	retry, spent := "false", "false"
	if full {
		// Whether a candidate existed in the statement's snapshot (it was
		// locked by a concurrent transaction: worth another try), and
		// whether a filtered walk may have stopped at its budget. Both
		// only when no lease was taken, both bounded like the walks.
		// Scalar subqueries rather than EXISTS: the planner drops the
		// ORDER BY of an EXISTS subquery and may then scan the table.
		retry = fmt.Sprintf(`CASE WHEN l.acquired_at IS NULL THEN (%s) IS NOT NULL OR (%s) IS NOT NULL
	ELSE false END`, candidates, s.staleSQL(staleFilter, "", ""))
		if filter != "true" {
			spent = "CASE WHEN l.acquired_at IS NULL THEN " + s.budgetSpentSQL(target) + " ELSE false END"
		}
	}
	// Which of the consumer and the pool have a quota, and the refusal
	// (see quotaError) when the quotas refused the acquisition.
	quotas := "(SELECT c FROM noq), (SELECT p FROM noq), NULL::json"
	if key.quota {
		quotas = `(SELECT count(*) > 0 FROM qr WHERE subject = 'consumer'), (SELECT count(*) > 0 FROM qr WHERE subject = 'pool'),
	CASE WHEN (SELECT cl IS NOT NULL OR pl IS NOT NULL FROM adm) THEN json_build_object('now', (SELECT t FROM qn),
		'quotas', (SELECT json_agg(r ORDER BY r.subject) FROM qr r), 'limit', (SELECT coalesce('consumer ' || cl, 'pool ' || pl) FROM adm)) END`
	}
	fmt.Fprintf(&b, `
SELECT (SELECT id FROM pool) IS NOT NULL,
	(SELECT ok FROM consumer),
	%s,
	%s,
	%s,
	l.acquired_at, l.expires_at, %s
FROM (SELECT 1) one LEFT JOIN taken t ON true LEFT JOIN lease l ON true`, retry, spent, quotas, proxyCols("t"))
	return s.q(b.String())
}

// AcquireLease atomically chooses a proxy and leases one of its slots in a
// single statement (see acquireStatement). When every free candidate was
// locked by concurrent transactions it tries again with a short jittered
// backoff, up to WithAcquireAttempts times; ErrNoProxyAvailable therefore
// means that the last try saw no free candidate in its snapshot, or that
// the free ones stayed locked through every try.
func (s *Store) AcquireLease(ctx context.Context, req pharox.AcquireRequest) (*pharox.Lease, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if req.Filters.HasPredicate() {
		return nil, fmt.Errorf("postgres: acquire: predicate filters cannot run in the database: %w", pharox.ErrUnsupported)
	}
	idem := req.LeaseID != uuid.Nil
	leaseID := req.LeaseID
	if !idem {
		leaseID = uuid.New()
	}
	lease, err := s.acquire(ctx, &req, leaseID, idem)
	if idem && pgCode(err) == codeUniqueViolation {
		// A concurrent acquisition with the same id inserted its lease
		// first; this statement took nothing.
		if l, perr := s.priorLease(ctx, &req); !errors.Is(perr, errNoPriorLease) {
			return l, perr
		}
	}
	return lease, err
}

// acquire performs AcquireLease with the lease id leaseID; idem says the
// caller chose it. It starts with the quota statements when the consumer
// or the pool was seen with a quota (see quotaHints), else with the plain
// ones, which switch to the quota statements when they find a quota.
func (s *Store) acquire(ctx context.Context, req *pharox.AcquireRequest, leaseID uuid.UUID, idem bool) (*pharox.Lease, error) {
	quota := s.hints.has(req)
	for {
		lease, err := s.acquireWith(ctx, req, leaseID, idem, quota)
		if errors.Is(err, errQuotaSeen) && !quota {
			quota = true
			continue
		}
		if idem && errors.Is(err, pharox.ErrQuotaExceeded) {
			// A retry of an acquisition that succeeded is not checked
			// against quotas: it returns its lease.
			if l, perr := s.priorLease(ctx, req); !errors.Is(perr, errNoPriorLease) {
				return l, perr
			}
		}
		return lease, err
	}
}

// errQuotaSeen: a plain acquisition statement found a quota on the
// consumer or the pool and took nothing; the quota statements serve it.
var errQuotaSeen = errors.New("postgres: the consumer or pool has a quota")

// acquireWith performs the acquisition with the quota statements or the
// plain ones; the plain ones return errQuotaSeen when they found a quota.
func (s *Store) acquireWith(ctx context.Context, req *pharox.AcquireRequest, leaseID uuid.UUID, idem, quota bool) (*pharox.Lease, error) {
	sticky := req.SessionKey != ""
	a := singleArgs(req, leaseID)
	sqls := s.acquireStatements(req.Strategy, sticky, idem, quota, req.Target, req.Filters, a)
	pre := s.preStatements(req, quota)

	// The lean statement first (alone or in a batch); on a miss, at once
	// the full one, which also reclaims from full proxies and says whether
	// to retry.
	if s.batching() && !sticky {
		lease, err := s.batchAcquire(ctx, req, leaseID, sqls.lean, a.vals, quota)
		if !errors.Is(err, errNotServed) {
			return lease, err
		}
	} else {
		lease, _, err := s.tryAcquire(ctx, req, sqls.lean, a.vals, pre, quota)
		if err != nil || lease != nil {
			return s.finishAcquire(lease, leaseID, req), err
		}
	}
	backoff := 100 * time.Microsecond
	for attempt := 1; ; attempt++ {
		if idem && attempt == 1 {
			// The statements take nothing while a lease with the id
			// exists, which may have been committed by a concurrent
			// acquisition with the same id since the last one ran.
			if l, err := s.priorLease(ctx, req); !errors.Is(err, errNoPriorLease) {
				return l, err
			}
		}
		if attempt > 1 && attempt == s.cfg.maxAttempts {
			// The last try first waits for the transaction holding the
			// best candidate.
			if err := s.waitForCandidate(ctx, sqls.wait, a.vals); err != nil {
				if pgCode(err) == codeLockNotAvailable {
					return nil, fmt.Errorf("postgres: acquire from pool %q: %w: its candidates stayed locked by other transactions", req.PoolName, pharox.ErrNoProxyAvailable)
				}
				return nil, fmt.Errorf("postgres: acquire from pool %q: %w", req.PoolName, err)
			}
		}
		lease, m, err := s.tryAcquire(ctx, req, sqls.full, a.vals, pre, quota)
		if err != nil || lease != nil {
			return s.finishAcquire(lease, leaseID, req), err
		}
		if idem {
			if l, err := s.priorLease(ctx, req); !errors.Is(err, errNoPriorLease) {
				return l, err
			}
		}
		if m.budgetSpent && !m.retry {
			return nil, fmt.Errorf("postgres: acquire from pool %q: %w: the filter matched none of the first %d free proxies in strategy order; it is too selective to serve from a pool this size",
				req.PoolName, pharox.ErrNoProxyAvailable, s.cfg.scanBudget)
		}
		if !m.retry || attempt >= s.cfg.maxAttempts {
			return nil, fmt.Errorf("postgres: acquire from pool %q: %w", req.PoolName, pharox.ErrNoProxyAvailable)
		}
		if err := sleep(ctx, backoff/2+rand.N(backoff/2+1)); err != nil {
			return nil, fmt.Errorf("postgres: acquire from pool %q: %w", req.PoolName, err)
		}
		backoff = min(backoff*2, 5*time.Millisecond)
	}
}

// queued is a statement sent before an acquisition statement in its
// transaction (see tryAcquire).
type queued struct {
	sql  string
	args []any
}

// preStatements are the statements that precede req's acquisition
// statement in its transaction: the session key's advisory lock for a
// sticky request, then, with quota, the lock of the consumer's and the
// pool's quota rows.
func (s *Store) preStatements(req *pharox.AcquireRequest, quota bool) []queued {
	var pre []queued
	if key := s.sessionLockKey(req); key != "" {
		pre = append(pre, queued{sessionLockSQL, []any{key}})
	}
	if quota {
		pre = append(pre, queued{s.q(quotaLockSQL), []any{req.ConsumerID, req.PoolName}})
	}
	return pre
}

// errNoPriorLease: no lease has the id a request chose.
var errNoPriorLease = errors.New("postgres: no lease with this id")

// priorLease returns the lease that already has the id req chose, as it is
// now, with its proxy as it is now; ErrAlreadyExists when that lease was
// taken from another pool or by another consumer; errNoPriorLease when
// there is none.
func (s *Store) priorLease(ctx context.Context, req *pharox.AcquireRequest) (*pharox.Lease, error) {
	var lr leaseRow
	err := s.pool.QueryRow(ctx, s.q(`SELECT `+leaseColumns+` FROM {s}.leases WHERE id = $1`), req.LeaseID).Scan(lr.targets()...)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errNoPriorLease
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: acquire: look up lease %s: %w", req.LeaseID, err)
	}
	l := lr.lease()
	if l.PoolName != req.PoolName || l.ConsumerID != req.ConsumerID {
		return nil, fmt.Errorf("%w: postgres: acquire: lease id %s is taken by a lease of another pool or consumer", pharox.ErrAlreadyExists, req.LeaseID)
	}
	p, err := s.GetProxy(ctx, l.ProxyID)
	switch {
	case err == nil:
		l.Proxy = p
	case !errors.Is(err, pharox.ErrProxyNotFound):
		return nil, fmt.Errorf("postgres: acquire: %w", err)
	}
	return l, nil
}

// singleArgs returns the fixed parameters of the single acquisition
// statement (see acquireStatements) for req.
func singleArgs(req *pharox.AcquireRequest, leaseID uuid.UUID) *args {
	a := &args{}
	a.add(req.PoolName)
	a.add(req.ConsumerID)
	a.add(leaseID)
	a.add(req.ConsumerName)
	a.add(req.Duration.Truncate(time.Microsecond))
	a.add(req.SessionKey)
	if req.SessionKey != "" {
		a.add(req.SessionTTL.Truncate(time.Microsecond))
	}
	return a
}

// finishAcquire fills in the lease fields the statement does not return.
func (s *Store) finishAcquire(lease *pharox.Lease, id uuid.UUID, req *pharox.AcquireRequest) *pharox.Lease {
	if lease == nil {
		return nil
	}
	lease.ID = id
	lease.ConsumerID = req.ConsumerID
	lease.ConsumerName = req.ConsumerName
	lease.PoolName = req.PoolName
	lease.SessionKey = req.SessionKey
	lease.Target = req.Target
	return lease
}

// sessionLockSQL takes the transaction-scoped advisory lock that
// serialises sticky acquisitions of one (pool, session key).
const sessionLockSQL = `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`

// sessionLockKey is what sessionLockSQL hashes for a sticky request: the
// schema, pool and key. Two keys that collide only wait for each other.
func (s *Store) sessionLockKey(req *pharox.AcquireRequest) string {
	if req.SessionKey == "" {
		return ""
	}
	return "pharox.session:" + s.cfg.schema + "/" + req.PoolName + "/" + req.SessionKey
}

// tryAcquire runs the acquisition statement once, after the statements
// in pre (see preStatements), in the same implicit transaction and round
// trip (one pipelined batch): under READ COMMITTED each statement's
// snapshot is taken when it starts, after the locks the ones before it
// took were granted. So a sticky statement sees the binding that a
// concurrent first use of its key committed before releasing the session
// lock, and concurrent first uses end on one proxy (without the lock each
// would read "no binding" from its own snapshot, SKIP LOCKED would spread
// them, and the last upsert would win); and a quota statement counts the
// leases that the last holder of its quota rows committed.
//
// It also applies what the statement says about quotas (quota says which
// statement it is): a plain statement that found one returns
// errQuotaSeen; a quota statement's refusal is returned as the
// reference rule's *pharox.QuotaError.
func (s *Store) tryAcquire(ctx context.Context, req *pharox.AcquireRequest, sql string, vals []any, pre []queued, quota bool) (lease *pharox.Lease, m miss, err error) {
	var rows pgx.Rows
	if len(pre) == 0 {
		rows, err = s.pool.Query(ctx, sql, vals...)
	} else {
		b := &pgx.Batch{}
		for _, p := range pre {
			b.Queue(p.sql, p.args...)
		}
		b.Queue(sql, vals...)
		br := s.pool.SendBatch(ctx, b)
		defer func() {
			// The batch is one implicit transaction, committed at its
			// end: only once Close has read that answer did the lease
			// commit. (Rows are answered before it; a server stopped in
			// between has sent a lease it then lost.)
			if cerr := br.Close(); cerr != nil && err == nil {
				lease, m, err = nil, miss{}, fmt.Errorf("postgres: acquire: %w", cerr)
			}
		}()
		for range pre {
			if _, err = br.Exec(); err != nil {
				break
			}
		}
		if err == nil {
			rows, err = br.Query()
		}
	}
	if err != nil {
		return nil, m, fmt.Errorf("postgres: acquire: %w", err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return nil, m, fmt.Errorf("postgres: acquire: %w", err)
		}
		return nil, m, errors.New("postgres: acquire: statement returned no row")
	}
	var (
		poolOK, consumerOK bool
		qs                 quotaSeen
		acquiredAt         *time.Time
		expiresAt          *time.Time
		pr                 proxyRow
	)
	dest := append([]any{&poolOK, &consumerOK, &m.retry, &m.budgetSpent, &qs.consumer, &qs.pool, &qs.refusal, &acquiredAt, &expiresAt}, proxyDest(rows, 7, &pr)...)
	if err := rows.Scan(dest...); err != nil {
		return nil, miss{}, fmt.Errorf("postgres: acquire: %w", err)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, miss{}, fmt.Errorf("postgres: acquire: %w", err)
	}
	switch {
	case !poolOK:
		return nil, miss{}, fmt.Errorf("postgres: acquire: %w", pharox.ErrPoolNotFound)
	case !consumerOK:
		return nil, miss{}, fmt.Errorf("postgres: acquire: %w", pharox.ErrConsumerNotFound)
	}
	if err := s.applyQuotaSeen(req, quota, &qs); err != nil {
		return nil, miss{}, err
	}
	if acquiredAt == nil {
		return nil, m, nil
	}
	return acquiredLease(&pr, *acquiredAt, *expiresAt), miss{}, nil
}

// quotaSeen is what an acquisition statement reports about quotas:
// whether the consumer and the pool have one, and the refusal (JSON, see
// quotaError) when they refused the acquisition.
type quotaSeen struct {
	consumer, pool bool
	refusal        []byte
}

// applyQuotaSeen updates the hints from what a statement (a quota one when
// quota) saw, and returns errQuotaSeen when a plain statement found a
// quota, or the QuotaError of a refusal.
func (s *Store) applyQuotaSeen(req *pharox.AcquireRequest, quota bool, qs *quotaSeen) error {
	switch {
	case quota:
		s.hints.note(req, qs.consumer, qs.pool)
	case qs.consumer || qs.pool:
		s.hints.note(req, qs.consumer, qs.pool)
		return errQuotaSeen
	}
	if qs.refusal != nil {
		return fmt.Errorf("postgres: acquire from pool %q: %w", req.PoolName, quotaError(qs.refusal))
	}
	return nil
}

// waitForCandidate runs the wait form (see acquireSQLs) with lock_timeout
// waitLockTimeout, local to its implicit transaction, which commits at
// once: it only waits, and takes nothing.
func (s *Store) waitForCandidate(ctx context.Context, sql string, vals []any) error {
	b := &pgx.Batch{}
	b.Queue(`SELECT set_config('lock_timeout', $1, true)`, waitLockTimeout)
	b.Queue(sql, vals...)
	return s.pool.SendBatch(ctx, b).Close()
}

// miss is what the full acquisition statement reports when it took no
// lease: whether a candidate existed (locked by a concurrent transaction,
// so another try may succeed), and whether a filtered walk may have
// stopped at its scan budget.
type miss struct{ retry, budgetSpent bool }

// proxyDest returns the scan destinations of the proxy columns that follow
// the column at index marker: pr's fields when that column is not NULL (the
// row carries a proxy), else places that discard the NULLs.
func proxyDest(rows pgx.Rows, marker int, pr *proxyRow) []any {
	if rows.RawValues()[marker] != nil {
		return pr.targets()
	}
	return make([]any, len(proxyColumns))
}

// acquiredLease is the active lease an acquisition statement reported on
// the proxy in pr; the caller fills in what the request says (see
// finishAcquire).
func acquiredLease(pr *proxyRow, acquiredAt, expiresAt time.Time) *pharox.Lease {
	p := pr.proxy()
	return &pharox.Lease{
		ProxyID:    p.ID,
		PoolID:     p.PoolID,
		Status:     pharox.LeaseActive,
		AcquiredAt: utc(acquiredAt),
		ExpiresAt:  utc(expiresAt),
		Proxy:      p,
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// FindAvailableProxy returns the proxy AcquireLease would choose now,
// without locking or leasing it and without moving the round-robin cursor.
func (s *Store) FindAvailableProxy(ctx context.Context, pool string, filters *pharox.Filters, strategy pharox.Strategy) (*pharox.Proxy, error) {
	if !strategy.Valid() {
		return nil, fmt.Errorf("%w: unknown strategy %q", pharox.ErrInvalidArgument, strategy)
	}
	if err := filters.Validate(); err != nil {
		return nil, err
	}
	if filters.HasPredicate() {
		return nil, fmt.Errorf("postgres: find proxy: predicate filters cannot run in the database: %w", pharox.ErrUnsupported)
	}
	a := &args{}
	a.add(pool)
	filter := filterSQL(filters, "p", a)
	sql := s.q(`WITH pool AS MATERIALIZED (SELECT id FROM {s}.pools WHERE name = $1),
cur AS MATERIALIZED (SELECT last_proxy_id FROM {s}.pool_cursors WHERE pool_id = (SELECT id FROM pool)),
rs AS MATERIALIZED (SELECT random() AS r),
c AS MATERIALIZED (` + unionSQL([]string{
		s.pickSQL(pick{strategy: strategy, cols: "p.id", filter: filter, limit: "1"}),
		s.staleSQL(filter, "", ""),
	}, "1") + `)
SELECT (SELECT id FROM pool) IS NOT NULL, ` + proxyCols("p") + `
FROM (SELECT 1) one LEFT JOIN {s}.proxies p ON p.id = (SELECT id FROM c)`)
	rows, err := s.pool.Query(ctx, sql, a.vals...)
	if err != nil {
		return nil, fmt.Errorf("postgres: find proxy: %w", err)
	}
	defer rows.Close()
	if !rows.Next() {
		return nil, fmt.Errorf("postgres: find proxy: %w", rows.Err())
	}
	var poolOK bool
	var pr proxyRow
	found := rows.RawValues()[1] != nil
	if err := rows.Scan(append([]any{&poolOK}, proxyDest(rows, 1, &pr)...)...); err != nil {
		return nil, fmt.Errorf("postgres: find proxy: %w", err)
	}
	switch {
	case !poolOK:
		return nil, fmt.Errorf("postgres: find proxy in pool %q: %w", pool, pharox.ErrPoolNotFound)
	case !found:
		return nil, fmt.Errorf("postgres: find proxy in pool %q: %w", pool, pharox.ErrNoProxyAvailable)
	}
	return pr.proxy(), nil
}
