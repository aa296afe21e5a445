// Package postgres is the pharox.Storage for many workers on many machines
// sharing one proxy inventory. PostgreSQL is the only coordinator: any
// number of processes and hosts lease from the same pools through it, and
// its row locks and constraints alone guarantee that no proxy is ever leased
// beyond its max_concurrency.
//
// # Usage
//
//	pool, err := pgxpool.New(ctx, "postgres://user@db:5432/app")
//	if err != nil { ... }
//	defer pool.Close()
//	// Once at start-up; safe to run from every process at once.
//	if err := postgres.Migrate(ctx, pool); err != nil { ... }
//	store, err := postgres.New(ctx, pool)
//	if err != nil { ... }
//	m := pharox.NewManager(store)
//
// Tables live in the schema "pharox" unless [WithSchema] names another
// (pass the same option to Migrate and New); several stores may share one
// database and one pool with different schemas. Migrations are embedded SQL
// files (migrations/NNNN_name.sql) recorded in the schema's
// schema_migrations table; [Migrate] applies the missing ones in a single
// transaction under a transaction-scoped advisory lock, so processes that
// start together do not race. [New] refuses a schema that is not migrated.
// The store never closes the caller's pool.
//
// # Acquisition
//
// AcquireLease is one SQL statement, one round trip and one transaction:
// data-modifying CTEs choose the candidate, lock it FOR UPDATE SKIP LOCKED,
// reclaim its expired leases, increment current_leases under the
// max_concurrency check, insert the lease, and (for RoundRobin and sticky
// sessions) move the pool's cursor and bind the session key. See
// acquireStatements for the statement CTE by CTE, and EXPLAIN.md for its
// plans. Only when that statement finds no free proxy does a second,
// fuller form of it run, which also considers full proxies holding an
// expired lease and tells whether a retry could succeed. Concurrent acquisitions never wait for each other's proxy rows:
// each skips rows locked by another transaction and takes the next
// candidate in strategy order. Over-leasing is impossible whatever the
// selection did, because the increment only happens while
// current_leases < max_concurrency on the locked, newest row version, and a
// CHECK constraint (proxies_slots) backs it.
//
// SKIP LOCKED has a cost: when every free candidate is locked at the
// instant of the statement (being leased or released by others), it finds
// nothing. The full form then also reports whether a candidate existed in
// its snapshot; if so AcquireLease tries again after a jittered backoff of
// 100µs to 5ms, up to 12 tries ([WithAcquireAttempts]), and before the
// last one it waits (up to 2s) for the transaction that holds its best
// candidate: one row, FOR SHARE, in a statement of its own that holds
// nothing else, so the wait can take part in no deadlock. So
// ErrNoProxyAvailable means that the pool had no free matching proxy, or
// that its candidates stayed locked through every try and that wait. A
// CleanupExpiredLeases running meanwhile never makes an acquisition fail.
//
// # Strategies and indexes
//
// Every strategy walks a partial index over the pool's leasable proxies
// that have a free slot (migration 0002), so the cost of an acquisition
// does not depend on the size of the pool or on how many of its proxies
// are busy: busy proxies are not in these indexes. has_room, a stored
// generated column (max_concurrency IS NULL OR current_leases <
// max_concurrency), keeps the index predicates exact without any
// statement having to maintain it.
//
//   - FirstAvailable walks proxies_free_first (pool, status rank,
//     checked_at DESC NULLS LAST, id), the order of
//     pharox.CompareFirstAvailable, and takes the first unlocked entry.
//   - LeastUsed walks proxies_free_least (pool, status rank,
//     current_leases, id), the order of pharox.CompareLeastUsed.
//   - RoundRobin keeps its position per pool in pool_cursors and walks
//     proxies_free_id (pool, id) from just after it, then from the start.
//     The statement moves the position only if no concurrent round-robin
//     acquisition holds that row (SKIP LOCKED again), so round-robin
//     acquisitions never queue behind each other's commits: in sequence
//     they rotate exactly, concurrently they take successive free proxies
//     after the position they all read. A sticky hit does not move it.
//   - Random walks proxies_free_random (pool, rnd) from a random point and
//     wraps around; the acquisition redraws the rnd of the proxy it took,
//     so that no proxy keeps a position that favours it.
//
// When no proxy has a free slot, the full form looks for an expired,
// unreclaimed lease of the pool through leases_active_pool (pool,
// expires_at), oldest first, rather than visiting full proxies.
//
// The price is paid by writes: a counter update that changes has_room
// (always, with max_concurrency 1) or current_leases (in
// proxies_free_least) is not HOT and adds an entry to each index of the
// table, and the entries it leaves behind are dead until VACUUM removes
// them. Run autovacuum (PostgreSQL's default) or VACUUM the proxies table
// regularly; on a server without it, the walks slow down as dead entries
// pile up at the front of the indexes. AddProxies runs ANALYZE on the
// proxies table after an import that grew it by a tenth, as autovacuum
// would, so that the planner knows a pool is large and walks these
// indexes instead of sorting.
//
// # Filters
//
// Filters (source, country, city, ISP, ASN, protocol, tags, point and
// radius, nested AllOf/AnyOf/NoneOf) become SQL with bind parameters only;
// every generated expression is NULL-free so that NoneOf negates exactly
// like pharox.Filters.Match. Predicate filters cannot run in the database
// and give ErrUnsupported. Radius filters need no PostGIS: a bounding box
// around the circle (split at the antimeridian, dropped when the circle
// reaches a pole) and the haversine distance on a sphere of
// pharox.EarthRadiusKM decide.
//
// Every filter shape is served the same way: the strategy's index is
// walked in order and each free proxy is checked against the filter (a
// primary-key lookup in a LATERAL subquery, which keeps the order and
// locks only rows that match). The work of a call is therefore the free
// proxies ahead of the first match, and never more than the scan budget
// ([WithFilterScanBudget], default [DefaultFilterScanBudget] per walk;
// RoundRobin and Random walk two ranges). A filter that matches none of
// the free proxies within the budget ends the call with
// ErrNoProxyAvailable saying that the filter is too selective to serve
// from a pool that size; busy proxies never count against the budget. No
// filter shape has an index of its own: a filter that matches a fair share
// of the free proxies (a country, a protocol, a tag) is found within a few
// entries, whatever the pool size.
//
// Timestamps come from the database clock: AcquiredAt is clock_timestamp()
// read after the proxy row was locked and updated, ReleasedAt likewise
// inside the statement that frees the slot, so lease intervals of one proxy
// never overlap beyond its limit on the database's time line.
//
// # Per-target health
//
// The store implements pharox.TargetStore: per (proxy, target) state in
// the proxy_targets table (migration 0004, primary key (proxy_id, target),
// ON DELETE CASCADE with the proxy). An acquisition with
// AcquireRequest.Target adds one condition to the walk of every strategy,
// alone, batched or sticky: a scalar subquery that looks the proxy's entry
// up by primary key and passes over the proxy while its cooling_until is
// in the future. The planner runs it as a SubPlan for each entry the walk
// reaches and cannot turn it into a join over the target's entries (as it
// may a NOT EXISTS), so the work grows with the proxies cooling down for
// the target that the walk passes, never with the pool; entries passed
// over do not count against a filter's scan budget. The probe locks
// nothing. A sticky binding whose proxy cools down for the target is
// bound anew in strategy order. EXPLAIN.md shows the plan.
//
// ApplyTargetOutcome is one transaction of two pipelined round trips. The
// first takes a transaction-scoped advisory lock on the proxy (outcomes of
// one proxy apply one at a time, so its cap and escalation count are exact
// across processes; acquisitions never take it), reads the time (the
// outcome's At, or clock_timestamp()) and the entry FOR UPDATE; the
// reference rule pharox.TargetState.Apply runs in Go; the second writes the
// entry with one upsert (the foreign key makes a missing proxy
// ErrProxyNotFound), evicts the proxy's longest-idle entries beyond the
// policy's cap when the entry is new, counts the proxy's entries banned
// within the escalation window, and commits. Inserting a new entry takes
// a key-share lock on its proxy row for the foreign key: acquisitions pass
// over the proxy for that moment. A ban takes effect for every
// acquisition that starts after ApplyTargetOutcome returned; one already
// running may still take the proxy. PurgeTargetStates deletes entries idle
// before a time through an index on idle_at (a stored generated column,
// the later of updated_at and cooling_until). PoolTargetStats reads the
// pool's proxies and their entries, never a lease.
//
// # Usage and quotas
//
// The store implements pharox.UsageStore (migration 0005). Leases keep
// their target and, once released with a usage report, the report
// (usage_requests, usage_bytes_sent, usage_bytes_received; NULL when
// none). usage_hourly holds one row per (UTC hour of release, consumer,
// proxy, target), with the pool, the leases, requests and bytes; quotas
// one row per consumer, pool or proxy with limits, with the counters of
// pharox.Quota. The reference rules of pharox.Quota run in SQL, written
// operation for operation like the Go ones (floating point included) and
// checked against them by TestQuotaSQLMatchesReference.
//
// A release with a usage report is still one statement (batched releases
// with reports share one too): it ends the lease and stores the report,
// upserts the hour's bucket, locks the quota rows of the lease's consumer,
// pool and proxy (in (subject, id) order), reads the time, applies
// Quota.AddBytes to each, and frees the slot while setting the proxy's
// allowance_until to its quota's Quota.ExhaustedUntil. A release without
// a report runs the statement it always did. Only the release that ended
// the lease counts it; expiry counts nothing.
//
// An acquisition for a consumer or a pool with a quota is one round trip
// and one transaction of two statements: the first locks their quota rows
// FOR UPDATE (consumer first), the second is the acquisition statement
// with quota CTEs. Because the second statement's snapshot is taken after
// the lock was granted, it counts every lease the previous holder of the
// lock committed; it counts the subject's active unexpired leases through
// leases_active_consumer or leases_active_pool, at most the cap of them,
// and applies Quota.Admit at one time read after the lock. A refused
// acquisition takes nothing and returns the *pharox.QuotaError of the
// reference rule; a successful one applies Quota.TakeToken. The lock
// serialises a capped subject's acquisitions from every process until
// they commit, which is what makes the cap exact; other consumers wait for
// nothing of it (unless their pool has a quota). Batches carry quotas too:
// capped acquisitions are batched per consumer, the batch admits its
// requests as acquisitions one after another would be, and the requests
// it refuses are answered by the single statement.
//
// Without a quota the acquisition is the statement it was, plus two
// primary-key probes of quotas (one per request and one per pool in a
// batch) in its gate: when one finds a quota, the statement takes nothing
// and the store goes on with the quota statements, and remembers the
// consumer or pool (quotaHints) to start with them next time; a quota
// statement that finds the quota gone makes it forget. The hint only
// saves a round trip, correctness never depends on it. Every lease also
// enters leases_active_consumer, one more index entry per acquisition.
//
// A proxy whose allowance is used up is passed over where the walk reads
// its row (allowance_until in the future), like a proxy the filter
// rejects: the cost is per proxy passed over, and a pool without proxy
// quotas pays one comparison per candidate. SetQuota sets allowance_until
// too (a limit lowered below the counters), DeleteQuota clears it, and a
// new day or month ends it by itself.
//
// SetQuota is a transaction: the quota row is locked, a new quota's
// counters are summed from the subject's buckets of the day and month
// (usage_hourly_consumer, _pool or _proxy), the row is upserted, and the
// subject is checked (a pool row FOR KEY SHARE, a proxy row updated), so a
// concurrent DeletePool or DeleteProxy, which lock quota rows first and
// delete them, leaves no quota behind. Every transaction locks quota rows
// before proxy rows. QueryUsage reads buckets by a range of the primary
// key (hour_start first) or of usage_hourly_pool or usage_hourly_consumer,
// planned on each call; its cost grows with the buckets selected. Buckets
// outlive proxies and pools until PurgeUsage.
//
// # Batching
//
// Concurrent calls of one Store share statements. An acquisition that
// finds no statement of its kind (same pool, strategy and filters)
// running yields the processor once, so that callers woken with it can
// join it, then runs, alone if none did, with the statement above;
// acquisitions that arrive meanwhile queue and leave together, up to
// [WithMaxBatch] of them (default [DefaultMaxBatch]), in one statement that
// locks as many free candidates as there are requests (FOR UPDATE SKIP
// LOCKED again), lays out their free slots in the order that many
// acquisitions in sequence would take them, and leases slot i to request i:
// the same proxies, counts and round-robin position as one acquisition
// after another, which the tests check against the reference store.
// Requests the batch could not serve (their candidates were locked by
// other transactions) go on alone with the fuller statement. Releases are
// batched the same way, one UPDATE over the leases' ids (releases with and
// without usage reports apart). A lone caller
// therefore waits for nothing but that pass through the scheduler, while
// under load the fixed cost of a statement (executor start-up, a round
// trip, a commit and its WAL flush) is paid once per batch: that, not row
// locking, is what limits the throughput of a busy store on a small
// server (see BENCHMARKS.md). Sticky acquisitions are never batched.
//
// Each call keeps its own outcome: a batch's statement either commits all
// of its leases or none, and an error fails only the calls it carried. A
// call that runs alone runs on its caller's goroutine with the caller's
// context, as without batching. A queued caller whose context ends leaves
// without a statement if its batch has not started; otherwise it gets
// ctx.Err() at once, and a lease taken for it is released in the
// background, so no slot is held for a caller that has gone.
// WithMaxBatch(1) turns batching off.
//
// # Expiry
//
// A lease past its ExpiresAt keeps its slot until something ends it:
// ReleaseLease (which still ends it as released), RenewLease (which ends it
// as expired), CleanupExpiredLeases, or an acquisition that picks its proxy.
// An acquisition first looks for a proxy with a free slot; only when there
// is none does it pick a full proxy holding an expired lease, and it then
// reclaims that lease and takes the slot in the same statement. Either way
// an expired lease counts until the moment it is atomically reclaimed, so
// expiry can never push a proxy over its limit.
//
// CleanupExpiredLeases ends expired leases set-based, in batches of 200,
// each one statement in its own implicit transaction (no row stays locked
// across a round trip). It locks leases and then their proxies, in id
// order, FOR UPDATE SKIP LOCKED: a lease that a release is ending, or
// whose proxy another transaction holds, is left to them or to the next
// cleanup. It waits for no row, and acquisitions skip the rows it holds
// for the length of one short statement. Lock order is lease, usage
// bucket, quota, proxy everywhere a transaction waits (quota rows in
// (subject, id) order: consumers, pools, proxies), statements that free
// slots of several proxies (batched releases, cleanup) lock those rows in
// id order, and acquisitions wait for no proxy, lease or cursor row at all
// (sticky acquisitions of one session key wait only for each other, see
// Sticky sessions; acquisitions of a consumer or pool with a quota wait
// for its quota rows, holding at most a session key's lock and quota rows
// that come earlier in that order), which keeps the store free of
// deadlocks.
//
// # Sticky sessions
//
// A sticky acquisition first takes a transaction-scoped advisory lock on
// a hash of (schema, pool, session key), pipelined with the acquisition
// statement in one implicit transaction and one round trip. Under READ
// COMMITTED the statement's snapshot is taken once the lock is granted,
// so it sees the binding a concurrent first use of the key committed:
// concurrent first uses of one key end on one proxy while it has room.
// Plain acquisitions never take the lock. A sticky hit does not move the
// round-robin position; only a choice in strategy order does.
//
// # Retries and idempotency
//
// An acquisition with AcquireRequest.LeaseID set first checks, in the
// same statement, that no lease has that id; if one has, it takes nothing
// and AcquireLease returns that lease as it is now (active or ended, with
// its proxy as it is now), or ErrAlreadyExists when it was taken from
// another pool or by another consumer. Two acquisitions with one id at
// the same moment both pass that check, but the lease id is the primary
// key: the second insert fails, its statement (slot included) rolls back,
// and AcquireLease returns the first one's lease. Batches do the same,
// per request; a batch that meets a conflict leaves its requests to the
// single statement.
//
// pgx itself never sends a statement twice: pgxpool retries nothing, and
// pgconn.SafeToRetry is true only for errors raised before a byte reached
// the server (database/sql's stdlib adapter uses it; this store does not
// go through database/sql). The store retries an acquisition only after
// a statement that reported taking nothing, and never retries a release.
// So a release is applied once or not at all, and ErrLeaseNotActive from
// ReleaseLease always means that the lease had already ended; a caller
// that retries a release after a lost answer gets ErrLeaseNotActive for
// its own release, and can tell from GetLease that the lease is released.
//
// # Releases and health
//
// ReleaseLease is one statement that updates the lease only while it is
// active and decrements its proxy: PostgreSQL re-checks the status on the
// newest row version, so each lease ends exactly once and frees exactly one
// slot. Releases commit with synchronous_commit off (local to their
// transaction) unless [WithDurableReleases] is given: a release lost in a
// database crash only keeps its slot taken until the lease expires, never
// frees a slot twice, and every acquisition, which commits synchronously,
// flushes all WAL before it, including the releases whose slots it took.
// This halves the WAL flush waits of an acquire+release pair. ApplyHealthCheckResult is one UPDATE whose SET clause mirrors
// pharox.Proxy.ApplyHealthCheck under the row lock; an unknown proxy gives
// (nil, nil).
//
// Ended leases stay in the leases table until PurgeEndedLeases deletes
// them. Proxy passwords are stored as given (protect the database) and are
// never part of an error message.
//
// # API keys, audit log and lease verdicts
//
// Migration 0003 adds the tables of [pharox.KeyStore] and the column of
// [pharox.LeaseVerdictStore]. api_keys holds one row per key: id, name
// (unique), role, digest (the SHA-256 of the secret, bytea, unique: the
// secret itself is never stored), hint (its first characters), consumers
// and pools (text[]), and created_at, expires_at, revoked_at and
// last_used_at. A lookup by digest goes through the unique index and
// compares the digest again in constant time; TouchAPIKeys is one UPDATE
// over unnest()ed arrays. audit_log holds one row per admin action (id
// unique, so a retried append is a no-op; an identity seq orders equal
// times) indexed by (at, seq). leases.verdict_at records when a lease's
// one ban or failure verdict was claimed: the claim is one UPDATE ...
// WHERE verdict_at IS NULL, so concurrent claims from any process queue on
// the row lock and exactly one finds it unset.
//
// # Tests
//
// The tests need a server and skip without one:
//
//	PHAROX_TEST_POSTGRES_URL='postgres://postgres@127.0.0.1:5432/test?sslmode=disable' \
//	    go test -race ./storage/postgres/
//
// Every test migrates its own schema (pharox_test_<random>) and drops it
// afterwards, so runs do not collide. TestConformance runs
// storagetest.Run; TestMultiProcess re-executes the test binary as 4
// worker processes of 16 goroutines each and audits every lease interval.
// BenchmarkAcquireRelease compares the store with itself unbatched and
// with a plain FOR UPDATE baseline (see BENCHMARKS.md).
package postgres
