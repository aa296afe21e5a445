// Package mongo is the pharox.Storage on MongoDB 6 or later (or a server
// that speaks its wire protocol, such as FerretDB v1), for teams that keep
// their inventory in a document database. Any number of processes and
// hosts lease from the same pools through it; a unique index alone
// guarantees that no proxy is ever leased beyond its max_concurrency.
//
// # Usage
//
//	// Connects, creates the indexes (idempotent, safe from many
//	// processes at once) and returns a store that disconnects on Close.
//	store, err := mongo.Open(ctx, "mongodb://app:secret@db:27017/pharox")
//	if err != nil { ... }
//	defer store.Close()
//	m := pharox.NewManager(store)
//
// storage/open and `pharox serve` take mongodb:// and mongodb+srv:// URLs;
// the path names the database ("pharox" when empty) and ?prefix= the
// collection prefix. [New] builds a store on a database of the caller's
// client instead. Collections are named with a prefix, "pharox_" unless
// [WithCollectionPrefix] says otherwise: consumers, pools, proxies,
// proxy_loads, slots, leases, sessions, cursors, verdicts, api_keys,
// audit_log, proxy_targets, quotas, quota_slots, quota_tokens and
// usage_hourly.
//
// # Acquisition: one insert under a unique index
//
// Every active lease is one document of the slots collection: its _id is
// the lease id, and it holds a slot number n of its proxy, 0 to
// max_concurrency-1 (for an unlimited proxy n is the lease id). A unique
// index on (proxy, n) therefore admits at most max_concurrency active
// leases per proxy, whatever any number of processes do at once. Taking a
// lease is one single-document insert: the acquisition reads the proxy's
// slots, picks the lowest free number and inserts its lease there; a
// concurrent acquisition that picked the same number gets a duplicate key
// error and reads again. The insert creates the lease whole (pool,
// consumer, times, session key), so there is no second write for a crash
// to miss. A proxy's CurrentLeases is the count of its slot documents;
// proxy documents hold no lease count, so no write to a proxy (a health
// check, a status change) can lose or invent a lease.
//
// An insert may wait on the server while other acquisitions take and free
// the same slot number, so a lease's stamps are written again right after
// its insert: AcquiredAt becomes the clock after the commit (and never
// overlaps the lease that held the slot before), and ExpiresAt follows.
// Until then the slot carries a 30-second guard on its expiry, so no
// reclaimer ends a lease whose stamps are not final; a process that dies
// between the two writes holds the slot that much longer.
//
// Why not a counter on the proxy document, taken with one conditional
// findOneAndUpdate ({current_leases: {$lt: max}}, $inc, $push)? On
// MongoDB that is atomic, but FerretDB v1, on which this package is
// tested, implements findAndModify and update as a read, a change in Go
// and a write of the whole document by _id, with no condition on the
// write: two concurrent updates of one document both succeed from the
// same read, and a counter goes past its maximum. Inserts into a unique
// index and deletes by _id that report how many documents they deleted
// are atomic on both, so this store is built on those alone.
//
// Candidates are read in strategy order through indexes: the proxies of
// the pool with status rank 0 or 1 (active, slow) that the request's
// filter, translated to a query, selects, read in pages of 32, 128, 512,
// then 2,048 candidates. The first page has its proxies' live slots
// counted with one $in query on the slots' (proxy, n) index; a walk past
// it is in a busy pool and reads the pool's live slots once, through the
// (pool, proxy) index, for the pages after it.
// FirstAvailable reads the (pool, rank, checked_at desc, _id) index;
// RoundRobin reads (pool, _id) after the pool's cursor document and then
// wraps. LeastUsed and Random read the proxy_loads collection instead:
// one document per proxy with its status rank, the fields filters read,
// and its lease count N and free slots Room (max_concurrency - N), which
// every lease taken and ended moves by one ($inc). Two partial indexes
// hold the loads of proxies with room only: LeastUsed reads (pool, rank,
// n, _id) in order, Random (pool, rank, _id) from a random id on and then
// wraps, so neither reads a full proxy nor more than the pages it
// offers; each page's proxies and slots are then read by id, LeastUsed
// orders the page by the counts read and Random shuffles it (a page of 32
// averages the id gaps that make a random start key uneven). The counts
// order the walk; the proxies and their slots decide what is leased, so a
// count that is off (a process that died between a slot's insert and its
// count's update; on FerretDB v1, two updates of one proxy's count at
// once, since its $inc is a read and a write) changes the order, never
// the answer's validity; a walk that finds nothing through the loads
// reads the pool through before taking "no proxy" for an answer, and
// repairs the pool's loads when that finds a free proxy. A filtered walk examines at most
// [DefaultFilterScanBudget] candidates ([WithFilterScanBudget]) and then
// fails with pharox.ErrNoProxyAvailable saying that the filter is too
// selective.
//
// Filters become a query with equality, $all (tags), $or, $and and $nor
// (NoneOf); radius and point filters become a latitude band, a superset
// that NoneOf cannot negate, so such a NoneOf is left out of the query.
// The store always applies pharox.Filters.Match to what the query returns,
// so the answer is the reference's exactly; the query narrows what is
// read. Predicate filters cannot run in the database and give
// pharox.ErrUnsupported.
//
// When an acquisition saw free slots but lost every one to concurrent
// acquisitions, it walks again after a jittered backoff (up to 24 times).
// When it found no free slot, it reclaims up to 64 expired leases of the
// pool and looks once more; a proxy found full of expired leases has them
// reclaimed when it is tried.
//
// # Ending a lease exactly once
//
// A lease ends (released, or expired by a cleanup, a renewal or an
// acquisition that reclaims it) by inserting its ended record, with the
// lease id as _id, into the leases collection: of concurrent enders
// exactly one insert succeeds, and only that caller reports the lease as
// ended by it. The slot document is deleted after, by every ender (a
// delete of a deleted document is harmless), which frees the slot once.
// A crash between the insert and the delete leaves a slot whose lease has
// ended; reads prefer the ended record, and the slot is deleted once it
// is past its ExpiresAt (by the next cleanup, or an acquisition that finds
// the proxy full), so it holds the slot no longer than the lease would
// have. Renewal updates the slot's expires_at, and reports the lease not
// active if the slot is gone or its ended record appeared meanwhile.
//
// # Lease ids and retries
//
// A caller-chosen lease id (pharox.AcquireRequest.LeaseID) is looked up
// first; an existing lease is returned as it is when pool and consumer
// match, ErrAlreadyExists otherwise. Two acquisitions racing with one id
// insert slot documents with one _id: one wins, the other finds the
// winner's lease and returns it. An insert that succeeded for an id whose
// ended record appeared meanwhile gives its slot back. The driver retries
// writes once after a network error (retryWrites, on by default for
// replica sets); a retried insert of a slot that did commit reports a
// duplicate key on the lease id, which the acquisition recognises as its
// own lease (a caller-chosen id: as the existing lease above).
//
// # Sticky sessions
//
// A binding is a document of the sessions collection keyed by pool and
// session key. A live binding whose proxy is still a candidate is tried
// first and has its expiry moved on success. Otherwise the acquisition
// takes a slot normally and binds the key with an insert: of concurrent
// first uses, one insert wins and the others give their slot back and
// take one on the winner's proxy, so all end on one proxy. A live binding
// whose proxy cannot take the lease is replaced. A sticky hit does not
// move the round-robin cursor; the cursor is advisory (last writer wins).
//
// # Lease verdicts
//
// ClaimLeaseVerdict (pharox.LeaseVerdictStore) inserts the lease id into
// the verdicts collection, and of concurrent claims from any process
// exactly one insert succeeds. Claims go with their lease
// (PurgeEndedLeases, DeleteProxy, DeletePool).
//
// # API keys and the audit log
//
// The api_keys collection holds one document per key (_id = key id) with
// its name, role, bindings, hint and the hex SHA-256 digest of its secret
// (never the secret), under unique indexes on name and digest: creating a
// key is one insert, and a name, digest or id already stored, revoked keys
// included, is refused by the server (pharox.ErrAlreadyExists) whatever
// any number of processes do at once. Revoking is an update that only
// matches a key without revoked_at, so the first stamp stays. Rotating
// looks the new digest up first, then updates digest and hint of a key
// not revoked; the digest index refuses a digest another key took
// meanwhile (FerretDB v1 reports that as an internal error naming the
// unique constraint, which the store recognises too). TouchAPIKeys is one
// unordered bulk write of $max updates of last_used_at, so a touch never
// moves it back. Key and audit times are integer microseconds since the
// epoch (a BSON date holds milliseconds only).
//
// The audit_log collection holds one document per entry with the entry's
// id as _id, so a retried append is a duplicate key the store ignores.
// ListAudit reads through the (at desc, seq desc) index, newest first;
// seq is the appending process's clock in nanoseconds and orders entries
// with the same time (latest appended first, on synchronised clocks).
// PurgeAudit is a deleteMany on at.
//
// # Per-target cool-downs
//
// The proxy_targets collection holds one document per (proxy, target),
// _id = proxy id + "/" + target, with the proxy's pool and the fields of
// pharox.TargetState (times as integer microseconds) plus idle_since and a
// write counter v. ApplyTargetOutcome reads the entry, applies
// pharox.TargetState.Apply in Go, and writes it back with a replace that
// only matches the counter it read (a new entry: an insert, refused by
// _id when a concurrent one created it); a lost race reads again. On
// MongoDB that compare-and-set is atomic; on FerretDB v1 (whose updates do
// not re-check their filter at write time) two outcomes of one (proxy,
// target) at the same instant may lose one, the same limit as health
// checks. A new entry first evicts the proxy's longest-idle entries beyond
// the policy's MaxTargetsPerProxy. An acquisition with a target reads,
// before it takes a slot, the ids of the pool's proxies cooling down for
// that target (the (pool, target, cooling_until) index: its cost grows
// with those proxies, not with the pool) and never offers them, neither in
// its walk nor as a sticky session's bound proxy (the key is rebound). An
// outcome whose write has returned is therefore seen by every acquisition
// that starts afterwards, in any process. PurgeTargetStates deletes by
// idle_since; DeleteProxy and DeletePool delete the entries with their
// proxies.
//
// # Usage and quotas
//
// FerretDB v1 applies $inc, like every update, as a read of the document,
// a change in Go and a write of the whole document: eight writers of 50
// increments each to one counter left it at 52, not 400. So the store
// keeps no counter that two writers update: usage and byte counters are
// kept per store instance (a random writer id chosen by [New]), and one
// instance serializes its own writes of each such document; readers sum
// the instances' documents. Everything that must hold across processes
// is an insert under a unique index.
//
// A release with a usage report stores it on the ended lease (Lease.Usage)
// and, after the insert that ended the lease, adds it to this instance's
// bucket of (hour, consumer, proxy, pool, target) in usage_hourly (an
// upserting $inc) while it reads the quotas of the lease's consumer, pool
// and proxy (one query), then adds the bytes to this instance's byte shard
// of each quota found (one ordered bulk write that also rolls a shard's
// day and month). A proxy quota that this release uses up gets an
// allowance document with the time its period ends; acquisitions skip
// the pool's proxies with such a document in the future. A release that
// was not the one to end its lease counts nothing, nor does an expiry; a
// process that dies between ending the lease and counting loses that
// lease's usage. QueryUsage sums the buckets it selects (one document per
// bucket and instance that counted into it); PurgeUsage deletes buckets by
// hour and also drops byte shards of past months.
//
// A quota is a document of the quotas collection keyed by subject and id
// with its limits, the counters a new quota starts from (the subject's
// buckets of the current day and month) and a generation: a quota deleted
// and set again gets a new one, and shards, cap slots and request-log
// entries of an older generation count for nothing. Acquisitions read
// quotas only from pools flagged while a quota may apply to them (a
// consumer quota flags every pool; a pool's quota or its proxies' flag
// it), so without quotas an acquisition costs what it did. A flagged
// acquisition reads the consumer's and the pool's quotas, their shards and
// the pool's spent allowances in one query, then for the consumer and
// then the pool follows pharox.Quota.Admit:
//
//   - max_concurrent_leases: a cap slot, one insert into quota_slots,
//     whose unique (quota, generation, n) index admits one holder per
//     number 0 to cap-1, whatever any number of processes do at once.
//     The first try picks a random number without reading; when it is
//     taken, the quota's slots are read, and if there are as many as the
//     cap, their leases: a slot counts while its lease is active and
//     unexpired (or its acquisition may still be running, for 30
//     seconds), an expired lease is reclaimed, a slot whose lease ended
//     is deleted. The lease lists the slot, and its end deletes it with
//     its proxy slot. Setting a cap on a subject with active leases gives
//     them slots; lowering a cap below the slots held makes acquisitions
//     count (and give a slot back when a concurrent one made it one too
//     many) until a later SetQuota finds no slot above the cap.
//   - bytes per day and month: the quota's counters and its shards'.
//   - requests_per_minute: a sliding one-minute window, not the token
//     bucket of pharox.Quota.TakeToken (storagetest Capabilities
//     RequestRateWindow). The k-th acquisition counted inserts entry k of
//     the quota's request log in quota_tokens (_id: quota, generation, k)
//     and may only when entry k - RequestsPerMinute is absent or a minute
//     old: of concurrent inserts of one k one wins, the others try k+1
//     against its own older entry. So no minute, sliding, counts more
//     than RequestsPerMinute acquisitions: never more than the bucket
//     admits, but after a burst of RequestsPerMinute the next one waits
//     until the burst's first is a minute old (RetryAfter up to a minute),
//     where the bucket gives one back every 60/RequestsPerMinute seconds.
//
// A refusal (*pharox.QuotaError) or a failed acquisition deletes the cap
// slots and log entries it took; a process that dies in between leaves a
// log entry counted for its minute and a cap slot for 30 seconds.
// Acquisitions retried with a lease id already held are answered before
// quotas are read. A lease taken while SetQuota sets a cap on its subject
// may go uncounted by that cap until it ends.
//
// # MongoDB features relied on
//
// Single-document insert with a unique compound index and duplicate key
// errors (code 11000); deleteOne by _id returning deletedCount; find with
// sort, projection, limit and batchSize; countDocuments; updateOne with
// $set/$unset/$max/$inc/$setOnInsert and upsert; replaceOne (with upsert);
// ordered and unordered bulk writes of updateOne, replaceOne and
// deleteOne; insertMany; deleteMany; createIndexes (compound, unique,
// descending keys, and partial where the server builds them: FerretDB v1
// gets the same keys without the partial filter); query operators $in,
// $all, $or, $and, $nor, $ne, $gt, $gte, $lt, $lte, $exists. No
// transactions, no aggregation, no $expr, no change streams, no TTL
// indexes. Health checks and status changes update a proxy with a
// compare-and-set on a write counter ({_id, v} filter): atomic on MongoDB;
// on FerretDB v1 two writes of one proxy at the same instant may lose one
// (never a lease, which proxies do not hold).
//
// # Outages, times and retention
//
// Network errors and server-selection timeouts also match
// pharox.ErrUnavailable and io.ErrUnexpectedEOF, so the server answers
// 503. Times come from the process's clock at millisecond precision (a
// BSON date), in UTC: hosts sharing a store need synchronised clocks.
// Ended leases are kept until PurgeEndedLeases deletes them.
package mongo
