package memory

import (
	"cmp"
	"context"
	"crypto/subtle"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

var (
	_ pharox.KeyStore          = (*Store)(nil)
	_ pharox.LeaseVerdictStore = (*Store)(nil)
)

// keyTable holds the API keys and the audit log. Its zero value is ready;
// it is guarded by Store.mu.
type keyTable struct {
	byID     map[uuid.UUID]*pharox.APIKey
	byName   map[string]*pharox.APIKey
	byDigest map[[32]byte]*pharox.APIKey

	// audit is ordered by (At, seq): appends with a time older than the
	// last one are inserted in place.
	audit    []auditItem
	auditIDs map[uuid.UUID]struct{}
	auditSeq uint64
}

type auditItem struct {
	e   pharox.AuditEntry
	seq uint64
}

func (t *keyTable) init() {
	if t.byID == nil {
		t.byID = make(map[uuid.UUID]*pharox.APIKey)
		t.byName = make(map[string]*pharox.APIKey)
		t.byDigest = make(map[[32]byte]*pharox.APIKey)
		t.auditIDs = make(map[uuid.UUID]struct{})
	}
}

// micro is the store's time precision for key and audit times, the same
// as its lease times.
func micro(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func microPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	m := micro(*t)
	return &m
}

// CreateAPIKey stores a new key (see [pharox.KeyStore]).
func (s *Store) CreateAPIKey(ctx context.Context, key pharox.APIKey) (*pharox.APIKey, error) {
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("memory: create api key: %w", err)
	}
	now, err := s.lockNoReap(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: create api key: %w", err)
	}
	defer s.mu.Unlock()
	s.keys.init()
	k := key.Clone()
	if k.ID == uuid.Nil {
		k.ID = newID()
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = now
	}
	k.CreatedAt = micro(k.CreatedAt)
	k.ExpiresAt, k.RevokedAt, k.LastUsedAt = microPtr(k.ExpiresAt), microPtr(k.RevokedAt), microPtr(k.LastUsedAt)
	switch {
	case s.keys.byID[k.ID] != nil:
		return nil, fmt.Errorf("memory: create api key %q: id %s: %w", k.Name, k.ID, pharox.ErrAlreadyExists)
	case s.keys.byName[k.Name] != nil:
		return nil, fmt.Errorf("memory: create api key %q: name: %w", k.Name, pharox.ErrAlreadyExists)
	case s.keys.byDigest[k.Digest] != nil:
		return nil, fmt.Errorf("memory: create api key %q: secret: %w", k.Name, pharox.ErrAlreadyExists)
	}
	s.keys.byID[k.ID] = k
	s.keys.byName[k.Name] = k
	s.keys.byDigest[k.Digest] = k
	return k.Clone(), nil
}

// GetAPIKey returns the key by id (pharox.ErrKeyNotFound).
func (s *Store) GetAPIKey(ctx context.Context, id uuid.UUID) (*pharox.APIKey, error) {
	if _, err := s.lockNoReap(ctx); err != nil {
		return nil, fmt.Errorf("memory: get api key: %w", err)
	}
	defer s.mu.Unlock()
	k := s.keys.byID[id]
	if k == nil {
		return nil, fmt.Errorf("memory: get api key %s: %w", id, pharox.ErrKeyNotFound)
	}
	return k.Clone(), nil
}

// GetAPIKeyByName returns the key by name (pharox.ErrKeyNotFound).
func (s *Store) GetAPIKeyByName(ctx context.Context, name string) (*pharox.APIKey, error) {
	if _, err := s.lockNoReap(ctx); err != nil {
		return nil, fmt.Errorf("memory: get api key: %w", err)
	}
	defer s.mu.Unlock()
	k := s.keys.byName[name]
	if k == nil {
		return nil, fmt.Errorf("memory: get api key %q: %w", name, pharox.ErrKeyNotFound)
	}
	return k.Clone(), nil
}

