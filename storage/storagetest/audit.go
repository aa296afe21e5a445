package storagetest

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// maxAuditReports bounds how many violations AuditLeases prints, so a broken
// store produces a readable failure rather than thousands of lines.
const maxAuditReports = 10

// endOfTime stands for "still holding" in the sweep: an active lease keeps
// its slot until something ends it.
var endOfTime = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// LeaseEnd returns the instant a lease stopped holding its slot: ReleasedAt
// for a released lease, ExpiresAt for an expired one, and a far-future
// instant for a lease that is still active.
func LeaseEnd(l *pharox.Lease) time.Time {
	switch l.Status {
	case pharox.LeaseReleased:
		if l.ReleasedAt != nil {
			return *l.ReleasedAt
		}
		return endOfTime // reported as malformed by AuditLeases
	case pharox.LeaseExpired:
		return l.ExpiresAt
	}
	return endOfTime
}

type auditEvent struct {
	at    time.Time
	delta int // +1 start, -1 end
	lease *pharox.Lease
}

// AuditLeases sweeps the [AcquiredAt, end) interval of every lease (see
// [LeaseEnd]) per proxy and reports, through t.Errorf, every instant at
// which a proxy held more leases than maxConcurrency allows. At equal
// timestamps ends are processed before starts, because a slot freed and
// taken again within one clock tick is not an overlap. Proxies missing from
// maxConcurrency, or mapped to a value below 1, are unlimited and only get
// the per-lease checks (released leases carry ReleasedAt, no interval ends
// before it starts). It returns the number of violations found.
func AuditLeases(t testing.TB, leases []*pharox.Lease, maxConcurrency map[uuid.UUID]int) int {
	t.Helper()
	violations := 0
	report := func(format string, args ...any) {
		t.Helper()
		violations++
		if violations <= maxAuditReports {
			t.Errorf("lease audit: "+format, args...)
		} else if violations == maxAuditReports+1 {
			t.Errorf("lease audit: more violations not shown")
		}
	}

	byProxy := map[uuid.UUID][]auditEvent{}
	for _, l := range leases {
		if l == nil {
			report("nil lease in list")
			continue
		}
		end := LeaseEnd(l)
		switch {
		case !l.Status.Valid():
			report("lease %s on proxy %s has unknown status %q", l.ID, l.ProxyID, l.Status)
			continue
		case l.Status == pharox.LeaseReleased && l.ReleasedAt == nil:
			report("lease %s on proxy %s is released but has no ReleasedAt", l.ID, l.ProxyID)
			continue
		case end.Before(l.AcquiredAt):
			report("lease %s on proxy %s ends (%s, %s) before it was acquired (%s)",
				l.ID, l.ProxyID, l.Status, fmtTime(end), fmtTime(l.AcquiredAt))
			continue
		}
		if end.Equal(l.AcquiredAt) {
			// Acquired and ended within one clock tick: [t, t) holds
			// nothing, and its end event would otherwise sort before
			// its own start.
			continue
		}
		byProxy[l.ProxyID] = append(byProxy[l.ProxyID],
			auditEvent{at: l.AcquiredAt, delta: +1, lease: l},
			auditEvent{at: end, delta: -1, lease: l})
	}

	// Deterministic report order: proxies by id.
	proxyIDs := make([]uuid.UUID, 0, len(byProxy))
	for id := range byProxy {
		proxyIDs = append(proxyIDs, id)
	}
	slices.SortFunc(proxyIDs, func(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) })

	for _, id := range proxyIDs {
		limit := maxConcurrency[id]
		if limit < 1 {
			continue
		}
		events := byProxy[id]
		slices.SortStableFunc(events, func(a, b auditEvent) int {
			if c := a.at.Compare(b.at); c != 0 {
				return c
			}
			return a.delta - b.delta // -1 (end) before +1 (start)
		})
		holding := map[uuid.UUID]*pharox.Lease{}
		inViolation := false
		for _, ev := range events {
			if ev.delta < 0 {
				delete(holding, ev.lease.ID)
				if len(holding) <= limit {
					inViolation = false
				}
				continue
			}
			holding[ev.lease.ID] = ev.lease
			// Report once per excursion above the limit, not once per
			// overlapping start.
			if len(holding) > limit && !inViolation {
				inViolation = true
				report("proxy %s (max_concurrency %d) held %d leases at %s: %s",
					id, limit, len(holding), fmtTime(ev.at), describeHolding(holding))
			}
		}
	}
	return violations
}

func describeHolding(holding map[uuid.UUID]*pharox.Lease) string {
	ls := make([]*pharox.Lease, 0, len(holding))
	for _, l := range holding {
		ls = append(ls, l)
	}
	slices.SortFunc(ls, func(a, b *pharox.Lease) int { return a.AcquiredAt.Compare(b.AcquiredAt) })
	parts := make([]string, len(ls))
	for i, l := range ls {
		parts[i] = fmt.Sprintf("lease %s [%s, %s) %s", l.ID, fmtTime(l.AcquiredAt), fmtTime(LeaseEnd(l)), l.Status)
	}
	return strings.Join(parts, "; ")
}

func fmtTime(t time.Time) string {
	if t.Equal(endOfTime) {
		return "still active"
	}
	return t.UTC().Format("15:04:05.000000")
}

// ReclaimAfterExpiry waits until every active lease of the pool has
// expired (failing the test if one lasts beyond a minute), then runs
// CleanupExpiredLeases once and returns how many leases it ended.
func ReclaimAfterExpiry(t testing.TB, s pharox.Storage, poolID uuid.UUID) int {
	t.Helper()
	ctx := t.Context()
	active, err := s.ListLeases(ctx, pharox.LeaseQuery{PoolID: poolID, Status: pharox.LeaseActive})
	if err != nil {
		t.Fatalf("ListLeases(active): %v", err)
	}
	var last time.Time
	for _, l := range active {
		if l.ExpiresAt.After(last) {
			last = l.ExpiresAt
		}
	}
	if wait := time.Until(last) + 200*time.Millisecond; wait > 0 {
		if wait > time.Minute {
			t.Fatalf("an active lease expires only at %v", last)
		}
		time.Sleep(wait)
	}
	cleaned, err := s.CleanupExpiredLeases(ctx)
	if err != nil {
		t.Fatalf("CleanupExpiredLeases: %v", err)
	}
	return cleaned
}
