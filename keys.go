package pharox

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
)

// KeyRole is what a stored API key may do.
type KeyRole string

// The roles an [APIKey] can have.
const (
	// KeyRoleAdmin may do everything, including managing keys.
	KeyRoleAdmin KeyRole = "admin"
	// KeyRoleConsumer may lease as its consumers, from its pools, and
	// renew, release and report outcomes on those consumers' leases.
	KeyRoleConsumer KeyRole = "consumer"
	// KeyRoleViewer is read-only: every GET and the dashboard.
	KeyRoleViewer KeyRole = "viewer"
)

// Valid reports whether r is one of the known roles.
func (r KeyRole) Valid() bool {
	switch r {
	case KeyRoleAdmin, KeyRoleConsumer, KeyRoleViewer:
		return true
	}
	return false
}

// APIKeySecretPrefix starts every secret [NewAPIKeySecret] makes, so a key
// pasted into the wrong place is recognisable.
const APIKeySecretPrefix = "phx_"

// APIKeyHintLen is how many leading characters of a secret a key keeps as
// its Hint.
const APIKeyHintLen = 8

// APIKey is a stored API key. The secret itself is never stored, only its
// SHA-256 digest ([APIKeyDigest]): stores look a key up by digest and then
// compare the digests in constant time.
type APIKey struct {
	// ID identifies the key; stores give a zero ID a fresh one.
	ID uuid.UUID `json:"id"`
	// Name is unique among keys (revoked ones included); it is what the
	// audit log records as the actor.
	Name string `json:"name"`
	// Role says what the key may do.
	Role KeyRole `json:"role"`
	// Digest is the SHA-256 of the secret. It never appears in JSON.
	Digest [32]byte `json:"-"`
	// Hint is the secret's first characters (APIKeyHintLen, for example
	// "phx_Ab3d"), to recognise a key without revealing it.
	Hint string `json:"hint,omitempty"`
	// Consumers are the consumer names a consumer key may act as; the
	// first is its default. Empty means the key's own Name. Only consumer
	// keys have consumers.
	Consumers []string `json:"consumers,omitempty"`
	// Pools are the pool names a consumer key may lease from; empty means
	// every pool.
	Pools []string `json:"pools,omitempty"`
	// CreatedAt is when the key was stored (stores stamp a zero one).
	CreatedAt time.Time `json:"created_at"`
	// ExpiresAt is when the key stops working; nil means never.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// RevokedAt is when the key was revoked; nil while it is not.
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	// LastUsedAt is the latest recorded use ([KeyStore.TouchAPIKeys]);
	// nil if never used.
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
}

// Validate checks a key as stores receive it: a valid name and role, a
// digest, valid consumer and pool names without duplicates, and consumers
// and pools only on a consumer key. Errors wrap [ErrInvalidArgument].
func (k *APIKey) Validate() error {
	if err := ValidateName("key name", k.Name); err != nil {
		return err
	}
	if k.Digest == ([32]byte{}) {
		return fmt.Errorf("%w: key %q has no secret digest", ErrInvalidArgument, k.Name)
	}
	if !k.Role.Valid() {
		return fmt.Errorf("%w: key %q: unknown role %q (want admin, consumer or viewer)", ErrInvalidArgument, k.Name, k.Role)
	}
	if len(k.Consumers) > 0 && k.Role != KeyRoleConsumer {
		return fmt.Errorf("%w: key %q: only consumer keys can be bound to consumers, this one is %s", ErrInvalidArgument, k.Name, k.Role)
	}
	if len(k.Pools) > 0 && k.Role != KeyRoleConsumer {
		return fmt.Errorf("%w: key %q: only consumer keys can be bound to pools, this one is %s", ErrInvalidArgument, k.Name, k.Role)
	}
	for i, c := range k.Consumers {
		if err := ValidateName("consumer name", c); err != nil {
			return fmt.Errorf("key %q: %w", k.Name, err)
		}
		if slices.Contains(k.Consumers[:i], c) {
			return fmt.Errorf("%w: key %q: consumer %q listed twice", ErrInvalidArgument, k.Name, c)
		}
	}
	for i, p := range k.Pools {
		if err := ValidateName("pool name", p); err != nil {
			return fmt.Errorf("key %q: %w", k.Name, err)
		}
		if slices.Contains(k.Pools[:i], p) {
			return fmt.Errorf("%w: key %q: pool %q listed twice", ErrInvalidArgument, k.Name, p)
		}
	}
	if len(k.Hint) > 64 {
		return fmt.Errorf("%w: key %q: hint longer than 64 bytes", ErrInvalidArgument, k.Name)
	}
	return nil
}

// Usable reports whether the key works at now: [ErrKeyRevoked] once
// revoked, [ErrKeyExpired] from ExpiresAt on, nil otherwise.
func (k *APIKey) Usable(now time.Time) error {
	if k.RevokedAt != nil {
		return fmt.Errorf("key %q: %w", k.Name, ErrKeyRevoked)
	}
	if k.ExpiresAt != nil && !now.Before(*k.ExpiresAt) {
		return fmt.Errorf("key %q: %w", k.Name, ErrKeyExpired)
	}
	return nil
}

// DefaultConsumer is the consumer a consumer key acquires as when the
// request names none: its first bound consumer, else its own name.
func (k *APIKey) DefaultConsumer() string {
	if len(k.Consumers) > 0 {
		return k.Consumers[0]
	}
	return k.Name
}

