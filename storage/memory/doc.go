// Package memory is an in-process [pharox.Storage]: fast, thread-safe, and
// gone when the process exits. It is the default store for library users
// and tests, and the reference the other drivers are measured against.
//
// # Concurrency
//
// One mutex guards the whole store. Work that needs no shared state (lease
// ids from crypto/rand, deep copies of results) happens outside it, so the
// critical section of an acquisition is a few index updates.
//
// # Indexes
//
// Per pool, and per (pool, country), proxies that can take a lease now
// (leasable status and a free slot) are kept once per strategy: b-trees
// ordered by (status rank, checked_at desc, id) for FirstAvailable, (status
// rank, current_leases, id) for LeastUsed and id for RoundRobin, and a slice
// for Random. The pool-wide FirstAvailable tree (the default strategy) is
// kept from the start; every other structure is built the first time a
// request needs it, so pools pay only for the strategies and countries they
// are asked for. Building one holds the store's lock for a moment (about
// 0.1 s for 100,000 proxies on a busy 2-core machine).
//
// Every structure holds exactly the proxies that can take a lease: a proxy
// that fills up leaves them in the same critical section, and one that
// frees a slot joins them again. A search therefore never walks a busy
// proxy, and its cost is O(log n) whatever the number of busy proxies:
// removing a full proxy at once costs a few tree updates per lease, where
// leaving it for searches to drop would make the first search after a pool
// fills up walk every busy proxy under the lock.
//
// # Filters
//
// Indexed shapes: no filter, and a top-level Country (alone or with other
// fields), whose proxies have sets of their own, so only that country's
// candidates are visited. Every other shape (source, city, ISP, ASN,
// protocol, tags, coordinates and radius, AllOf, AnyOf, NoneOf,
// predicates) walks the candidates in the strategy's order and tests each
// with [pharox.Filters.Match] until one matches: busy proxies are no
// candidates, but each candidate the filter rejects costs a test. So that a filter rejecting nearly every
// candidate of a large pool cannot hold the store's lock for long, one
// search tests at most [DefaultFilterScanBudget] candidates
// ([WithFilterScanBudget]) and then fails with [pharox.ErrNoProxyAvailable],
// saying the filter is too selective. Random draws candidates at random until one matches, which is
// uniform among the matching ones, and falls back to one exact pass over
// the candidates when they are no more than the budget.
//
// A [pharox.Filters.Predicate] runs under the store's lock, on a copy of
// each candidate it is asked about: keep it fast, and never call the store
// from it, which would deadlock. A predicate that panics fails the request
// with [pharox.ErrInvalidArgument] and leaves the store usable.
//
// # Expiry
//
// Active leases sit in a min-heap keyed by ExpiresAt. Every operation first
// pops the leases whose ExpiresAt has passed and ends them as expired, so an
// expired lease never counts against its proxy once any later operation
// runs. RenewLease and ReleaseLease therefore see a lease past its ExpiresAt
// as already expired ([pharox.ErrLeaseNotActive]).
//
// # Lease ids
//
// Lease ids are random version 4 UUIDs whose last 32 bits, masked with a
// per-store value, name the slot of the lease record: finding a lease is an
// index into a slice, not a lookup in a hash table as large as the lease
// history. The other 90 bits are random (crypto/rand), so ids stay
// unguessable. An id the caller chose ([pharox.AcquireRequest].LeaseID)
// names no slot; such leases are found through a map, for as long as they
// are retained, and an acquisition with the id of one of them is a retry:
// it returns that lease and takes no slot.
//
// # Retention of ended leases
//
// Released and expired leases are kept for GetLease and ListLeases, up to
// the last [DefaultEndedLeaseRetention] of them (see
// [WithEndedLeaseRetention]); older ones are forgotten first. Leases of a
// deleted proxy or pool are forgotten at once. PurgeEndedLeases drops them
// earlier.
//
// # Per-target health
//
// The store implements [pharox.TargetStore]. Each proxy keeps its
// (target, state) entries, at most the policy's MaxTargetsPerProxy, and the
// store keeps, per target, a map from proxy (table index) to the end of its
// cool-down. An acquisition with a target looks the target's map up once
// and checks each candidate of the usual index walk against it, under the
// same lock: a target nobody cools for costs nothing, and otherwise the
// walk skips only the proxies cooling for it (they count against the
// filter scan budget). Entries go with their proxy, and
// PurgeTargetStates, which walks the proxies with entries, drops idle ones.
//
// # Usage and quotas
//
// The store implements [pharox.UsageStore] under the same lock. A release
// with a usage report adds it to an hourly bucket (a map per hour keyed by
// consumer, proxy, pool and target) and to the byte counters of the
// quotas involved. Consumers and pools point to their quota and count
// their active leases; as every operation first reclaims expired leases,
// those counts are the unexpired leases [pharox.Quota.Admit] needs, so an
// acquisition checks a cap in constant time, and one without a quota
// checks two nil pointers. Proxies over their traffic allowance are kept
// in a map from table index to the end of the period, consulted like a
// target's cool-downs: only while some proxy is over, one lookup per
// candidate examined. QueryUsage and PurgeUsage walk the buckets of the
// hours they select.
//
// Pool statistics come from counters kept with every change, never from a
// scan. Sticky-session bindings that died are dropped by
// CleanupExpiredLeases and, so that unique keys cannot grow a pool without
// bound, whenever the number of bindings doubles.
//
// # API keys, audit log and lease verdicts
//
// The store implements [pharox.KeyStore] and [pharox.LeaseVerdictStore]
// under the same lock. API keys (their SHA-256 digests, never the secrets)
// are held in maps by id, name and digest; a digest lookup is compared
// again in constant time. The audit log is a slice ordered by time, so
// listing walks from the newest entry and stops at the limit; it grows
// until PurgeAudit trims it. A lease's verdict is a flag on its record,
// gone when the record is forgotten (see retention above).
package memory
