package server

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

// maxKeyLifetime bounds expires_in_seconds: ten years.
const maxKeyLifetime = 10 * 365 * 24 * time.Hour

// keyStore returns the store's key store, or 501 when it keeps no keys.
func (s *Server) keyStore() (pharox.KeyStore, error) {
	ks := s.auth.KeyStore()
	if ks == nil {
		return nil, &httpError{http.StatusNotImplemented,
			"This server's store does not keep API keys: only the keys from its configuration work"}
	}
	return ks, nil
}

// keyRef finds the key named by the path: by id, or else by name.
func (s *Server) keyRef(r *http.Request) (pharox.KeyStore, *pharox.APIKey, error) {
	ks, err := s.keyStore()
	if err != nil {
		return nil, nil, err
	}
	ref := r.PathValue("key_id")
	if id, perr := uuid.Parse(ref); perr == nil {
		k, err := ks.GetAPIKey(r.Context(), id)
		if err == nil || !errors.Is(err, pharox.ErrKeyNotFound) {
			return ks, k, err
		}
	}
	k, err := ks.GetAPIKeyByName(r.Context(), ref)
	if errors.Is(err, pharox.ErrKeyNotFound) {
		return nil, nil, withDetail(err, "No API key has id or name %q", truncate(ref, 64))
	}
	return ks, k, err
}

func (s *Server) createKey(r *http.Request) (any, error) {
	ks, err := s.keyStore()
	if err != nil {
		return nil, err
	}
	var req api.CreateKeyRequest
	if err := decodeBody(r, &req, false); err != nil {
		return nil, err
	}
	role := pharox.KeyRole(strings.ToLower(strings.TrimSpace(req.Role)))
	if req.Role == "" {
		return nil, unprocessable("role is required (admin, consumer or viewer)")
	}
	if !role.Valid() {
		return nil, unprocessable("role must be admin, consumer or viewer, got %q", truncate(req.Role, 32))
	}
	k := pharox.APIKey{Name: strings.TrimSpace(req.Name), Role: role, Consumers: req.Consumers, Pools: req.Pools}
	now := time.Now()
	switch {
	case req.ExpiresInSeconds != nil && req.ExpiresAt != nil:
		return nil, unprocessable("give expires_in_seconds or expires_at, not both")
	case req.ExpiresInSeconds != nil:
		v := *req.ExpiresInSeconds
		if math.IsNaN(v) || v <= 0 || v > maxKeyLifetime.Seconds() {
			return nil, unprocessable("expires_in_seconds must be a positive number of seconds up to %v, got %v", maxKeyLifetime.Seconds(), v)
		}
		t := now.Add(time.Duration(v * float64(time.Second)))
		k.ExpiresAt = &t
	case req.ExpiresAt != nil:
		if !req.ExpiresAt.After(now) {
			return nil, unprocessable("expires_at %s is not in the future", req.ExpiresAt.UTC().Format(time.RFC3339))
		}
		t := req.ExpiresAt.Time
		k.ExpiresAt = &t
	}
	secret, err := pharox.NewAPIKeySecret()
	if err != nil {
		return nil, err
	}
	k.Digest, k.Hint = pharox.APIKeyDigest(secret), pharox.APIKeyHint(secret)
	if err := k.Validate(); err != nil {
		return nil, err
	}
	created, err := ks.CreateAPIKey(r.Context(), k)
	if errors.Is(err, pharox.ErrAlreadyExists) {
		return nil, withDetail(err, "An API key named %q already exists (revoked keys keep their names)", k.Name)
	}
	if err != nil {
		return nil, err
	}
	detail := fmt.Sprintf("created %s key %q", created.Role, created.Name)
	if len(created.Consumers) > 0 {
		detail += " for consumers " + strings.Join(created.Consumers, ", ")
	}
	if len(created.Pools) > 0 {
		detail += " on pools " + strings.Join(created.Pools, ", ")
	}
	s.audit(r, "key.create", "key", created.ID.String(), detail)
	return api.CreatedKey{APIKey: api.FromAPIKey(created), Secret: secret}, nil
}