// MayUseConsumer reports whether the key may act as the named consumer.
// Admin keys may act as anyone and viewer keys as no one; a consumer key
// may act as its bound consumers, or, when bound to none, as the consumer
// named like the key.
func (k *APIKey) MayUseConsumer(name string) bool {
	switch k.Role {
	case KeyRoleAdmin:
		return true
	case KeyRoleConsumer:
		if len(k.Consumers) == 0 {
			return name == k.Name
		}
		return slices.Contains(k.Consumers, name)
	}
	return false
}

// MayUsePool reports whether the key may lease from the named pool. Admin
// keys may use every pool and viewer keys none; a consumer key may use its
// bound pools, or every pool when bound to none.
func (k *APIKey) MayUsePool(name string) bool {
	switch k.Role {
	case KeyRoleAdmin:
		return true
	case KeyRoleConsumer:
		return len(k.Pools) == 0 || slices.Contains(k.Pools, name)
	}
	return false
}

// Clone returns a deep copy of k, for stores that hand out copies.
func (k *APIKey) Clone() *APIKey {
	out := *k
	out.Consumers = slices.Clone(k.Consumers)
	out.Pools = slices.Clone(k.Pools)
	out.ExpiresAt = cloneTime(k.ExpiresAt)
	out.RevokedAt = cloneTime(k.RevokedAt)
	out.LastUsedAt = cloneTime(k.LastUsedAt)
	return &out
}

func cloneTime(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	c := *t
	return &c
}

// NewAPIKeySecret returns a fresh secret: [APIKeySecretPrefix] and the
// base64url (unpadded) encoding of 32 random bytes, 47 characters in all.
// Store only its [APIKeyDigest] and its first [APIKeyHintLen] characters.
func NewAPIKeySecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("pharox: new api key secret: %w", err)
	}
	return APIKeySecretPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// APIKeyDigest is the SHA-256 of secret, which is what stores keep. The
// secrets are random, so an unsalted fast hash is enough.
func APIKeyDigest(secret string) [32]byte {
	return sha256.Sum256([]byte(secret))
}

// APIKeyHint returns the first APIKeyHintLen characters of secret.
func APIKeyHint(secret string) string {
	if len(secret) <= APIKeyHintLen {
		return secret
	}
	return secret[:APIKeyHintLen]
}

// KeyStore keeps API keys and the audit log. Every store implements it.
// (It is not yet part of [Storage]; code type-asserts a store to it.)
type KeyStore interface {
	// CreateAPIKey stores a new key (validated with [APIKey.Validate]); a
	// zero ID gets a fresh one and a zero CreatedAt the store's now. A name
	// or digest already stored, even by a revoked key, is ErrAlreadyExists.
	CreateAPIKey(ctx context.Context, key APIKey) (*APIKey, error)
	// GetAPIKey returns the key by id (ErrKeyNotFound).
	GetAPIKey(ctx context.Context, id uuid.UUID) (*APIKey, error)
	// GetAPIKeyByName returns the key by name (ErrKeyNotFound).
	GetAPIKeyByName(ctx context.Context, name string) (*APIKey, error)
	// GetAPIKeyByDigest returns the key whatever its state (revoked and
	// expired too): callers check Usable. ErrKeyNotFound.
	GetAPIKeyByDigest(ctx context.Context, digest [32]byte) (*APIKey, error)
	// ListAPIKeys returns every key, revoked ones too, ordered by name.
	ListAPIKeys(ctx context.Context) ([]*APIKey, error)
	// RevokeAPIKey stamps RevokedAt once (revoking again returns the key
	// unchanged). ErrKeyNotFound.
	RevokeAPIKey(ctx context.Context, id uuid.UUID) (*APIKey, error)
	// RotateAPIKey replaces the digest and hint; the old secret stops
	// matching. ErrKeyNotFound; ErrKeyRevoked for a revoked key;
	// ErrAlreadyExists if another key has the digest.
	RotateAPIKey(ctx context.Context, id uuid.UUID, digest [32]byte, hint string) (*APIKey, error)
	// TouchAPIKeys sets LastUsedAt = max(stored, t) for each id; unknown
	// ids are ignored. One round trip per call (callers batch every few
	// seconds).
	TouchAPIKeys(ctx context.Context, used map[uuid.UUID]time.Time) error
	// AppendAudit stores e (validated with [AuditEntry.Validate]; a zero
	// At is the store's now). Appending an ID already stored does nothing.
	AppendAudit(ctx context.Context, e AuditEntry) error
	// ListAudit returns the entries matching q, newest first.
	ListAudit(ctx context.Context, q AuditQuery) ([]*AuditEntry, error)
	// PurgeAudit deletes entries older than before and returns how many.
	PurgeAudit(ctx context.Context, before time.Time) (int, error)
}

// LeaseVerdictStore makes "one ban or failure verdict per lease" hold
// across processes sharing a store. (It is not yet part of [LeaseStore];
// code type-asserts a store to it.)
type LeaseVerdictStore interface {
	// ClaimLeaseVerdict marks the lease's verdict as given and reports
	// whether this call was the first. ErrLeaseNotFound for an unknown
	// lease. It works on active and ended leases (within retention). A
	// claim retried by a driver after a lost answer may report false:
	// callers treat false as "already counted".
	ClaimLeaseVerdict(ctx context.Context, leaseID uuid.UUID) (bool, error)
}
