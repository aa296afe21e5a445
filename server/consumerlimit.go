package server

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"sync"

	"github.com/pharox/pharox"
)

// keyConsumers holds, per bootstrap consumer key (by its SHA-256 digest,
// never the key), the consumer names that key has used in this process. A consumer is
// created on first use, and may label metrics, so the names a key may use
// are bounded (Options.MaxConsumersPerKey). Each process keeps its own
// count: behind N processes sharing a store a key may use up to N times the
// limit.
type keyConsumers struct {
	keys sync.Map // [sha256.Size]byte -> *usedNames
}

// usedNames is one key's consumer names. Reads of a known name take no
// lock: that is every acquisition after a key's first with a name.
type usedNames struct {
	names sync.Map // string -> struct{}
	mu    sync.Mutex
	n     int
}

// allowConsumer checks that the request's key may use the consumer name
// (empty means the default consumer) and records it. Admin keys, scoped
// keys (bound to their consumers), servers without auth and invalid names
// (which the Manager refuses with its own sentence) are not counted.
func (s *Server) allowConsumer(r *http.Request, name string) error {
	limit := s.opts.MaxConsumersPerKey
	if limit < 0 || s.opts.DisableAuth {
		return nil
	}
	if name == "" {
		name = pharox.DefaultConsumerName
	}
	if pharox.ValidateName("consumer name", name) != nil {
		return nil
	}
	if c := callerOf(r); c == nil || c.role == RoleAdmin || c.scoped() {
		// Scoped keys are bounded by the consumers they are bound to.
		return nil
	}
	digest := sha256.Sum256([]byte(r.Header.Get(APIKeyHeader)))
	v, ok := s.keyConsumers.keys.Load(digest)
	if !ok {
		v, _ = s.keyConsumers.keys.LoadOrStore(digest, &usedNames{})
	}
	u := v.(*usedNames)
	if _, ok := u.names.Load(name); ok {
		return nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.names.Load(name); ok {
		return nil
	}
	if u.n >= limit {
		return &httpError{http.StatusForbidden, fmt.Sprintf(
			"Consumer %q refused: this API key already uses %d consumer names, the most this server allows per key "+
				"(pharox serve --max-consumers-per-key); acquire as one of them", truncate(name, 64), u.n)}
	}
	u.names.Store(name, struct{}{})
	u.n++
	return nil
}
