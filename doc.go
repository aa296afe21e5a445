// Package pharox manages, leases and monitors pools of network proxies.
//
// A [Manager] hands out [Lease]s on [Proxy]s kept in named [Pool]s. Every
// persistent fact lives behind the [Storage] interface; the drivers live in
// their own packages (storage/memory, storage/sqlite, storage/postgres,
// storage/redis) and all pass the same conformance suite
// (storage/storagetest).
//
// The one rule that keeps pharox correct under concurrency: a lease is taken
// in a single atomic storage operation ([Storage.AcquireLease]) that both
// chooses a proxy and takes one of its slots. Nothing outside storage ever
// decides that a slot is free, so no number of goroutines, processes or hosts
// can lease a proxy beyond its MaxConcurrency.
package pharox
