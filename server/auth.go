package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
)

// Role is what an API key may do.
type Role int

// Roles, from least to most privileged. A route needs a minimum role.
const (
	// RolePublic routes need no key: liveness, readiness and the OpenAPI
	// document (and metrics when Options.MetricsPublic).
	RolePublic Role = iota
	// RoleConsumer may ensure consumers, acquire leases, read, renew and
	// release them, report outcomes, and read pools and their stats.
	RoleConsumer
	// RoleAdmin may do everything.
	RoleAdmin
)

// String names the role.
func (r Role) String() string {
	switch r {
	case RolePublic:
		return "public"
	case RoleConsumer:
		return "consumer"
	case RoleAdmin:
		return "admin"
	}
	return "unknown"
}

// APIKeyHeader carries the API key on every request.
const APIKeyHeader = "X-API-Key"

// keyring holds SHA-256 digests of the configured keys, never the keys.
// Comparing fixed-size digests in constant time leaks neither the key's
// content nor its length through timing.
type keyring struct {
	admin    [][sha256.Size]byte
	consumer [][sha256.Size]byte
}

func newKeyring(admin, consumer []string) *keyring {
	k := &keyring{}
	for _, key := range admin {
		if key != "" {
			k.admin = append(k.admin, sha256.Sum256([]byte(key)))
		}
	}
	for _, key := range consumer {
		if key != "" {
			k.consumer = append(k.consumer, sha256.Sum256([]byte(key)))
		}
	}
	return k
}

func (k *keyring) empty() bool { return len(k.admin) == 0 && len(k.consumer) == 0 }

// role returns the role of key, or RolePublic when it matches none. Every
// configured digest is compared, so the time taken does not depend on
// which one matched.
func (k *keyring) role(key string) Role {
	d := sha256.Sum256([]byte(key))
	var admin, consumer int
	for i := range k.admin {
		admin |= subtle.ConstantTimeCompare(d[:], k.admin[i][:])
	}
	for i := range k.consumer {
		consumer |= subtle.ConstantTimeCompare(d[:], k.consumer[i][:])
	}
	switch {
	case admin == 1:
		return RoleAdmin
	case consumer == 1:
		return RoleConsumer
	}
	return RolePublic
}

// authorize checks the request's key against the route's role.
func (s *Server) authorize(r *http.Request, need Role) (Role, error) {
	if need == RolePublic {
		return RolePublic, nil
	}
	if s.opts.DisableAuth {
		return RoleAdmin, nil
	}
	key := r.Header.Get(APIKeyHeader)
	if key == "" {
		return RolePublic, &httpError{http.StatusUnauthorized, "Missing API key: send it in the " + APIKeyHeader + " header"}
	}
	got := s.keys.role(key)
	if got == RolePublic {
		return RolePublic, &httpError{http.StatusUnauthorized, "Invalid API key"}
	}
	if got < need {
		return got, &httpError{http.StatusForbidden, "This API key has the " + got.String() + " role; this operation needs " + need.String()}
	}
	return got, nil
}
