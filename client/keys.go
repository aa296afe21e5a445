package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

// apiKeyContext carries a per-request API key.
type apiKeyContext struct{}

// ContextWithAPIKey returns a context whose requests send key instead of
// the client's own (WithAPIKey): one client can act for many keys, as the
// gateway does for its users.
func ContextWithAPIKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, apiKeyContext{}, key)
}

// keyFor is the API key a request under ctx sends.
func (cl *Client) keyFor(ctx context.Context) string {
	if k, ok := ctx.Value(apiKeyContext{}).(string); ok && k != "" {
		return k
	}
	return cl.apiKey
}

func keyPath(ref string) string { return "/v1/keys/" + url.PathEscape(ref) }

// CreateKey creates a stored API key (admin). The answer carries the
// secret, the only time it is shown. ErrAlreadyExists when the name is
// taken; ErrUnsupported when the server's store keeps no keys.
func (c *Client) CreateKey(ctx context.Context, req api.CreateKeyRequest) (*api.CreatedKey, error) {
	var out api.CreatedKey
	if _, err := c.do(ctx, call{method: http.MethodPost, path: "/v1/keys/", mode: retryUnsent, body: req, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListKeys returns every stored key ordered by name, without secrets.
func (c *Client) ListKeys(ctx context.Context) ([]*pharox.APIKey, error) {
	var out []api.APIKey
	if _, err := c.do(ctx, call{method: http.MethodGet, path: "/v1/keys/", out: &out}); err != nil {
		return nil, err
	}
	keys := make([]*pharox.APIKey, len(out))
	for i := range out {
		keys[i] = out[i].Model()
	}
	return keys, nil
}

// GetKey returns a stored key by id or name (pharox.ErrKeyNotFound).
func (c *Client) GetKey(ctx context.Context, ref string) (*pharox.APIKey, error) {
	var out api.APIKey
	if _, err := c.do(ctx, call{method: http.MethodGet, path: keyPath(ref), out: &out, notFound: pharox.ErrKeyNotFound}); err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// RotateKey gives a stored key (by id or name) a new secret, returned once;
// the old one stops working. pharox.ErrKeyRevoked for a revoked key.
func (c *Client) RotateKey(ctx context.Context, ref string) (*api.CreatedKey, error) {
	var out api.CreatedKey
	if _, err := c.do(ctx, call{method: http.MethodPost, path: keyPath(ref) + "/rotate", mode: retryUnsent,
		out: &out, notFound: pharox.ErrKeyNotFound}); err != nil {
		return nil, err
	}
	return &out, nil
}

// RevokeKey revokes a stored key (by id or name) and returns it. Revoking
// again changes nothing, so it is retried.
func (c *Client) RevokeKey(ctx context.Context, ref string) (*pharox.APIKey, error) {
	var out api.APIKey
	if _, err := c.do(ctx, call{method: http.MethodDelete, path: keyPath(ref), out: &out, notFound: pharox.ErrKeyNotFound}); err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// Self describes the key the request sends: name, role and scopes.
// ErrUnauthorized for a key the server does not accept.
func (c *Client) Self(ctx context.Context) (*api.KeySelf, error) {
	var out api.KeySelf
	if _, err := c.do(ctx, call{method: http.MethodGet, path: "/v1/keys/self", out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListAudit returns recorded admin actions matching q, newest first.
func (c *Client) ListAudit(ctx context.Context, q pharox.AuditQuery) ([]*pharox.AuditEntry, error) {
	v := url.Values{}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.UTC().Format(time.RFC3339Nano))
	}
	if q.Actor != "" {
		v.Set("actor", q.Actor)
	}
	if q.Action != "" {
		v.Set("action", q.Action)
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var out []api.AuditEntry
	if _, err := c.do(ctx, call{method: http.MethodGet, path: "/v1/audit/", query: v, out: &out}); err != nil {
		return nil, err
	}
	entries := make([]*pharox.AuditEntry, len(out))
	for i := range out {
		entries[i] = out[i].Model()
	}
	return entries, nil
}
