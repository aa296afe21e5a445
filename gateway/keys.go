package gateway

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/client"
	"github.com/pharox/pharox/internal/keyauth"
)

// ErrKeyRefused means a proxy password is no API key the lease source
// accepts: unknown, revoked or expired. The gateway answers 407.
var ErrKeyRefused = errors.New("gateway: API key refused")

// KeyUser is who a proxy password (an API key) belongs to and what it may
// use.
type KeyUser struct {
	// Name is the key's name, "bootstrap" for keys from configuration.
	Name string
	// Role is admin, consumer or viewer. Viewer keys cannot lease.
	Role pharox.KeyRole
	// Consumers are the consumer names a key bound to consumers acts as;
	// its leases are taken for the first. Empty: Config.Consumer.
	Consumers []string
	// Pools are the pool names a consumer key may use; empty: every pool.
	Pools []string
}

// consumer is the consumer the user's leases are taken for.
func (u *KeyUser) consumer(fallback string) string {
	if u.Role == pharox.KeyRoleConsumer && len(u.Consumers) > 0 {
		return u.Consumers[0]
	}
	return fallback
}

// mayUse checks that the user may lease from pool: 403 otherwise, naming
// what it may use.
func (u *KeyUser) mayUse(pool string) error {
	switch {
	case u.Role == pharox.KeyRoleViewer:
		return &gwError{status: http.StatusForbidden, reason: fmt.Sprintf("API key %q is a viewer key: it cannot lease proxies", u.Name)}
	case u.Role == pharox.KeyRoleConsumer && len(u.Pools) > 0 && !slices.Contains(u.Pools, pool):
		return &gwError{status: http.StatusForbidden, reason: fmt.Sprintf("API key %q may use only pool %s, not %q", u.Name, quoteNames(u.Pools), pool)}
	}
	return nil
}

func quoteNames(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// KeyChecker checks a proxy password as an API key: [NewStoreKeys] in
// this process over a store, [NewServerKeys] through a pharox server.
type KeyChecker interface {
	// CheckKey returns the key's user, an error wrapping ErrKeyRefused
	// for a key that does not pass (its message says why), or another
	// error when the check could not be made.
	CheckKey(ctx context.Context, secret string) (*KeyUser, error)
}

// StoreKeys checks keys against a store's keys and the bootstrap keys,
// with the HTTP service's cache: a key created or revoked through any
// process sharing the store works or stops here within seconds.
type StoreKeys struct{ a *keyauth.Authenticator }

// NewStoreKeys returns a KeyChecker over the keys store keeps (when it
// implements pharox.KeyStore) and the bootstrap admin and consumer keys.
func NewStoreKeys(store pharox.Storage, admin, consumer []string) *StoreKeys {
	return &StoreKeys{a: keyauth.New(store, admin, consumer)}
}

// CheckKey implements KeyChecker.
func (s *StoreKeys) CheckKey(ctx context.Context, secret string) (*KeyUser, error) {
	id, err := s.a.Authenticate(ctx, secret)
	switch {
	case errors.Is(err, keyauth.ErrUnknownKey):
		return nil, fmt.Errorf("%w: unknown API key", ErrKeyRefused)
	case errors.Is(err, pharox.ErrKeyRevoked):
		return nil, fmt.Errorf("%w: this API key was revoked", ErrKeyRefused)
	case errors.Is(err, pharox.ErrKeyExpired):
		return nil, fmt.Errorf("%w: this API key has expired", ErrKeyRefused)
	case err != nil:
		return nil, err
	}
	return &KeyUser{Name: id.Name, Role: id.Role, Consumers: id.Consumers, Pools: id.Pools}, nil
}

// Run writes when keys were last used, every few seconds, until ctx ends.
func (s *StoreKeys) Run(ctx context.Context, onError func(error)) {
	s.a.Run(ctx, keyauth.DefaultTouchInterval, onError)
}

// ServerKeys checks keys by asking a pharox server who they are
// (GET /v1/keys/self), caching answers for a couple of seconds. Leases are
// then taken with the user's own key, so the server applies its scopes.
type ServerKeys struct {
	c  *client.Client
	mu sync.Mutex
	m  map[[sha256.Size]byte]serverKeyAnswer
}

type serverKeyAnswer struct {
	user *KeyUser
	err  error
	at   time.Time
}

// NewServerKeys returns a KeyChecker asking the server behind c.
func NewServerKeys(c *client.Client) *ServerKeys {
	return &ServerKeys{c: c, m: map[[sha256.Size]byte]serverKeyAnswer{}}
}

// CheckKey implements KeyChecker.
func (s *ServerKeys) CheckKey(ctx context.Context, secret string) (*KeyUser, error) {
	d := sha256.Sum256([]byte(secret))
	now := time.Now()
	s.mu.Lock()
	a, ok := s.m[d]
	s.mu.Unlock()
	if ok && now.Sub(a.at) < keyauth.CacheTTL && !now.Before(a.at) {
		return a.user, a.err
	}
	self, err := s.c.Self(client.ContextWithAPIKey(ctx, secret))
	var user *KeyUser
	switch {
	case errors.Is(err, client.ErrUnauthorized):
		detail := "unknown API key"
		var ae *client.APIError
		if errors.As(err, &ae) && ae.Detail != "" {
			detail = ae.Detail
		}
		err = fmt.Errorf("%w: %s", ErrKeyRefused, detail)
	case err != nil:
		return nil, err
	default:
		user = &KeyUser{Name: self.Name, Role: pharox.KeyRole(self.Role), Consumers: self.Consumers, Pools: self.Pools}
	}
	s.mu.Lock()
	if len(s.m) >= 4096 {
		clear(s.m)
	}
	s.m[d] = serverKeyAnswer{user: user, err: err, at: now}
	s.mu.Unlock()
	return user, err
}

// keyError is the answer to a key that did not pass its check.
func keyError(err error) *gwError {
	if errors.Is(err, ErrKeyRefused) {
		return &gwError{status: http.StatusProxyAuthRequired, reason: "bad proxy credentials: " + strings.TrimPrefix(err.Error(), ErrKeyRefused.Error()+": ")}
	}
	return acquireError("", err)
}
