package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/keyauth"
)

// Role is what an API key may do.
type Role int

// Roles, from least to most privileged. A route needs a minimum role;
// viewers pass every GET route but the admin-only ones (keys, audit).
const (
	// RolePublic routes need no key: liveness, readiness and the OpenAPI
	// document (and metrics when Options.MetricsPublic).
	RolePublic Role = iota
	// RoleViewer may read everything an admin reads (every GET but keys
	// and the audit log, proxies without their passwords) and nothing
	// that writes: for dashboards.
	RoleViewer
	// RoleConsumer may ensure consumers, acquire leases, read, renew and
	// release them, report outcomes, and read pools and their stats. A
	// stored consumer key does so only as its consumers and on their
	// leases, from its pools, and reads its consumers' usage and quotas.
	RoleConsumer
	// RoleAdmin may do everything.
	RoleAdmin
)

// String names the role.
func (r Role) String() string {
	switch r {
	case RolePublic:
		return "public"
	case RoleViewer:
		return "viewer"
	case RoleConsumer:
		return "consumer"
	case RoleAdmin:
		return "admin"
	}
	return "unknown"
}

func roleOf(kr pharox.KeyRole) Role {
	switch kr {
	case pharox.KeyRoleAdmin:
		return RoleAdmin
	case pharox.KeyRoleConsumer:
		return RoleConsumer
	case pharox.KeyRoleViewer:
		return RoleViewer
	}
	return RolePublic
}

// APIKeyHeader carries the API key on every request.
const APIKeyHeader = "X-API-Key"

// caller is who sent a request: the key's identity, or nil on public
// routes.
type caller struct {
	role Role
	id   *keyauth.Identity
}

// actor names the caller in the audit log.
func (c *caller) actor() string {
	if c == nil || c.id == nil {
		return "anonymous"
	}
	return c.id.Name
}

// scoped reports whether the caller acts only as its consumers.
func (c *caller) scoped() bool { return c != nil && c.id != nil && c.id.Scoped() }

type callerKey struct{}

// callerOf returns the caller of an authorized request (nil on public
// routes).
func callerOf(r *http.Request) *caller {
	c, _ := r.Context().Value(callerKey{}).(*caller)
	return c
}

// authDisabled is the caller of every request when Options.DisableAuth.
var authDisabled = &caller{role: RoleAdmin, id: &keyauth.Identity{Name: "auth-disabled", Role: pharox.KeyRoleAdmin}}

// authorize checks the request's key against the route.
func (s *Server) authorize(r *http.Request, rt *route, need Role) (*caller, error) {
	if need == RolePublic {
		return nil, nil
	}
	if s.opts.DisableAuth {
		return authDisabled, nil
	}
	key := r.Header.Get(APIKeyHeader)
	if key == "" {
		return nil, &httpError{http.StatusUnauthorized, "Missing API key: send it in the " + APIKeyHeader + " header"}
	}
	id, err := s.auth.Authenticate(r.Context(), key)
	if err != nil {
		return nil, keyError(err)
	}
	c := &caller{role: roleOf(id.Role), id: id}
	if c.role >= need {
		return c, nil
	}
	if c.role == RoleViewer && r.Method == http.MethodGet && !rt.AdminOnly {
		return c, nil
	}
	return c, &httpError{http.StatusForbidden, fmt.Sprintf("This API key (%s) has the %s role; this operation needs %s",
		id.Name, c.role, needs(rt, need))}
}

// needs says which roles a route accepts.
func needs(rt *route, need Role) string {
	if need == RoleAdmin {
		return "admin"
	}
	return need.String() + " or admin"
}

// keyError turns a failed key check into the client's answer: 401 with
// one sentence for keys that do not pass, the store's error otherwise.
func keyError(err error) error {
	switch {
	case errors.Is(err, keyauth.ErrUnknownKey):
		return &httpError{http.StatusUnauthorized, "Invalid API key"}
	case errors.Is(err, pharox.ErrKeyRevoked):
		return &httpError{http.StatusUnauthorized, "This API key was revoked: ask an admin for a new one"}
	case errors.Is(err, pharox.ErrKeyExpired):
		return &httpError{http.StatusUnauthorized, "This API key has expired: ask an admin for a new one"}
	}
	return err
}

// withCaller stores the caller in the request's context.
func withCaller(r *http.Request, c *caller) *http.Request {
	if c == nil {
		return r
	}
	return r.WithContext(context.WithValue(r.Context(), callerKey{}, c))
}

// quoteList renders names as "a", "b" and "c" for a sentence.
func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	switch len(q) {
	case 0:
		return ""
	case 1:
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// checkConsumer answers 403 when a scoped caller may not act as the
// consumer.
func (c *caller) checkConsumer(name string) error {
	if !c.scoped() || c.id.MayUseConsumer(name) {
		return nil
	}
	return &httpError{http.StatusForbidden, fmt.Sprintf("This API key (%s) may act only as consumer %s, not %q",
		c.id.Name, quoteList(c.id.Consumers), truncate(name, 64))}
}

// checkPool answers 403 when the caller may not lease from the pool.
func (c *caller) checkPool(name string) error {
	if c == nil || c.id == nil || c.id.MayUsePool(name) {
		return nil
	}
	return &httpError{http.StatusForbidden, fmt.Sprintf("This API key (%s) may lease only from pool %s, not %q",
		c.id.Name, quoteList(c.id.Pools), truncate(name, 64))}
}

// seesPool reports whether the caller may see the pool: scoped keys see
// only their pools.
func (c *caller) seesPool(name string) bool {
	return !c.scoped() || c.id.MayUsePool(name)
}

// ownsLease reports whether the caller may act on a lease of this
// consumer: scoped keys only on their consumers' leases.
func (c *caller) ownsLease(consumer string) bool {
	return !c.scoped() || c.id.MayUseConsumer(consumer)
}
