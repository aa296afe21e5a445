// Package redis is a [pharox.Storage] on Redis (go-redis v9), for lease
// volumes beyond what a SQL store sustains. Any number of processes and
// hosts may share one store; Redis alone guarantees that no proxy is leased
// beyond its MaxConcurrency.
//
// # Atomicity
//
// Every state change that must be atomic (acquire, release, renew, expiry,
// cleanup, health results, status changes, adding and deleting proxies and
// pools, setting and deleting quotas, purging usage) is one Lua script, run with EVALSHA and falling back to EVAL when
// the server does not know it yet. A script runs to completion or not at
// all as far as other clients can observe, so a client that crashes can
// never leave a half-made lease. Scripts stamp every time with the server's
// TIME, so all processes share one clock, and since scripts run one at a
// time, a stamp read in a script orders it correctly against every other
// (a slot freed at t and taken again at t is not an overlap); times are kept
// in microseconds, UTC.
//
// A script that fails half-way would keep its earlier writes (Redis has no
// rollback), so scripts check what can fail before they write; the only
// writes that precede an error reply are complete units of their own (an
// expired lease reclaimed before ErrInUse or ErrLeaseNotActive). A batch
// of acquisitions or releases (see Batching) is one script too: its items'
// errors are values in its reply, an item that fails writes nothing, and
// its only error replies come before its first write.
//
// # Client retries
//
// go-redis sends a command again after a read timeout or a dropped
// connection (MaxRetries, three by default), and a script whose reply was
// late has usually run by then, so Redis may run it twice. Acquisitions
// and releases are written to be run twice safely. The client picks each
// lease's id before the script runs (or takes [pharox.AcquireRequest]'s
// LeaseID), and the acquisition scripts first look that id up: a lease
// that already exists was made by this call's earlier run (or, with a
// LeaseID, by an earlier call with that id), so they take no slot and
// return it as it is now (see LeaseID below). A release carries a
// random token that the script keeps in the released lease's record
// (about 14 bytes); finding the lease released with its own token, a
// release returns it as released, while any other release of that lease
// still gets [pharox.ErrLeaseNotActive]. Renewing twice only moves the
// expiry by the time between the runs; cleanup, reclaims and
// EnsureConsumer are idempotent by nature.
//
// So the store keeps go-redis's retries, and benefits from them: a
// retried acquisition returns the lease its first run took instead of an
// error, and a retried release frees the slot and says so, where without
// retries both would surface as errors (and the lease stay counted until
// it expires). CreatePool, AddProxies, DeletePool and DeleteProxy carry a
// token too, under which the script keeps its reply for a minute
// (once:<token>): sent again, the call returns that reply instead of
// ErrAlreadyExists or a not-found error for the change it made, while a
// call of its own still gets those. A health result sent twice is
// applied twice (its failure streak counts two); status changes are the
// same either way. CreateAPIKey keeps its reply under a token like the
// administrative writes; RotateAPIKey sent again finds the new digest its
// own, AppendAudit finds its id, and ClaimLeaseVerdict and
// ApplyTargetOutcome find their token, so each answers as its first run
// did (an outcome is applied once). A release with usage sent twice
// counts it once (its token); DeleteQuota and PurgeUsage keep their reply
// under a token like the administrative writes; SetQuota sent twice sets
// the same limits twice, the second keeping the counters the first
// started. Clients built with MaxRetries -1 (no retries) work as well;
// pharox's storage/open keeps the default.
//
// # LeaseID
//
// An acquisition with [pharox.AcquireRequest.LeaseID] set gives the new
// lease that id; if a lease with that id exists (active or ended, until
// the retention forgets it), the acquisition takes nothing and returns
// it as it is now, with its proxy's current state, or fails with
// [pharox.ErrAlreadyExists] when that lease belongs to another consumer or
// pool. Batched acquisitions do the same, also for two calls with one id
// in the same batch. The check is one hash read per acquisition (one per
// batch), the same lookup that makes the scripts safe to retry.
//
// # Key layout
//
// Every key starts with the prefix (see [WithPrefix], default
// [DefaultPrefix]); <pid> is a pool id, <id> a proxy id, <lid> a lease id.
//
//	pools                      hash   pool name -> pool id
//	pool:<pid>                 hash   name, desc, created
//	consumers                  hash   consumer name -> "<id>|<created>"
//	cbyid                      hash   consumer id -> "<created>|<name>" (GetConsumer)
//	cids                       set    consumer ids
//	proxy:<id>                 hash   one field per proxy attribute (the password too), plus
//	                                  "static": the attributes fixed at creation, packed as JSON
//	proxy:<id>:ended           set    the proxy's ended leases
//	leases                     hash   lease id -> "status|rel|exp|proxy|pool|maxc|q|acq|who" (rel
//	                                  empty while active, "<time>:<token>" once released by a
//	                                  release call with that token, then ":<requests>,<sent>,
//	                                  <received>" when it reported usage; q: the consumer id when
//	                                  the lease is in c:<cid>:act, else empty; who: the consumer
//	                                  id, target, consumer name, pool name and session key,
//	                                  packed by the client)
//	ended                      zset   ended leases by end time (PurgeEndedLeases, retention)
//	verdicts                   hash   lease id -> token of the call that claimed its verdict
//	                                  (ClaimLeaseVerdict); deleted with the lease
//	p:<pid>:all                zset   every proxy of the pool, score 0 (id order)
//	p:<pid>:free               zset   leasable proxies with a free slot, score 0 (round_robin, random)
//	p:<pid>:fa:0, p:<pid>:fa:1 zset   the free active / slow proxies by -checked_at, never-checked +inf (first_available)
//	p:<pid>:lu                 zset   the free proxies by rank*2^32 + current leases (least_used)
//	p:<pid>:exp                zset   the pool's active leases by ExpiresAt (reclaim, TotalLeases)
//	p:<pid>:cnt                hash   proxies per status, "leased" (proxies holding a lease)
//	p:<pid>:uniq               hash   "protocol|host|port|user" -> proxy id
//	p:<pid>:rr                 string round-robin cursor: the proxy handed out last
//	p:<pid>:sess, :sessexp     hash, zset  session key -> "<id>|<expiry>", and the expiries
//	p:<pid>:i:<field>:<value>  set    proxies by src, cc (country), city, isp, asn, proto, tag
//	p:<pid>:geo                geo    proxies with coordinates inside Redis' GEO range
//	p:<pid>:polar              set    proxies with coordinates beyond ±85.05° latitude
//	p:<pid>:ff                 hash   proxy id -> the fields filters read, packed (see Acquisition cost)
//	proxy:<id>:t               hash   target -> the proxy's entry for it, "streak|bans|cool|banned|
//	                                  code|succ|fail|upd|tok|reason" (see Targets)
//	proxy:<id>:tb, :ti         zset   the proxy's targets by cool-down start (escalation count), and
//	                                  by idle time (cap eviction)
//	p:<pid>:tc:<target>        zset   the pool's proxies with an entry for target and a cool-down,
//	                                  by its end (acquisition with a target, PoolTargetStats)
//	p:<pid>:tb:<target>        zset   the same proxies by cool-down start (PoolTargetStats)
//	p:<pid>:tn                 hash   target -> entries for it in the pool (PoolTargetStats)
//	tidle                      zset   "<proxy id>|<target>" by idle time (PurgeTargetStates)
//	key:<kid>                  hash   an API key: name, role, dg (SHA-256 digest, hex), hint, cons and
//	                                  pools (JSON), created, exp, revoked, used (us)
//	keynames, keydigests       hash   key name -> id, digest -> id (unique, set in one script)
//	keys                       zset   key names, score 0 (ListAPIKeys in name order)
//	audit:e                    hash   audit entry id -> "<at>|<JSON>"
//	audit                      zset   "<sequence>:<id>" by at (ListAudit, PurgeAudit)
//	audit:seq                  string the audit log's append counter (ties list latest first)
//	once:<token>               string an administrative write's reply, for a minute (see Client retries)
//	quotas                     hash   "<subject>|<id>" -> the quota, "mcl rpm bpd bpm day bt month bm
//	                                  tok tokat upd" (see Usage and quotas); "x|<pid>" -> 1 while
//	                                  p:<pid>:xh may have members
//	c:<cid>:act                zset   the consumer's counted active leases by ExpiresAt (a consumer
//	                                  with a max_concurrent_leases quota)
//	p:<pid>:xh                 zset   the pool's proxies whose traffic allowance is exhausted, by
//	                                  when it resets
//	usage:<hour>               hash   the usage bucket of the hour starting at <hour> (unix seconds):
//	                                  "<consumer>|<proxy>|<pool>|<target>" -> "leases requests
//	                                  bytes_sent bytes_received"; expires (WithUsageRetention)
//	usage:hours                zset   the hours that have a bucket, scored by their start
//
// The layout is not stable before pharox v1 and there is no migration:
// leases moved from a hash each (lease:<lid>) into the leases hash, for
// one. To upgrade a deployment across such a change, let its active
// leases end and purge its ended ones (PurgeEndedLeases) with the old
// version first, or start under a new prefix.
//
// Sorted sets with equal scores order members by their bytes, which for
// canonical UUID strings is the order of pharox's id comparison, so ties in
// every strategy break by id without extra data.
//
// # Acquisition cost
//
// An acquisition reclaims the pool's expired leases (at most 256 per call;
// usually a single empty range read), then picks a proxy. Without filters
// that is one range read on the strategy's sorted set, for every
// strategy: O(log n), whatever the pool's size and however many of its
// proxies are busy (busy proxies are in no free structure).
//
// With filters, the filter becomes the set of index sets the proxy must
// belong to (equality fields and tags, including those under AllOf) plus,
// when the filter has geo conditions or AnyOf/NoneOf, a tree evaluated per
// proxy in Lua exactly as [pharox.Filters.Match] does. Its candidates are
// narrowed by an index when:
//
//   - it has an indexed condition (source, country, city, ISP, ASN,
//     protocol or tag, at its top or under AllOf): the smallest such set;
//   - it has none, but an AnyOf (at its top or under AllOf) whose every
//     alternative has one: the union of each alternative's smallest set;
//   - it has neither, but a radius or point condition: a GEOSEARCH (with a
//     margin for Redis' slightly larger Earth radius; the exact distance
//     is then checked with the same haversine formula as the root
//     package, in C's libm rather than Go's math, which can differ in the
//     last bit for a proxy exactly at the radius), plus the proxies
//     beyond GEO's ±85.05° latitude.
//
// When the candidates number at most 128 they are ranked at once.
// Otherwise the free proxies are walked in strategy order, 64 at a time
// with one SMISMEMBER per index set, for at most 256 proxies, which finds
// a match at once for any filter that matches a fair share of the free
// proxies, and covers all of them when at most 256 are free (a busy
// pool). Then candidates numbering at most 1,024 are ranked. A filter
// whose candidates no index narrows to 1,024 (one made only of NoneOf, an
// AnyOf with an alternative that has no indexed condition, a common
// country whose proxies are nearly all busy while many others are free)
// walks on, up to 1,024 free proxies in all, and then gives up with
// [pharox.ErrNoProxyAvailable], saying the filter is too selective to
// serve: one call never reads more than about a thousand proxies, so none
// can stall the server for the others, whatever the pool's size. Such a
// filter is still served exactly whenever at most 1,024 proxies are free
// or a match comes early in strategy order. Random takes the first match
// in shuffled uniform samples of the free proxies (all of them, shuffled,
// when at most 1,024 are free), or a uniform choice among the ranked
// candidates, so every candidate is equally likely.
//
// Taking the slot is O(log n): the proxy leaves the free sorted sets when it
// fills up and returns when a lease ends. The hot path is lean in Redis
// calls and in the values they carry, which dominate a script's cost: an
// unfiltered first_available acquisition makes about ten calls (TIME, the
// reclaim range read, the quota probe, the pick, HINCRBY and HMGET of the
// proxy, one sorted-set update, the lease HSET, its expiry ZADD, and a
// counter on a proxy's first lease) and a release about eight. A lease is one value in
// one hash, not a hash of its own, so that a batch (see Batching) reads and
// writes all its leases in one call; the client packs the parts only it
// reads into that value, so scripts neither parse nor return them field by
// field. To get there the client keeps three caches that can only
// save work, never change an answer: consumers it has seen exist (they are
// never deleted), the pool id last seen for a pool name (a hint the script
// verifies whenever it finds nothing, so a pool re-created under the same
// name is found), and decoded "static" proxy parts (which never change).
// Concurrent acquisitions and releases share one script call, TIME and
// reclaim, and make fewer calls each (see Batching).
//
// Predicate filters cannot run inside Redis: they fail with
// [pharox.ErrUnsupported].
//
// Administrative calls are not on the hot path and cost what they touch:
// DeletePool and DeleteProxy run one script over the pool's proxies (or
// the proxy's ended leases), blocking Redis for time proportional to
// them; ListProxies and ListLeases read outside scripts, in pages, every
// proxy of the pool or every lease the query can concern (all ended
// leases kept by the retention when it names no proxy or pool).
//
// Filters read each proxy's filtered fields from one hash per pool
// (p:<pid>:ff, packed by the client when the proxy is added), so a walk
// reads a whole chunk of proxies with one HMGET.
//
// # Targets
//
// A proxy's per-target entries ([pharox.TargetStore]) live in one hash
// per proxy, so ListTargetStates is one read and deleting the proxy
// deletes them. ApplyTargetOutcome is one script, target_apply.lua, that
// mirrors [pharox.TargetState.Apply] (storagetest's Targets section
// compares the two on random outcome sequences; the cool-down of each
// ban in a row comes from [pharox.TargetPolicy.Cooldown], computed by the
// client), updates the entry's indexes, evicts beyond the policy's
// MaxTargetsPerProxy (longest idle first) and counts the proxy's recent
// cool-downs, with the server's clock: a cool-down is visible to every
// acquisition from the instant it is stamped. The record keeps the token
// of the call that wrote it, so an outcome go-redis sends twice is
// applied once. Durations count in whole microseconds (rounded down).
//
// An acquisition with a target reads the size of the pool's cooling set
// for it (p:<pid>:tc:<target>) and, when it is not empty, skips its
// members whose cool-down has not ended: a sticky binding to such a proxy
// is not honoured (the key is bound again), and the selection tests the
// candidates it considers against the set with one ZMSCORE per chunk
// (one ZSCORE per ranked candidate). Without a filter, the walk in
// strategy order reads 8 proxies first, then 64 at a time, and stops at
// the first one not cooling: it meets at most as many cooling proxies as
// the set holds, so its cost grows with the cooling proxies it skips,
// never with the pool (a run of 300 cooling proxies at the head of the
// order costs about a dozen more Redis calls than an acquisition without
// a target, in a pool of 1,000 or 8,000). With a filter, cooling proxies
// count as not matching and the filter's scan budget applies as it does
// without a target, so a filter whose matches are mostly cooling for the
// target may give up as too selective. Random picks from samples as
// without a target, giving up (too selective) only if as many samples as
// the set holds, plus 64, were all cooling. Batched acquisitions with a
// target (the batch key includes it) skip the same proxies; unfiltered
// first_available batches skip cooling heads while following the list.
//
// PoolTargetStats reads outside any script, in three pipelined rounds:
// the pool's targets and status counters, per target the proxies cooling
// now and the cool-downs started in the last hour, then the status of each
// cooling proxy; its cost grows with the targets seen in the pool and
// their cooling proxies, not with the pool's size, and its counts are not
// one snapshot. PurgeTargetStates deletes idle entries through the tidle
// index, 1,000 per script.
//
// # API keys and audit log
//
// CreateAPIKey writes the key hash and its name and digest lookups in one
// script, which checks the id, name and digest first
// ([pharox.ErrAlreadyExists], revoked keys included), so two processes
// can never store two keys with one name or secret; a retried call
// answers as its first run did (once:<token>). GetAPIKeyByDigest is one
// script call (two hash reads) and compares the digest in constant time;
// RotateAPIKey moves the digest lookup in one script; TouchAPIKeys is one
// script that keeps the later of the stored and given times, so touches
// may arrive twice or out of order. Keys are never deleted: a revoked key
// stays, so that its name and secret stay taken.
//
// Audit entries are appended by one script, idempotent on the entry's id,
// and kept until PurgeAudit deletes them: nothing expires them on its
// own, so run PurgeAudit with the retention the log needs. ListAudit reads backwards from its Until
// bound in pages of 1,000, outside any script, filtering actor and action
// here: its cost grows with the entries of the time range read before
// the last match.
//
// ClaimLeaseVerdict sets the lease's entry in the verdicts hash only if
// absent, in a script that first checks the lease exists; the entry holds
// the call's token, so the same call sent again still reports true, and
// it goes when the lease is forgotten (retention, PurgeEndedLeases,
// DeleteProxy).
//
// # Batching
//
// Most of a script call's cost is not its work but its overhead: the
// round trip, EVALSHA's dispatch, setting up the script, TIME and the
// reclaim read. So the store coalesces concurrent calls: acquisitions
// without a session key for the same pool, strategy and filter, and
// releases, each go through a queue (see [WithMaxBatch], default
// [DefaultMaxBatch]). A call that finds no batch of its kind running
// first yields the processor once, so that callers woken with it can join
// it, then runs, alone if none did, through the same acquire or release
// script as without batching; calls that arrive meanwhile wait for it and
// leave together in one script call, acquire_many or release_many, which
// performs them one after another exactly as the single scripts would,
// with one TIME and one reclaim (repeated only after a backlog of expired
// leases) for the whole batch, and returns each call's own lease or error
// (ErrNoProxyAvailable, ErrPoolNotFound, ErrConsumerNotFound,
// ErrLeaseNotFound, ErrLeaseNotActive). All acquisitions of a batch are
// stamped with the same time. Inside a batch, writes that no later item
// reads are made once at the end (the lease records, the expiry index, the
// ended-lease indexes, the pools' counters, the free structures the
// strategy does not read; an unfiltered first_available batch follows the
// head of its free list itself), a batch of releases reads all its leases
// in one call and frees each proxy's slots in one step, and an
// acquisition's reply leaves out the proxy fields an earlier one in the
// batch already carries. On the benchmark's workload (unfiltered
// first_available, 32 callers) this cuts the Redis calls per
// acquire+release pair from about twenty to about five, with about eleven
// acquisitions or releases per script call. Sticky acquisitions (with a
// session key) are never batched.
//
// A lone caller runs its script on its own goroutine with its own context,
// exactly as without batching; a caller that others joined, or that
// arrives while a batch runs, waits for its batch, which runs on a
// goroutine of its own. WithMaxBatch(1) turns batching off (see
// BENCHMARKS.md for what it gains). A queued caller whose context ends
// gets the context's error at once; a lease its batch acquired for it is
// released in the background, so it holds no slot.
//
// # Usage and quotas
//
// A release with a usage report ([pharox.UsageStore]) is one script call
// like any release: the report goes into the ended lease's record, the
// hourly bucket usage:<hour> adds it to the group of the lease's consumer,
// proxy, pool and target (one read and one write of the bucket's hash,
// once per batch of releases), and the byte counters of the quotas of
// that consumer, pool and proxy grow by its bytes, if they exist (one
// read of the quotas hash). A proxy whose counters then reach a limit
// joins its pool's set of exhausted allowances, p:<pid>:xh, scored by when
// the allowance resets ([pharox.Quota.ExhaustedUntil]); SetQuota and
// DeleteQuota keep that set in step with the limits. A release without a
// report makes no call more than before; a release retried by go-redis,
// found by its token, counts nothing again, and expiry counts nothing.
//
// Quotas are one hash, quotas, whose packed records mirror [pharox.Quota];
// quota.lua holds the reference rules (Admit, TakeToken, AddBytes,
// ExhaustedUntil, RollPeriods, the day and month starts) in Lua, computed
// in microseconds and in the same float64 operations as Go, so both
// round alike (TestQuotaRulesMatchGo compares them on random quotas and
// times). An acquisition reads the consumer's and the pool's quotas and
// the pool's "x|" flag with one HMGET, before choosing a proxy: that read,
// which finds nothing in a store without quotas, is all quotas cost an
// acquisition that has none, alone or batched (TestQuotaFreeAcquisitionCost).
// With a quota, the script applies Admit (consumer first, then pool): a
// max_concurrent_leases counts the active unexpired leases with one
// ZCOUNT, of the pool's expiry set p:<pid>:exp for a pool, and of the
// consumer's set c:<cid>:act for a consumer. A refusal is an error reply
// the client turns into a *[pharox.QuotaError], and takes nothing. Once a
// proxy is leased, quotas with a request rate lose a token (one HSET of
// the records that changed, once per batch), and a capped consumer's
// lease joins c:<cid>:act, its record naming the consumer so that every
// end of the lease (release, expiry, reclaim, cleanup) and every renewal
// keep the set in step. Since scripts run one at a time, no interleaving
// of acquisitions from any number of processes exceeds a cap or takes
// more tokens than a bucket holds. An acquisition a client retries finds
// its lease and takes nothing, so it is neither refused nor charged.
//
// Only the leases of consumers with a cap are counted in c:<cid>:act, so
// that the others pay nothing: when SetQuota gives a consumer a cap, one
// script per pool (track.lua) adds the consumer's active leases of that
// pool, reading the pool's active leases (an administrative cost, like
// DeletePool's). Until the last of those scripts has run, SetQuota has not
// returned and the cap may count fewer leases than the consumer holds.
//
// Proxies in p:<pid>:xh with a reset still ahead are skipped like proxies
// cooling down for a target (see Targets): the acquisition reads the set
// only when the "x|" flag says it may have members, and then at a cost
// that grows with the exhausted proxies it meets, never with the pool
// (TestExhaustedAcquisitionCost); a sticky binding to such a proxy is not
// honoured. Cleanup drops the members whose allowance has reset.
//
// A new quota's byte counters start from the buckets of the current day
// and month: the client sums the hours before the current one outside
// any script (HSCAN, pipelined), and set_quota.lua adds the hours since,
// so that no release falls between the sums and the quota; with the sums
// taken for another day or month than the script's, the client sums
// again. QueryUsage reads the hours of its range from usage:hours and
// their buckets with HSCAN outside any script, in pipelined rounds of up
// to 100 hours, totalling in the client: its cost grows with the buckets
// read, never with the leases. PurgeUsage deletes whole hours, 100 per
// script, and returns the groups they held.
//
// Scripts add in Lua's doubles, so a bucket's or a quota's sums are exact
// up to 2^53 (9 PB) each, far beyond one hour's or one month's traffic.
//
// Buckets live in Redis' memory: about 240 bytes per (consumer, proxy,
// target) group that carried traffic in an hour (measured with MEMORY
// USAGE), so 10,000 such groups an hour take 2.4 MB an hour, 5.2 GB over
// 90 days. Every bucket expires [DefaultUsageRetention] (400 days) after
// its hour began, so memory stays bounded even when nothing purges; set
// [WithUsageRetention] to the history the deployment needs (pharox serve
// also purges by its --usage-retention, default 90 days), and no shorter
// than the current month, which new quotas read.
//
// # Expiry and retention
//
// Every operation on a pool first reclaims that pool's expired leases, so a
// lease past its ExpiresAt never counts once a later operation touches its
// pool; a release or renewal of such a lease reports
// [pharox.ErrLeaseNotActive]. CleanupExpiredLeases reclaims all pools in
// batches, drops dead session bindings and forgets ended leases older than
// the retention (see [WithEndedLeaseRetention], default
// [DefaultEndedLeaseRetention]). An expired lease's ReleasedAt is the
// moment it was reclaimed. A lease whose reply never reached its client
// after go-redis's retries (a network failure, or a context that ended
// while a call running alone was under way) is counted until it expires,
// like a lease of a client that crashed, unless the client acquires again
// with the same LeaseID, which returns it.
//
// Ended leases live in Redis' memory until the retention lets them go:
// about 0.5 KB each (measured: 512 bytes with short names), so a store
// that ends 1,000 leases a second holds about 44 GB at the default
// retention of a day, and 1.8 GB at one hour. Size the retention to the
// server's memory and to how far back GetLease and ListLeases need to see,
// and run CleanupExpiredLeases regularly (pharox serve reaps every few
// seconds and purges by its own --lease-retention, default a day).
//
// # Redis Cluster
//
// Scripts touch keys derived from the prefix and from ids they read, not
// only the keys they declare, which Redis Cluster allows only when every
// key lives in one hash slot (and Redis documents undeclared keys as
// unsupported in Cluster). The default prefix "{pharox}:" is a hash tag, so
// a whole deployment lives in one slot of one primary, and KEYS[1] of every
// script is a key of that slot, so cluster clients route scripts there.
// This is designed to work on Cluster but is tested on a single server
// only; it does not spread one deployment over shards (run several
// deployments under different tags for that). A prefix without a hash tag
// works on a single server or a Sentinel setup only.
//
// # Testing
//
// Tests need a real server: they read PHAROX_TEST_REDIS_URL (for example
// redis://127.0.0.1:6379/0), skip with a message when it is unset, and use
// their own hash-tagged prefix, whose keys they delete afterwards.
//
// # Security
//
// Proxy passwords are stored in the proxy hash, as the store needs them to
// hand out leases; protect the Redis server accordingly (ACLs, TLS). They
// never appear in this package's errors.
package redis
