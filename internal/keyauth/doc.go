// Package keyauth authenticates API keys for the HTTP service and the
// gateway, in one place: bootstrap keys (from flags, environment or a
// config file) and keys kept in the store ([pharox.KeyStore]).
//
// Bootstrap keys are held as SHA-256 digests and compared in constant
// time, every one of them on every check. A stored key is looked up by its
// digest, compared again in constant time, and refused when revoked or
// expired. Lookups are cached, found and not found alike, for at most
// [CacheTTL], so a key created or revoked through one process works or
// stops on every process sharing the store within that time (plus a
// request). When a key is used, its last_used_at is noted in memory and
// written in batches ([Authenticator.Flush], [Authenticator.Run]).
package keyauth
