package pharox

import "errors"

// Sentinel errors. Storage drivers and the Manager wrap them with context, so
// test for them with [errors.Is].
var (
	// ErrNoProxyAvailable means no proxy in the pool matched the request and
	// had a free slot. It is an expected outcome, not a failure of the system.
	ErrNoProxyAvailable = errors.New("pharox: no proxy available")
	// ErrPoolNotFound means the named or identified pool does not exist.
	ErrPoolNotFound = errors.New("pharox: pool not found")
	// ErrProxyNotFound means the identified proxy does not exist.
	ErrProxyNotFound = errors.New("pharox: proxy not found")
	// ErrConsumerNotFound means the identified consumer does not exist.
	ErrConsumerNotFound = errors.New("pharox: consumer not found")
	// ErrLeaseNotFound means the identified lease does not exist.
	ErrLeaseNotFound = errors.New("pharox: lease not found")
	// ErrLeaseNotActive means the lease was already released or has expired,
	// so it can be neither released nor renewed again.
	ErrLeaseNotActive = errors.New("pharox: lease is not active")
	// ErrAlreadyExists means a pool with the same name, or a proxy with the
	// same pool, protocol, host, port and username, already exists.
	ErrAlreadyExists = errors.New("pharox: already exists")
	// ErrInUse means the pool or proxy still has active leases and cannot be
	// deleted until they are released or expire.
	ErrInUse = errors.New("pharox: in use by active leases")
	// ErrInvalidArgument means an argument failed validation. The wrapping
	// message says which one and why.
	ErrInvalidArgument = errors.New("pharox: invalid argument")
	// ErrUnsupported means the storage driver cannot do what was asked, for
	// example evaluate a Go predicate filter inside a database.
	ErrUnsupported = errors.New("pharox: unsupported by this storage")
	// ErrUnavailable means the store could not serve the request now: it
	// is unreachable, restarting, failing over, read-only or too busy. A
	// retry later may succeed. The service answers it with 503 and
	// Retry-After, and the Go client returns it for such answers.
	ErrUnavailable = errors.New("pharox: storage unavailable")
	// ErrKeyNotFound means the identified API key does not exist (or no
	// stored key has the presented secret).
	ErrKeyNotFound = errors.New("pharox: api key not found")
	// ErrKeyRevoked means the API key was revoked: it no longer
	// authenticates and cannot be rotated.
	ErrKeyRevoked = errors.New("pharox: api key revoked")
	// ErrKeyExpired means the API key is past its expiry.
	ErrKeyExpired = errors.New("pharox: api key expired")
)
