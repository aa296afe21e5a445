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
//
// # Per-target health
//
// The store implements [pharox.TargetStore]: table proxy_targets holds one
// row per (proxy, target), deleted with its proxy. An acquisition with a
// target adds NOT EXISTS (a primary-key lookup of proxy_targets) to the
// strategy's walk of its partial index, in the same transaction, so it
// skips only the proxies cooling down for the target that it meets (they
// count against the filter scan budget). ApplyTargetOutcome runs
// [pharox.TargetState.Apply] in one write transaction and evicts the
// proxy's longest-idle rows beyond the policy's cap; PurgeTargetStates
// deletes idle rows through an index on idle_since, in batches.
//
// # Usage and quotas
//
// The store implements [pharox.UsageStore] (migration 0006). A lease
// records its target, and the usage its holder reported at release
// (usage_* columns, NULL when none was). A release with a report counts
// it in the same transaction: it upserts the bucket of usage_hourly keyed
// by (hour, consumer, proxy, target) and adds its bytes to the counters of
// the quotas of the lease's consumer, pool and proxy, following
// [pharox.Quota.AddBytes]. A release without one runs the statements it
// always ran. A late release (past ExpiresAt, not yet reclaimed) is a
// release here, so it counts; an expiry counts nothing.
//
// Quotas live in table quotas, one row per subject; a pool's or proxy's
// goes with it (triggers), a consumer's stays. The acquisition's first
// statement, which already looked up the pool and the consumer, also
// probes the quotas' primary key for the consumer and the pool and an
// index of proxies whose allowance is used up: with no quota, that is all
// quotas cost it. With one, inside the acquisition's write transaction,
// the store applies [pharox.Quota.Admit] (consumer first), counting a
// capped subject's unexpired active leases, reading at most cap entries of
// the partial index of active leases by pool, or of the one that holds
// only the active leases of capped consumers (leases.consumer_capped marks
// them: at acquisition, and SetQuota marks a consumer's active ones when
// its quota gains a cap, so the leases of other consumers never write that
// index); and, once a proxy is leased,
// [pharox.Quota.TakeToken]. The write
// lock serializes this with every other acquisition and release in every
// process, so no interleaving exceeds a cap or a bucket. A retried
// acquisition (a LeaseID already held) is not checked and takes no token.
//
// A proxy whose traffic allowance is used up carries allowance_until, the
// end of the period over its limit ([pharox.Quota.ExhaustedUntil]), set by
// releases and by SetQuota and cleared by DeleteQuota. When the pool has
// such a proxy, its walks skip the proxies whose allowance_until is still
// ahead, a check of the row the walk reads anyway, counted against the
// filter scan budget; when the period ends the value is simply past.
//
// QueryUsage sums the buckets of a range of hours through the primary key
// (it starts with the hour) or, filtered by pool or consumer, through an
// index by that subject and hour, so it reads the buckets it selects;
// SetQuota sums a new quota's counters the same way. PurgeUsage deletes by
// hour, in batches.
package sqlite
