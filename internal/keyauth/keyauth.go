package keyauth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/singleflight"

	"github.com/pharox/pharox"
)

// BootstrapName is the actor name of keys from flags, environment or a
// config file: they have no name of their own.
const BootstrapName = "bootstrap"

// CacheTTL bounds how long a lookup of a stored key is trusted.
const CacheTTL = 2 * time.Second

// DefaultTouchInterval is how often Run writes last_used_at.
const DefaultTouchInterval = 3 * time.Second

// lookupTimeout bounds one store lookup of a key.
const lookupTimeout = 10 * time.Second

// maxCached bounds the cache: past it an entry is dropped for each new
// one, so a flood of made-up keys costs store lookups, never memory.
const maxCached = 8192

// ErrUnknownKey means the key matches no bootstrap key and no stored key.
var ErrUnknownKey = errors.New("keyauth: unknown API key")

// Identity is who a key belongs to and what it may do.
type Identity struct {
	// Name is the stored key's name, or BootstrapName.
	Name string
	// Role is what the key may do.
	Role pharox.KeyRole
	// KeyID is the stored key's id; uuid.Nil for bootstrap keys.
	KeyID uuid.UUID
	// Consumers are the consumer names a stored consumer key acts as, the
	// first being its default: the key's bound consumers, or its own name
	// when it is bound to none. Empty for other keys.
	Consumers []string
	// Pools are the pool names a stored consumer key may lease from;
	// empty means every pool.
	Pools []string
	// ExpiresAt is when a stored key expires; nil for never.
	ExpiresAt *time.Time
}

// Bootstrap reports whether the key came from the configuration.
func (id *Identity) Bootstrap() bool { return id.KeyID == uuid.Nil }

// Scoped reports whether the key acts only as its consumers, on their
// leases: a stored consumer key. Bootstrap consumer keys are not scoped.
func (id *Identity) Scoped() bool { return id.Role == pharox.KeyRoleConsumer && !id.Bootstrap() }

// MayUseConsumer reports whether the key may act as the consumer.
func (id *Identity) MayUseConsumer(name string) bool {
	return !id.Scoped() || slices.Contains(id.Consumers, name)
}

// MayUsePool reports whether the key may lease from the pool (by name).
func (id *Identity) MayUsePool(name string) bool {
	return id.Role != pharox.KeyRoleConsumer || len(id.Pools) == 0 || slices.Contains(id.Pools, name)
}

// DefaultConsumer is the consumer a scoped key acts as when a request
// names none; "" for other keys.
func (id *Identity) DefaultConsumer() string {
	if id.Scoped() && len(id.Consumers) > 0 {
		return id.Consumers[0]
	}
	return ""
}

// IdentityOf describes a stored key.
func IdentityOf(k *pharox.APIKey) *Identity {
	id := &Identity{Name: k.Name, Role: k.Role, KeyID: k.ID, ExpiresAt: k.ExpiresAt}
	if k.Role == pharox.KeyRoleConsumer {
		id.Consumers = slices.Clone(k.Consumers)
		if len(id.Consumers) == 0 {
			id.Consumers = []string{k.Name}
		}
		id.Pools = slices.Clone(k.Pools)
	}
	return id
}

type cached struct {
	key *pharox.APIKey // nil: not found
	at  time.Time
}

// Authenticator checks API keys. Its zero value is not usable: use New.
type Authenticator struct {
	admin    [][sha256.Size]byte
	consumer [][sha256.Size]byte
	store    pharox.KeyStore // nil when the store keeps no keys
	ttl      time.Duration

	mu    sync.Mutex
	cache map[[sha256.Size]byte]cached
	// fetch makes concurrent misses of one key one store lookup.
	fetch singleflight.Group

	usedMu sync.Mutex
	used   map[uuid.UUID]time.Time
}

// New returns an Authenticator for the bootstrap keys and, when store
// implements pharox.KeyStore, the keys it keeps. Empty keys are ignored.
func New(store any, admin, consumer []string) *Authenticator {
	a := &Authenticator{ttl: CacheTTL, cache: map[[sha256.Size]byte]cached{}, used: map[uuid.UUID]time.Time{}}
	for _, k := range admin {
		if k != "" {
			a.admin = append(a.admin, sha256.Sum256([]byte(k)))
		}
	}
	for _, k := range consumer {
		if k != "" {
			a.consumer = append(a.consumer, sha256.Sum256([]byte(k)))
		}
	}
	if ks, ok := store.(pharox.KeyStore); ok {
		a.store = ks
	}
	return a
}

// KeyStore returns the store's key store, or nil when it keeps no keys.
func (a *Authenticator) KeyStore() pharox.KeyStore { return a.store }

