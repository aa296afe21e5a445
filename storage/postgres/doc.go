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
// 100µs to 5ms, up to 12 tries ([WithAcquireAttempts]). So
// ErrNoProxyAvailable means that the pool had no free matching proxy, or
// that the free ones stayed row-locked through every try.
//
// Filters (source, country, city, ISP, ASN, protocol, tags, point and
// radius, nested AllOf/AnyOf/NoneOf) become SQL with bind parameters only;
// every generated expression is NULL-free so that NoneOf negates exactly
// like pharox.Filters.Match. Predicate filters cannot run in the database
// and give ErrUnsupported. Radius filters need no PostGIS: a bounding box
// around the circle (split at the antimeridian, dropped when the circle
// reaches a pole) narrows the rows through the (pool_id, latitude,
// longitude) index, and the haversine distance on a sphere of
// pharox.EarthRadiusKM decides. Strategies are ORDER BY clauses mirroring
// pharox.CompareFirstAvailable and pharox.CompareLeastUsed; FirstAvailable
// walks the partial index proxies_leasable in order and stops at the first
// free, unlocked row. LeastUsed and Random sort the pool's free candidates
// (current_leases is deliberately in no index, so that the counter updates
// of the hot path stay HOT). RoundRobin keeps its position per pool in
// pool_cursors; the statement moves it only if no concurrent round-robin
// acquisition holds that row (SKIP LOCKED again), so round-robin
// acquisitions never queue behind each other's commits: in sequence they
// rotate exactly, concurrently they take successive free proxies after the
// position they all read.
//
// Timestamps come from the database clock: AcquiredAt is clock_timestamp()
// read after the proxy row was locked and updated, ReleasedAt likewise
// inside the statement that frees the slot, so lease intervals of one proxy
// never overlap beyond its limit on the database's time line.
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
// batched the same way, one UPDATE over the leases' ids. A lone caller
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
// CleanupExpiredLeases ends expired leases set-based, in batches of 1,000
// per transaction. It locks leases FOR UPDATE SKIP LOCKED (leaving the ones
// a release is ending to that release) and acquisitions skip the proxy
// rows it holds, so it never blocks them; concurrent cleanups serialise on
// an advisory lock. Lock order is lease before proxy everywhere a
// transaction waits, statements that free slots of several proxies
// (batched releases, cleanup) lock those rows in id order, and
// acquisitions wait for no proxy, lease or cursor row at all (sticky
// acquisitions of one session key wait only for each other, see Sticky
// sessions), which keeps the store free of deadlocks.
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
