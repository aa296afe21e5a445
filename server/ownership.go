package server

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// maxOwners bounds the lease owners remembered: past it, checks of further
// leases read the lease from the store, which is correct, one round trip
// slower.
const maxOwners = 1 << 16

// leaseOwners remembers the consumer of the leases this server handed out,
// so that checking a scoped key's renewal, release or outcome against the
// lease's consumer costs no store read. A lease never changes consumer, so
// an entry cannot go stale; entries go when the lease is released here.
type leaseOwners struct {
	mu sync.Mutex
	m  map[uuid.UUID]string
}

func (o *leaseOwners) note(id uuid.UUID, consumer string) {
	o.mu.Lock()
	if o.m == nil {
		o.m = make(map[uuid.UUID]string)
	}
	if len(o.m) < maxOwners {
		o.m[id] = consumer
	}
	o.mu.Unlock()
}

func (o *leaseOwners) get(id uuid.UUID) (string, bool) {
	o.mu.Lock()
	c, ok := o.m[id]
	o.mu.Unlock()
	return c, ok
}

func (o *leaseOwners) forget(id uuid.UUID) {
	o.mu.Lock()
	delete(o.m, id)
	o.mu.Unlock()
}

// notOwned is the answer to a scoped key naming a lease of another
// consumer: the same 404 as for a lease that does not exist, so that ids
// cannot be probed.
func notOwned(id uuid.UUID) error {
	return fmt.Errorf("lease %s belongs to a consumer outside the key's: %w", id, pharox.ErrLeaseNotFound)
}

// checkOwner answers 404 when a scoped caller names a lease that is not
// one of its consumers'. Other callers pass without a store read.
func (s *Server) checkOwner(ctx context.Context, c *caller, id uuid.UUID) error {
	if !c.scoped() {
		return nil
	}
	consumer, ok := s.owners.get(id)
	if !ok {
		l, err := s.store.GetLease(ctx, id)
		if err != nil {
			return err
		}
		consumer = l.ConsumerName
	}
	if !c.ownsLease(consumer) {
		return notOwned(id)
	}
	return nil
}

// listLeasesOf lists leases; a scoped caller sees only its consumers'.
func (s *Server) listLeasesOf(ctx context.Context, c *caller, q pharox.LeaseQuery) ([]*pharox.Lease, error) {
	if !c.scoped() {
		return s.store.ListLeases(ctx, q)
	}
	consumers, err := s.store.ListConsumers(ctx)
	if err != nil {
		return nil, err
	}
	var out []*pharox.Lease
	for _, cons := range consumers {
		if !c.ownsLease(cons.Name) || (q.ConsumerID != uuid.Nil && q.ConsumerID != cons.ID) {
			continue
		}
		cq := q
		cq.ConsumerID = cons.ID
		leases, err := s.store.ListLeases(ctx, cq)
		if err != nil {
			return nil, err
		}
		out = append(out, leases...)
	}
	slices.SortStableFunc(out, func(a, b *pharox.Lease) int {
		if n := a.AcquiredAt.Compare(b.AcquiredAt); n != 0 {
			return n
		}
		return cmp.Compare(a.ID.String(), b.ID.String())
	})
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out, nil
}

// audit records an admin action in the store's audit log, when the store
// keeps one. A failure to record is logged, not answered: the action is
// done.
func (s *Server) audit(r *http.Request, action, kind, target, detail string) {
	ks := s.auth.KeyStore()
	if ks == nil {
		return
	}
	e := pharox.AuditEntry{ID: uuid.New(), Actor: callerOf(r).actor(), Action: action,
		TargetKind: kind, TargetID: target, Detail: truncate(detail, pharox.MaxAuditDetail-3)}
	if err := ks.AppendAudit(context.WithoutCancel(r.Context()), e); err != nil {
		s.log.Error("pharox server: record audit entry", "action", action, "target", target, "err", err)
	}
}

// auditRelease records a release an admin made of a consumer's lease.
func (s *Server) auditRelease(r *http.Request, l *pharox.Lease) {
	s.owners.forget(l.ID)
	if c := callerOf(r); c == nil || c.role != RoleAdmin {
		return
	}
	s.audit(r, "lease.release", "lease", l.ID.String(),
		fmt.Sprintf("released consumer %q's lease on proxy %s", l.ConsumerName, l.ProxyID))
}