// Empty reports whether no key can ever pass: no bootstrap key and no
// key store.
func (a *Authenticator) Empty() bool {
	return len(a.admin) == 0 && len(a.consumer) == 0 && a.store == nil
}

// bootstrap returns the role of a bootstrap key's digest, or "" when it
// matches none. Every configured digest is compared, so the time taken
// does not depend on which one matched.
func (a *Authenticator) bootstrap(d [sha256.Size]byte) pharox.KeyRole {
	var admin, consumer int
	for i := range a.admin {
		admin |= subtle.ConstantTimeCompare(d[:], a.admin[i][:])
	}
	for i := range a.consumer {
		consumer |= subtle.ConstantTimeCompare(d[:], a.consumer[i][:])
	}
	switch {
	case admin == 1:
		return pharox.KeyRoleAdmin
	case consumer == 1:
		return pharox.KeyRoleConsumer
	}
	return ""
}

// Authenticate returns the identity of secret: ErrUnknownKey when it
// matches no key, pharox.ErrKeyRevoked or pharox.ErrKeyExpired for a
// stored key that may no longer be used, or the store's error when it
// could not be asked.
func (a *Authenticator) Authenticate(ctx context.Context, secret string) (*Identity, error) {
	d := pharox.APIKeyDigest(secret)
	if role := a.bootstrap(d); role != "" {
		return &Identity{Name: BootstrapName, Role: role}, nil
	}
	if a.store == nil {
		return nil, ErrUnknownKey
	}
	k, err := a.lookup(ctx, d)
	if err != nil {
		return nil, err
	}
	if k == nil || subtle.ConstantTimeCompare(k.Digest[:], d[:]) != 1 {
		return nil, ErrUnknownKey
	}
	now := time.Now()
	if err := k.Usable(now); err != nil {
		return nil, err
	}
	a.usedMu.Lock()
	a.used[k.ID] = now
	a.usedMu.Unlock()
	return IdentityOf(k), nil
}

// lookup returns the stored key with this digest (nil when none), from
// the cache when the entry is fresh.
func (a *Authenticator) lookup(ctx context.Context, d [sha256.Size]byte) (*pharox.APIKey, error) {
	now := time.Now()
	a.mu.Lock()
	c, ok := a.cache[d]
	a.mu.Unlock()
	if ok && now.Sub(c.at) < a.ttl && !now.Before(c.at) {
		return c.key, nil
	}
	v, err, _ := a.fetch.Do(string(d[:]), func() (any, error) {
		// Shared by every waiting request: not cut short by the first
		// one's client going away.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lookupTimeout)
		defer cancel()
		k, err := a.store.GetAPIKeyByDigest(fctx, d)
		if errors.Is(err, pharox.ErrKeyNotFound) {
			return (*pharox.APIKey)(nil), nil
		}
		return k, err
	})
	if err != nil {
		return nil, err
	}
	k := v.(*pharox.APIKey)
	a.mu.Lock()
	if _, present := a.cache[d]; !present && len(a.cache) >= maxCached {
		for old := range a.cache {
			delete(a.cache, old)
			break
		}
	}
	a.cache[d] = cached{key: k, at: now}
	a.mu.Unlock()
	return k, nil
}

// Forget drops every cached lookup, so that a change made through this
// process (a revocation, a rotation) applies here at once.
func (a *Authenticator) Forget() {
	a.mu.Lock()
	clear(a.cache)
	a.mu.Unlock()
}

// Flush writes the last_used_at of the keys used since the last flush, in
// one store call.
func (a *Authenticator) Flush(ctx context.Context) error {
	if a.store == nil {
		return nil
	}
	a.usedMu.Lock()
	if len(a.used) == 0 {
		a.usedMu.Unlock()
		return nil
	}
	used := a.used
	a.used = map[uuid.UUID]time.Time{}
	a.usedMu.Unlock()
	if err := a.store.TouchAPIKeys(ctx, used); err != nil {
		// Put them back for the next round, unless newer uses came in.
		a.usedMu.Lock()
		for id, t := range used {
			if cur, ok := a.used[id]; !ok || cur.Before(t) {
				a.used[id] = t
			}
		}
		a.usedMu.Unlock()
		return err
	}
	return nil
}

// Run flushes last_used_at every interval (DefaultTouchInterval when not
// positive) until ctx ends, then once more. onError sees failed flushes.
func (a *Authenticator) Run(ctx context.Context, every time.Duration, onError func(error)) {
	if a.store == nil {
		return
	}
	if every <= 0 {
		every = DefaultTouchInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if err := a.Flush(fctx); err != nil && onError != nil {
				onError(err)
			}
			cancel()
			return
		case <-t.C:
			if err := a.Flush(ctx); err != nil && ctx.Err() == nil && onError != nil {
				onError(err)
			}
		}
	}
}
