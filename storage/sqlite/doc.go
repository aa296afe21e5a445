// Package sqlite is the embedded, persistent pharox.Storage: one database
// file keeps pools, proxies, health state, leases and sticky sessions across
// restarts, with no server to run. It is the default store of `pharox serve`.
//
// # When to choose it
//
// Choose SQLite for a single machine: one service, or a few processes on one
// host sharing the file. It needs no setup and survives crashes and
// restarts. Use storage/memory when nothing needs to persist, and
// storage/postgres or storage/redis when processes on several hosts share
// the pools (SQLite's locking does not work over network file systems).
//
// # Files
//
// Open takes a file path; the directory must exist. Next to the database
// SQLite keeps two files while it is open, path-wal (the write-ahead log)
// and path-shm (its index); they belong to the database: back up or move
// the three together, or only while no process has the database open (the
// last one to close removes them after checkpointing the log).
//
// # Schema
//
// The schema is a series of numbered SQL files embedded in the binary
// (migrations/NNNN_name.sql). Open applies the ones missing from the
// schema_migrations table, all in one IMMEDIATE transaction, so processes
// that open a fresh file together cannot both apply them. Plain SQL files
// rather than a migration library: SQLite runs DDL inside transactions, so a
// failed migration leaves nothing behind, and the schema stays readable in
// one place. A file written by a newer pharox is refused rather than
// misread.
//
// # Concurrency and durability
//
// The database runs in WAL mode with foreign keys on and a busy timeout
// (WithBusyTimeout, default 10s). Every operation that writes runs in one
// BEGIN IMMEDIATE transaction on the store's single write connection: it
// takes the database's write lock before reading anything, so choosing a
// proxy and taking its slot cannot interleave with any other writer, in this
// process or another. Goroutines of one process queue for that connection;
// other processes wait on SQLite's lock up to the busy timeout. Plain reads
// use a separate pool of read-only connections and, under WAL, never wait
// for the writer.
//
// PRAGMA synchronous is NORMAL by default: a committed transaction survives
// a crash of the process (SIGKILL included) but the last transactions may be
// lost on power failure or an OS crash; WithSynchronous("FULL") trades
// throughput for that guarantee too, and storage/open (so `pharox serve`)
// uses FULL: a lost acquisition would hand its slot out again while its
// client still uses the proxy. Either way the file stays consistent: a
// lease and its proxy's counter change in the same transaction.
//
// # Semantics
//
// Acquisition finds its candidate in O(log n), whatever the pool's size and
// however many of its proxies are busy. FirstAvailable, LeastUsed and
// RoundRobin walk partial indexes that hold only proxies with a free slot,
// one per strategy order; Random draws a number below the count of such
// proxies, which triggers keep numbered densely per pool (random_slots), and
// reads that one. Filters narrow the walk in SQL where columns allow, and
// pharox.Filters.Match then decides each row exactly, so every filter has
// the reference semantics, including radius (a bounding box in SQL, the
// exact haversine test in Go) and Predicate filters, which this store
// supports.
//
// No filter shape has an index of its own: the walk visits proxies with a
// free slot in strategy order and skips those the filter rejects (a
// filtered Random reads 64 random numbers at a time and picks among the
// accepted ones), so a filter costs the candidates it rejects. Since a
// filter that rejects nearly every proxy of a large pool would walk all of
// them under the write lock, one acquisition examines at most
// DefaultFilterScanBudget of them (WithFilterScanBudget) and then fails with
// pharox.ErrNoProxyAvailable, saying the filter is too selective. Random
// with a filter that rejects its first draws examines every candidate
// once, for an exact uniform choice, when there are no more than the
// budget.
//
// A proxy's current_leases is kept by triggers on the leases table, in the
// statement that starts or ends a lease, and CHECK constraints refuse a
// count below zero or above max_concurrency: the counter and the active
// leases agree even after a crash or a hand-written UPDATE.
//
// Leases past their expiry are reclaimed inside the next acquisition from
// their pool (an index of active leases by pool and expiry, so other pools'
// expired leases are not walked), by any write touching their proxy,
// before reads that report counters, and in bulk by CleanupExpiredLeases
// (in batches, so the write lock is never held long); an expired lease
// records ReleasedAt = ExpiresAt. Ended leases are kept until
// PurgeEndedLeases deletes them. Lease ids are version 7 UUIDs made from
// AcquiredAt, unless the caller chose one (AcquireRequest.LeaseID): an
// acquisition with the id of a lease the file holds is a retry and returns
// that lease, taking no slot. Timestamps are stored as integer
// microseconds, UTC, stamped with the clock of the process that performs
// the operation.
//
// # API keys, audit log and lease verdicts
//
// Migration 0004 adds the tables of [pharox.KeyStore] and the column of
// [pharox.LeaseVerdictStore]. api_keys holds one row per key: id, name
// (unique), role, digest (the SHA-256 of the secret, 32 bytes, unique:
// the secret itself is never stored), hint (its first characters), the
// bound consumers and pools as JSON arrays, and created_at, expires_at,
// revoked_at and last_used_at. A lookup by digest goes through the unique
// index and compares the digest again in constant time. audit_log holds
// one row per admin action (id unique, so a retried append is a no-op;
// rowid seq orders equal times) indexed by (at, seq); PurgeAudit deletes
// by time in batches. leases.verdict_at records when a lease's one ban or
// failure verdict was claimed, so two processes on the file count it once.
package sqlite
