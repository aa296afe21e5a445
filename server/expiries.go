package server

import (
	"sync"
	"time"

	"github.com/google/uuid"
)

// expiryMargin is how far before its known expiry a lease must be for a
// release to skip reading it first: it absorbs the difference between
// this process's clock and the store's.
const expiryMargin = time.Second

// maxExpiryHints bounds the expiries kept: past it, releases of further
// leases take the path that reads the lease first, which is correct, only
// one round trip slower.
const maxExpiryHints = 1 << 16

// expiryHints remembers when the leases this server handed out or renewed
// expire, so that releasing one well before then is a single store round
// trip. A hint can only be early, never late: expiries only move forward
// (a renewal through another server makes the lease live longer than its
// hint says). Entries go when their lease is released here, and the reaper
// drops the ones past their expiry.
type expiryHints struct {
	mu sync.Mutex
	m  map[uuid.UUID]time.Time
}

// note records that lease id expires at t.
func (h *expiryHints) note(id uuid.UUID, t time.Time) {
	h.mu.Lock()
	if h.m == nil {
		h.m = make(map[uuid.UUID]time.Time)
	}
	if _, ok := h.m[id]; ok || len(h.m) < maxExpiryHints {
		h.m[id] = t
	}
	h.mu.Unlock()
}

// farFromExpiry forgets lease id's hint and says whether it put the
// lease's expiry more than expiryMargin after now.
func (h *expiryHints) farFromExpiry(id uuid.UUID, now time.Time) bool {
	h.mu.Lock()
	t, ok := h.m[id]
	if ok {
		delete(h.m, id)
	}
	h.mu.Unlock()
	return ok && t.Sub(now) > expiryMargin
}

// prune drops the hints of leases past their expiry.
func (h *expiryHints) prune(now time.Time) {
	h.mu.Lock()
	for id, t := range h.m {
		if t.Before(now) {
			delete(h.m, id)
		}
	}
	h.mu.Unlock()
}