// GetAPIKeyByDigest returns the key with this secret digest, whatever its
// state (pharox.ErrKeyNotFound).
func (s *Store) GetAPIKeyByDigest(ctx context.Context, digest [32]byte) (*pharox.APIKey, error) {
	if _, err := s.lockNoReap(ctx); err != nil {
		return nil, fmt.Errorf("memory: get api key by secret: %w", err)
	}
	defer s.mu.Unlock()
	k := s.keys.byDigest[digest]
	if k == nil || subtle.ConstantTimeCompare(k.Digest[:], digest[:]) != 1 {
		return nil, fmt.Errorf("memory: get api key by secret: %w", pharox.ErrKeyNotFound)
	}
	return k.Clone(), nil
}

// ListAPIKeys returns every key ordered by name.
func (s *Store) ListAPIKeys(ctx context.Context) ([]*pharox.APIKey, error) {
	if _, err := s.lockNoReap(ctx); err != nil {
		return nil, fmt.Errorf("memory: list api keys: %w", err)
	}
	out := make([]*pharox.APIKey, 0, len(s.keys.byID))
	for _, k := range s.keys.byID {
		out = append(out, k.Clone())
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b *pharox.APIKey) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// RevokeAPIKey stamps RevokedAt once (pharox.ErrKeyNotFound).
func (s *Store) RevokeAPIKey(ctx context.Context, id uuid.UUID) (*pharox.APIKey, error) {
	now, err := s.lockNoReap(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: revoke api key: %w", err)
	}
	defer s.mu.Unlock()
	k := s.keys.byID[id]
	if k == nil {
		return nil, fmt.Errorf("memory: revoke api key %s: %w", id, pharox.ErrKeyNotFound)
	}
	if k.RevokedAt == nil {
		k.RevokedAt = &now
	}
	return k.Clone(), nil
}

// RotateAPIKey replaces the key's digest and hint (see [pharox.KeyStore]).
func (s *Store) RotateAPIKey(ctx context.Context, id uuid.UUID, digest [32]byte, hint string) (*pharox.APIKey, error) {
	if digest == ([32]byte{}) {
		return nil, fmt.Errorf("memory: rotate api key %s: %w: no secret digest", id, pharox.ErrInvalidArgument)
	}
	if len(hint) > 64 {
		return nil, fmt.Errorf("memory: rotate api key %s: %w: hint longer than 64 bytes", id, pharox.ErrInvalidArgument)
	}
	if _, err := s.lockNoReap(ctx); err != nil {
		return nil, fmt.Errorf("memory: rotate api key: %w", err)
	}
	defer s.mu.Unlock()
	k := s.keys.byID[id]
	if k == nil {
		return nil, fmt.Errorf("memory: rotate api key %s: %w", id, pharox.ErrKeyNotFound)
	}
	if k.RevokedAt != nil {
		return nil, fmt.Errorf("memory: rotate api key %q: %w", k.Name, pharox.ErrKeyRevoked)
	}
	if other := s.keys.byDigest[digest]; other != nil {
		return nil, fmt.Errorf("memory: rotate api key %q: secret: %w", k.Name, pharox.ErrAlreadyExists)
	}
	delete(s.keys.byDigest, k.Digest)
	k.Digest, k.Hint = digest, hint
	s.keys.byDigest[digest] = k
	return k.Clone(), nil
}

// TouchAPIKeys sets LastUsedAt to the later of the stored time and the
// given one for every known id.
func (s *Store) TouchAPIKeys(ctx context.Context, used map[uuid.UUID]time.Time) error {
	if len(used) == 0 {
		return ctx.Err()
	}
	if _, err := s.lockNoReap(ctx); err != nil {
		return fmt.Errorf("memory: touch api keys: %w", err)
	}
	defer s.mu.Unlock()
	for id, t := range used {
		k := s.keys.byID[id]
		if k == nil {
			continue
		}
		t = micro(t)
		if k.LastUsedAt == nil || t.After(*k.LastUsedAt) {
			k.LastUsedAt = &t
		}
	}
	return nil
}

// AppendAudit stores e once per ID (see [pharox.KeyStore]).
func (s *Store) AppendAudit(ctx context.Context, e pharox.AuditEntry) error {
	if err := e.Validate(); err != nil {
		return fmt.Errorf("memory: append audit: %w", err)
	}
	now, err := s.lockNoReap(ctx)
	if err != nil {
		return fmt.Errorf("memory: append audit: %w", err)
	}
	defer s.mu.Unlock()
	s.keys.init()
	if e.ID == uuid.Nil {
		e.ID = newID()
	}
	if _, dup := s.keys.auditIDs[e.ID]; dup {
		return nil
	}
	if e.At.IsZero() {
		e.At = now
	}
	e.At = micro(e.At)
	s.keys.auditSeq++
	it := auditItem{e: e, seq: s.keys.auditSeq}
	// Entries stamped now append; only back-dated ones search.
	i := len(s.keys.audit)
	if i > 0 && e.At.Before(s.keys.audit[i-1].e.At) {
		i, _ = slices.BinarySearchFunc(s.keys.audit, e.At, func(a auditItem, t time.Time) int {
			if a.e.At.After(t) {
				return 1
			}
			return -1 // equal times stay before: later appends sort after
		})
	}
	s.keys.audit = slices.Insert(s.keys.audit, i, it)
	s.keys.auditIDs[e.ID] = struct{}{}
	return nil
}

// ListAudit returns the entries matching q, newest first; entries with
// the same time come latest-appended first.
func (s *Store) ListAudit(ctx context.Context, q pharox.AuditQuery) ([]*pharox.AuditEntry, error) {
	limit, err := q.EffectiveLimit()
	if err != nil {
		return nil, fmt.Errorf("memory: list audit: %w", err)
	}
	if _, err := s.lockNoReap(ctx); err != nil {
		return nil, fmt.Errorf("memory: list audit: %w", err)
	}
	defer s.mu.Unlock()
	end := len(s.keys.audit)
	if !q.Until.IsZero() {
		end, _ = slices.BinarySearchFunc(s.keys.audit, q.Until, func(a auditItem, t time.Time) int {
			if a.e.At.Before(t) {
				return -1
			}
			return 1
		})
	}
	var out []*pharox.AuditEntry
	for i := end - 1; i >= 0 && len(out) < limit; i-- {
		e := &s.keys.audit[i].e
		if !q.Since.IsZero() && e.At.Before(q.Since) {
			break
		}
		if q.Matches(e) {
			cp := *e
			out = append(out, &cp)
		}
	}
	return out, nil
}

// PurgeAudit deletes entries older than before and returns how many.
func (s *Store) PurgeAudit(ctx context.Context, before time.Time) (int, error) {
	if _, err := s.lockNoReap(ctx); err != nil {
		return 0, fmt.Errorf("memory: purge audit: %w", err)
	}
	defer s.mu.Unlock()
	n, _ := slices.BinarySearchFunc(s.keys.audit, before, func(a auditItem, t time.Time) int {
		if a.e.At.Before(t) {
			return -1
		}
		return 1
	})
	for _, it := range s.keys.audit[:n] {
		delete(s.keys.auditIDs, it.e.ID)
	}
	s.keys.audit = slices.Delete(s.keys.audit, 0, n)
	return n, nil
}

// ClaimLeaseVerdict marks the lease's verdict as given and reports whether
// this call was the first (pharox.ErrLeaseNotFound for a lease not held or
// retained).
func (s *Store) ClaimLeaseVerdict(ctx context.Context, leaseID uuid.UUID) (bool, error) {
	if _, err := s.lockNoReap(ctx); err != nil {
		return false, fmt.Errorf("memory: claim lease verdict: %w", err)
	}
	defer s.mu.Unlock()
	ls := s.lookup(leaseID)
	if ls == nil {
		return false, fmt.Errorf("memory: claim lease verdict %s: %w", leaseID, pharox.ErrLeaseNotFound)
	}
	first := !ls.verdict
	ls.verdict = true
	return first, nil
}
