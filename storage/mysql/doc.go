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
// Acquisitions lock in the order session binding, proxy, lease, cursor;
// releases, renewals and cleanups lock a lease before its proxy, and
// acquisitions that hold a proxy take its leases with SKIP LOCKED only, so
// the two orders cannot deadlock. Any deadlock InnoDB still
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
