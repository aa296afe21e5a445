package pharox

import (
	"fmt"
	"time"

	"github.com/google/uuid"
)

// AuditEntry records one admin action.
type AuditEntry struct {
	// ID is chosen by the caller; appending the same ID twice stores one
	// entry, so a retried append is harmless. Stores give a zero ID a
	// fresh one (and such an append is then not idempotent).
	ID uuid.UUID `json:"id"`
	// At is when the action happened; stores stamp a zero one.
	At time.Time `json:"at"`
	// Actor is the key name that acted ("bootstrap" for keys from flags,
	// environment or configuration).
	Actor string `json:"actor"`
	// Action names what was done, for example "pool.create",
	// "pool.delete", "proxy.add", "proxy.update", "proxy.delete",
	// "proxy.status", "key.create", "key.revoke", "key.rotate" or
	// "lease.release" (on behalf of another consumer).
	Action string `json:"action"`
	// TargetKind is what was acted on: "pool", "proxy", "key", "lease".
	TargetKind string `json:"target_kind,omitempty"`
	// TargetID identifies the target (an id or a name).
	TargetID string `json:"target_id,omitempty"`
	// Detail is a short human sentence; never a secret.
	Detail string `json:"detail,omitempty"`
}

// Audit log limits.
const (
	// DefaultAuditLimit is how many entries ListAudit returns when the
	// query sets no Limit.
	DefaultAuditLimit = 100
	// MaxAuditLimit is the most entries one ListAudit returns.
	MaxAuditLimit = 1000
	// MaxAuditDetail is the longest Detail, in bytes.
	MaxAuditDetail = 1000
)

// Validate checks an entry as stores receive it: an actor and an action,
// and short fields. Errors wrap [ErrInvalidArgument].
func (e *AuditEntry) Validate() error {
	if err := ValidateName("audit actor", e.Actor); err != nil {
		return err
	}
	if err := ValidateName("audit action", e.Action); err != nil {
		return err
	}
	if len(e.TargetKind) > 200 || len(e.TargetID) > 200 {
		return fmt.Errorf("%w: audit target longer than 200 bytes", ErrInvalidArgument)
	}
	if len(e.Detail) > MaxAuditDetail {
		return fmt.Errorf("%w: audit detail longer than %d bytes", ErrInvalidArgument, MaxAuditDetail)
	}
	return nil
}

// AuditQuery selects entries for [KeyStore.ListAudit]. Zero fields do not
// filter.
type AuditQuery struct {
	// Since and Until bound At: Since <= At < Until. Zero is open.
	Since, Until time.Time
	// Actor and Action match exactly; "" matches any.
	Actor, Action string
	// Limit caps the entries returned: 0 means DefaultAuditLimit, and it
	// is at most MaxAuditLimit.
	Limit int
}

// EffectiveLimit is the number of entries a store returns at most for q:
// DefaultAuditLimit for 0, MaxAuditLimit at most. A negative limit is an
// error wrapping [ErrInvalidArgument].
func (q *AuditQuery) EffectiveLimit() (int, error) {
	switch {
	case q.Limit < 0:
		return 0, fmt.Errorf("%w: negative audit limit %d", ErrInvalidArgument, q.Limit)
	case q.Limit == 0:
		return DefaultAuditLimit, nil
	default:
		return min(q.Limit, MaxAuditLimit), nil
	}
}

// Matches reports whether e passes q's filters (not its limit): the
// reference rule every store's ListAudit follows.
func (q *AuditQuery) Matches(e *AuditEntry) bool {
	if !q.Since.IsZero() && e.At.Before(q.Since) {
		return false
	}
	if !q.Until.IsZero() && !e.At.Before(q.Until) {
		return false
	}
	if q.Actor != "" && e.Actor != q.Actor {
		return false
	}
	return q.Action == "" || e.Action == q.Action
}