func (s *Server) listKeys(r *http.Request) (any, error) {
	ks, err := s.keyStore()
	if err != nil {
		return nil, err
	}
	keys, err := ks.ListAPIKeys(r.Context())
	if err != nil {
		return nil, err
	}
	out := make([]api.APIKey, len(keys))
	for i, k := range keys {
		out[i] = api.FromAPIKey(k)
	}
	return out, nil
}

func (s *Server) getKey(r *http.Request) (any, error) {
	_, k, err := s.keyRef(r)
	if err != nil {
		return nil, err
	}
	return api.FromAPIKey(k), nil
}

func (s *Server) rotateKey(r *http.Request) (any, error) {
	ks, k, err := s.keyRef(r)
	if err != nil {
		return nil, err
	}
	var body struct{}
	if err := decodeBody(r, &body, true); err != nil {
		return nil, err
	}
	secret, err := pharox.NewAPIKeySecret()
	if err != nil {
		return nil, err
	}
	rotated, err := ks.RotateAPIKey(r.Context(), k.ID, pharox.APIKeyDigest(secret), pharox.APIKeyHint(secret))
	if errors.Is(err, pharox.ErrKeyRevoked) {
		return nil, withDetail(err, "API key %q is revoked: create a new one instead", k.Name)
	}
	if err != nil {
		return nil, err
	}
	s.auth.Forget()
	s.audit(r, "key.rotate", "key", k.ID.String(), fmt.Sprintf("rotated key %q", k.Name))
	return api.CreatedKey{APIKey: api.FromAPIKey(rotated), Secret: secret}, nil
}

func (s *Server) revokeKey(r *http.Request) (any, error) {
	ks, k, err := s.keyRef(r)
	if err != nil {
		return nil, err
	}
	revoked, err := ks.RevokeAPIKey(r.Context(), k.ID)
	if err != nil {
		return nil, err
	}
	s.auth.Forget()
	if k.RevokedAt == nil {
		s.audit(r, "key.revoke", "key", k.ID.String(), fmt.Sprintf("revoked key %q", k.Name))
	}
	return api.FromAPIKey(revoked), nil
}

func (s *Server) keySelf(r *http.Request) (any, error) {
	c := callerOf(r)
	id := c.id
	out := api.KeySelf{Name: id.Name, Role: string(id.Role), Bootstrap: id.Bootstrap(), Scoped: id.Scoped(),
		Consumers: id.Consumers, Pools: id.Pools, ExpiresAt: api.TimePtr(id.ExpiresAt),
		ManagesKeys: s.auth.KeyStore() != nil}
	if !id.Bootstrap() {
		kid := id.KeyID
		out.ID = &kid
	}
	if out.Consumers == nil {
		out.Consumers = []string{}
	}
	if out.Pools == nil {
		out.Pools = []string{}
	}
	return out, nil
}

func (s *Server) listAudit(r *http.Request) (any, error) {
	ks, err := s.keyStore()
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	var aq pharox.AuditQuery
	for _, f := range []struct {
		name string
		dst  *time.Time
	}{{"since", &aq.Since}, {"until", &aq.Until}} {
		if v := q.Get(f.name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return nil, unprocessable("query parameter %s must be an RFC 3339 timestamp like 2026-01-02T15:04:05Z, got %q", f.name, truncate(v, 64))
			}
			*f.dst = t
		}
	}
	aq.Actor, aq.Action = q.Get("actor"), q.Get("action")
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > pharox.MaxAuditLimit {
			return nil, unprocessable("query parameter limit must be an integer from 1 to %d, got %q", pharox.MaxAuditLimit, truncate(v, 32))
		}
		aq.Limit = n
	}
	entries, err := ks.ListAudit(r.Context(), aq)
	if err != nil {
		return nil, err
	}
	out := make([]api.AuditEntry, len(entries))
	for i, e := range entries {
		out[i] = api.FromAuditEntry(e)
	}
	return out, nil
}
