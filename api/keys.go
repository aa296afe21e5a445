package api

import (
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// APIKey is a stored API key on the wire: never its secret or digest, only
// the hint (the secret's first characters) to recognise it.
type APIKey struct {
	ID   uuid.UUID `json:"id"`
	Name string    `json:"name"`
	// Role is admin, consumer or viewer.
	Role string `json:"role"`
	Hint string `json:"hint"`
	// Consumers are the consumer names a consumer key acts as (the first
	// by default); Pools the pool names it may lease from (empty: every
	// pool).
	Consumers  []string `json:"consumers"`
	Pools      []string `json:"pools"`
	CreatedAt  Time     `json:"created_at"`
	ExpiresAt  *Time    `json:"expires_at"`
	RevokedAt  *Time    `json:"revoked_at"`
	LastUsedAt *Time    `json:"last_used_at"`
}

// FromAPIKey converts a stored key.
func FromAPIKey(k *pharox.APIKey) APIKey {
	out := APIKey{ID: k.ID, Name: k.Name, Role: string(k.Role), Hint: k.Hint,
		Consumers: k.Consumers, Pools: k.Pools, CreatedAt: NewTime(k.CreatedAt),
		ExpiresAt: TimePtr(k.ExpiresAt), RevokedAt: TimePtr(k.RevokedAt), LastUsedAt: TimePtr(k.LastUsedAt)}
	if out.Consumers == nil {
		out.Consumers = []string{}
	}
	if out.Pools == nil {
		out.Pools = []string{}
	}
	return out
}

// Model converts back to the root package's type (without a digest).
func (k *APIKey) Model() *pharox.APIKey {
	return &pharox.APIKey{ID: k.ID, Name: k.Name, Role: pharox.KeyRole(k.Role), Hint: k.Hint,
		Consumers: k.Consumers, Pools: k.Pools, CreatedAt: k.CreatedAt.Time,
		ExpiresAt: fromTime(k.ExpiresAt), RevokedAt: fromTime(k.RevokedAt), LastUsedAt: fromTime(k.LastUsedAt)}
}

// CreateKeyRequest is the body of POST /v1/keys/.
type CreateKeyRequest struct {
	Name string `json:"name"`
	// Role is admin, consumer or viewer.
	Role string `json:"role"`
	// Consumers binds a consumer key to consumer names (the first is its
	// default); without any it acts as a consumer named like the key.
	Consumers []string `json:"consumers,omitempty"`
	// Pools limits a consumer key to these pools (by name).
	Pools []string `json:"pools,omitempty"`
	// ExpiresInSeconds or ExpiresAt (not both) make the key expire.
	ExpiresInSeconds *float64 `json:"expires_in_seconds,omitempty"`
	ExpiresAt        *Time    `json:"expires_at,omitempty"`
}

// CreatedKey answers a key's creation or rotation: the only answers that
// carry the secret.
type CreatedKey struct {
	APIKey
	// Secret is the key to send in X-API-Key. It is shown once: the
	// server keeps only its digest.
	Secret string `json:"secret"`
}

// KeySelf answers GET /v1/keys/self: who the request's key is.
type KeySelf struct {
	// Name is the key's name, "bootstrap" for keys from the server's
	// configuration.
	Name string `json:"name"`
	Role string `json:"role"`
	// ID is the stored key's id; absent for bootstrap keys.
	ID *uuid.UUID `json:"id,omitempty"`
	// Bootstrap is true for keys from the server's configuration.
	Bootstrap bool `json:"bootstrap"`
	// Scoped is true for a key that acts only as its Consumers, on their
	// leases, from its Pools (empty Pools: every pool).
	Scoped    bool     `json:"scoped"`
	Consumers []string `json:"consumers"`
	Pools     []string `json:"pools"`
	ExpiresAt *Time    `json:"expires_at"`
	// ManagesKeys is true when the server keeps keys in its store (keys
	// can be created and revoked through the API).
	ManagesKeys bool `json:"manages_keys"`
}

// AuditEntry is one recorded admin action.
type AuditEntry struct {
	ID         uuid.UUID `json:"id"`
	At         Time      `json:"at"`
	Actor      string    `json:"actor"`
	Action     string    `json:"action"`
	TargetKind string    `json:"target_kind"`
	TargetID   string    `json:"target_id"`
	Detail     string    `json:"detail"`
}

// FromAuditEntry converts a stored entry.
func FromAuditEntry(e *pharox.AuditEntry) AuditEntry {
	return AuditEntry{ID: e.ID, At: NewTime(e.At), Actor: e.Actor, Action: e.Action,
		TargetKind: e.TargetKind, TargetID: e.TargetID, Detail: e.Detail}
}

// Model converts back to the root package's type.
func (e *AuditEntry) Model() *pharox.AuditEntry {
	return &pharox.AuditEntry{ID: e.ID, At: e.At.Time, Actor: e.Actor, Action: e.Action,
		TargetKind: e.TargetKind, TargetID: e.TargetID, Detail: e.Detail}
}

// ExpiresIn is a convenience for CreateKeyRequest.ExpiresInSeconds.
func ExpiresIn(d time.Duration) *float64 {
	s := d.Seconds()
	return &s
}
