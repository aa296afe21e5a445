// Package mysql is the pharox.Storage on MySQL 8 or MariaDB 10.6 and later
// (InnoDB), for teams that share a proxy inventory through the database
// they already run. Any number of processes and hosts lease from the same
// pools through it; InnoDB's row locks and a CHECK constraint alone
// guarantee that no proxy is ever leased beyond its max_concurrency.
//
// # Usage
//
//	// Opens a pool, migrates (safe from many processes at once), and
//	// returns a store that closes the pool on Close.
//	store, err := mysql.Open(ctx, "app:secret@tcp(db:3306)/app")
//	if err != nil { ... }
//	defer store.Close()
//	m := pharox.NewManager(store)
//
// storage/open and `pharox serve` take mysql://user:password@host:3306/db
// URLs (see [DSNFromURL]), with ?prefix= for the table prefix. [New] builds
// a store over a caller's *sql.DB instead (opened with parseTime=true and
// loc=UTC, and migrated with [Migrate]); it then sets READ COMMITTED per
// transaction and sends one statement per round trip, where [Open] sets
// READ COMMITTED per session and batches statements (see Acquisition).
//
// Tables are named with a prefix, "pharox_" unless [WithTablePrefix] says
// otherwise, in the DSN's database, so several stores can share one
// database. Migrations are embedded SQL files recorded in the prefix's
// schema_migrations table. [Migrate] holds a GET_LOCK named lock, derived
// from the database and prefix, while it applies the missing ones, so
// processes that start together apply each exactly once. MySQL commits
// DDL statement by statement; every migration statement is re-runnable
// (IF NOT EXISTS), so one interrupted by a crash is applied again whole.
//
// # Acquisition
//
// AcquireLease is one READ COMMITTED transaction: it locks the first
// candidate in strategy order with SELECT ... FOR UPDATE SKIP LOCKED
// through the strategy's index, increments current_leases under that
// lock, inserts the lease and, for RoundRobin, moves the pool's cursor
// unless a concurrent round-robin acquisition holds it (SKIP LOCKED again).
// Concurrent acquisitions never wait for each other's proxy rows: each
// takes the next free candidate. Over-leasing is impossible whatever the
// selection did: the increment happens under the row lock of a row the
// locking read saw with a free slot, and the proxies_slots CHECK
// constraint fails the transaction should the count ever pass
// max_concurrency (MySQL enforces CHECK constraints from 8.0.16, MariaDB
// from 10.2).
//
// On a pool [Open] made, a transaction costs two round trips: START
// TRANSACTION travels with the locking read, and the writes travel with
// the COMMIT (multiStatements with client-side parameter interpolation;
// every value is still escaped by the driver, never written into SQL by
// the store). The pool's id comes from a per-store cache (a stale entry
// finds no candidate and is looked up again) and the consumer's existence
// too (consumers are never deleted). The lease's AcquiredAt is the
// locking read's clock, but never earlier than the proxy's freed_at, which
// every release and reclaim moves to the end of the lease it ended: so a
// lease never starts before the lease whose slot it takes has ended,
// although the clock was read before the row lock was granted. A store
// from [New] runs the same statements one round trip each.
//
// When no proxy has a free slot, the acquisition reclaims the expired
// leases of a few full proxies of the pool and looks again. When every
// free candidate is locked by others at that instant, a plain read tells
// so and AcquireLease tries again after a jittered backoff of 100µs to
// 5ms, up to 12 tries ([WithAcquireAttempts]).
//
// Every strategy is an index walk that stops at the first row: each index
// leads with (pool_id, has_free_slot), a stored generated column, so full
// and unleasable proxies drop out of the range and the walk never passes
// them. FirstAvailable walks (status_rank, checked_at DESC, id), LeastUsed
// (status_rank, current_leases, id), RoundRobin (id, after the cursor,
// wrapping). Random walks rnd, a per-proxy random key redrawn on every
// lease of that proxy, from a uniform pivot: every candidate is equally
// likely by symmetry, and no count or sort of the pool is needed.
//
// Filters become SQL with bind parameters only (tags through JSON_CONTAINS
// on the tags column; radius filters through a bounding box and the
// haversine formula of pharox.HaversineKM); every expression is NULL-free
// so NoneOf negates exactly like pharox.Filters.Match. Predicate filters
// cannot run in the database and give pharox.ErrUnsupported.
//
// # Per-target health
//
// The store implements pharox.TargetStore: per (proxy, target) state in
// the proxy_targets table (migration 0003, primary key (proxy_id, target),
// ON DELETE CASCADE with the proxy). An acquisition with
// AcquireRequest.Target adds one condition to its locking read: a scalar
// subquery that looks the walked proxy's entry up by primary key and
// passes over the proxy while its cooling_until is in the future. It runs
// for each proxy the walk reaches (a DEPENDENT SUBQUERY in EXPLAIN, an
// eq_ref on PRIMARY), so the work grows with the proxies cooling down for
// the target that the walk passes, never with the pool or with the
// target's entries (NOT EXISTS is not used: MariaDB would materialize
// every entry of the target first). The subquery locks nothing. A sticky
// binding whose proxy cools down for the target is bound anew; the bound
// proxy's locking read, which waits for the row, carries the same
// subquery, so the cool-down is judged at that statement's clock, the one
// the lease starts at, on the entry as committed once the lock is
// granted.
//
// ApplyTargetOutcome is one transaction of two round trips: it reads the
// entry FOR UPDATE (with the time, the outcome's At or UTC_TIMESTAMP(6),
// and the count of the proxy's other recent bans), applies the reference
// rule pharox.TargetState.Apply in Go and writes the entry back with the
// COMMIT; a proxy's first outcome for a target inserts the entry instead
// (the foreign key makes a missing proxy ErrProxyNotFound), then evicts the
// proxy's longest-idle entries beyond the policy's cap. Outcomes for one
// entry apply one at a time; two outcomes for different targets of one
// proxy at the same instant may each miss the other in the cap and in the
// escalation count. A ban takes effect for every acquisition that starts
// after ApplyTargetOutcome returned; one already running may still take
// the proxy. PurgeTargetStates deletes entries idle before a time
// through an index on idle_at (a stored generated column, the later of
// updated_at and cooling_until); PoolTargetStats reads the pool's proxies
// and their entries, never a lease.
//
// # Usage and quotas
//
// The store implements pharox.UsageStore (migration 0004). Leases record
// their target and, once released with a report, their usage (NULL
// columns when none was reported). A release with usage adds it, in the
// release's transaction, to the hourly bucket of (hour, consumer, proxy,
// target) with INSERT ... ON DUPLICATE KEY UPDATE, and to the byte
// counters of the quotas of the lease's consumer, pool and proxy
// (pharox.Quota.AddBytes, the quota rows locked FOR UPDATE in primary key
// order): a column of the lease's locking read tells whether any of them
// has a quota, so a release under no quota costs no extra round trip, and
// one under quotas one. A release without usage is what it was.
//
// An acquisition applies the consumer's and pool's quotas before it locks
// any proxy: it locks their rows in the quotas table FOR UPDATE (consumer,
// then pool: the primary key's order), then, in a statement of its own so
// that READ COMMITTED shows it every lease committed by the acquisitions
// that held the lock before, counts the active unexpired leases of each
// that has a max_concurrent_leases, through an index on (consumer_id,
// status, expires_at) or (pool_id, status, expires_at): a range of the
// subject's active leases, no longer than the cap unless the cap was
// lowered below them. pharox.Quota.Admit decides in Go; a refusal rolls back,
// having taken nothing. Once a proxy is locked, each quota with a
// requests_per_minute takes a token (pharox.Quota.TakeToken), written with
// the COMMIT. On a pool [Open] made, the lock and the count travel in the
// round trip of the first candidate read, ahead of it (a refusal rolls the
// candidate's lock back with the rest), so an acquisition under quotas
// costs the round trips of one without; a sticky acquisition, which locks
// its session binding before any proxy, sends them on their own first. The
// lock serializes the acquisitions of one capped consumer or pool from
// every process, which is what a cap means: they take turns for as long
// as one holds the row, a round trip and the writes of its COMMIT (InnoDB
// releases row locks before it flushes the redo log). An idempotent retry
// (AcquireRequest.LeaseID already held) finds its lease before quotas are
// looked at.
//
// An acquisition for a consumer and pool without quotas pays no round
// trip for them: its first statement (the pool lookup, the session
// binding's read or the candidate's locking read) carries a column with
// two primary-key probes of the quotas table. When that column finds a
// quota the try rolls back and runs again at once, quotas first, and the
// store remembers the pair so that its next acquisitions lock the quotas
// from the start (forgetting it when they find none). A quota set while an
// acquisition is running binds the acquisitions that start after SetQuota
// returned; one already running may still complete, like a lease already
// held.
//
// A proxy's traffic allowance is proxies.allowance_until: the end of the
// day or month whose bytes its quota has used up (pharox.Quota.ExhaustedUntil),
// NULL otherwise, written under the quota's row lock by a release with
// usage, SetQuota and DeleteQuota. The candidate walk and the sticky
// binding pass over a proxy while allowance_until is in the future: a
// condition on the row the walk reads anyway, a cost per proxy passed
// over. SetQuota starts a new quota's counters from the subject's buckets
// of the current day and month; a release committed while a new quota is
// being set may be missing from its counters (byte limits are soft).
// QueryUsage is one GROUP BY over the buckets' time range (primary key) or
// a pool's or consumer's (id, hour_start) index; PurgeUsage deletes by
// hour in batches. DeletePool and DeleteProxy delete their quotas; buckets
// stay as history.
//
// # Sticky sessions
//
// A sticky acquisition first locks its binding row with INSERT ... ON
// DUPLICATE KEY UPDATE, which creates the row if needed and takes its
// exclusive lock either way. Concurrent first uses of one key therefore
// queue on that row, and each one after the first finds the binding the
// first committed: all end on one proxy. The bound proxy is then locked
// with a waiting FOR UPDATE (it is the one wanted), and a sticky hit does
// not move the round-robin cursor.
//
// Acquisitions lock in the order quotas, session binding, proxy, lease,
// cursor; releases, renewals and cleanups lock a lease before its quotas
// (a release with usage) and its proxy, and acquisitions that hold a
// quota or a proxy take leases with SKIP LOCKED only, so the two orders
// cannot deadlock. Any deadlock InnoDB still
// reports (1213) or lock wait timeout rolls the whole transaction back and
// it is run again, up to 8 times.
//
// # Retries and idempotency
//
// The lease id of an acquisition is fixed before its first try
// (pharox.AcquireRequest.LeaseID, or a fresh one). When the connection
// breaks and the answer to a try is lost, AcquireLease tries once more
// with that id: if the first try committed, the retry finds the lease and
// returns it without taking a second slot (the test suite cuts a real
// connection right after a COMMIT to check this). A lease id the store already
// holds returns that lease as it is now when the pool and consumer match,
// and ErrAlreadyExists otherwise; two processes racing with one id end on
// one lease (the primary key decides). ReleaseLease likewise retries once
// after a lost answer and returns the lease its first try released.
//
// # Outages
//
// An error of a connection lost under a call (mysql.ErrInvalidConn,
// driver.ErrBadConn, server errors 1053 and 1927) also matches
// io.ErrUnexpectedEOF, so that callers that classify outages with the
// standard library's errors, such as the server's 503 answers, recognise
// it without importing the driver. A server that is down fails to dial
// (a net.Error).
//
// # Times and retention
//
// All times come from the server's UTC_TIMESTAMP(6), stored as DATETIME(6)
// in UTC. Ended leases are kept until PurgeEndedLeases deletes them.
//
// # API keys, audit log and lease verdicts
//
// Migration 0002 adds the tables of [pharox.KeyStore] and the column of
// [pharox.LeaseVerdictStore]. api_keys holds one row per key: id, name
// (unique), role, digest (the SHA-256 of the secret, BINARY(32), unique:
// the secret itself is never stored), hint (its first characters), the
// bound consumers and pools as JSON arrays, and created_at, expires_at,
// revoked_at and last_used_at. A lookup by digest goes through the unique
// key and compares the digest again in constant time; TouchAPIKeys is one
// UPDATE (CASE per id) for up to 1,000 keys. audit_log holds one row per
// admin action (id unique, so a retried append is a no-op; an
// AUTO_INCREMENT seq orders equal times) keyed by (at, seq); PurgeAudit
// deletes by time in batches. leases.verdict_at records when a lease's
// one ban or failure verdict was claimed: the claim is one UPDATE ...
// WHERE verdict_at IS NULL, so concurrent claims from any process queue on
// the row lock and exactly one changes the row. Migrate takes "duplicate
// column" from 0002's ALTER TABLE as already applied, so an interrupted
// run re-applies it whole.
package mysql
