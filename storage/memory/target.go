package memory

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

var _ pharox.TargetStore = (*Store)(nil)

// ApplyTargetOutcome applies o to its (proxy, target) entry following
// [pharox.TargetState.Apply], evicting the proxy's longest-idle entries
// beyond p.MaxTargetsPerProxy, and returns the new state and how many of
// the proxy's entries started a cool-down within p.EscalateWindow.
func (s *Store) ApplyTargetOutcome(ctx context.Context, o pharox.TargetOutcome, p pharox.TargetPolicy) (*pharox.TargetState, int, error) {
	if err := o.Validate(); err != nil {
		return nil, 0, fmt.Errorf("memory: apply target outcome: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, 0, fmt.Errorf("memory: apply target outcome: %w", err)
	}
	now, err := s.lock(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("memory: apply target outcome: %w", err)
	}
	defer s.mu.Unlock()
	ps := s.proxies[o.ProxyID]
	if ps == nil {
		return nil, 0, fmt.Errorf("memory: apply target outcome: proxy %s: %w", o.ProxyID, pharox.ErrProxyNotFound)
	}
	if !o.At.IsZero() {
		now = o.At.UTC().Truncate(time.Microsecond)
	}
	var old pharox.TargetState
	cur := ps.targets[o.Target]
	if cur != nil {
		old = *cur
	} else {
		if ps.targets == nil {
			ps.targets = make(map[string]*pharox.TargetState)
			if s.targeted == nil {
				s.targeted = make(map[*proxyState]struct{})
			}
			s.targeted[ps] = struct{}{}
		}
		for len(ps.targets) >= p.MaxTargetsPerProxy {
			s.evictIdlest(ps)
		}
	}
	next := old.Apply(o, p, now)
	ps.targets[o.Target] = &next
	s.setCooling(ps, &next)
	recent := 0
	for _, st := range ps.targets {
		if st.RecentlyBanned(now, p.EscalateWindow) {
			recent++
		}
	}
	return next.Clone(), recent, nil
}

// evictIdlest drops ps's entry with the earliest IdleSince (ties: the
// smallest target). Call with mu held.
func (s *Store) evictIdlest(ps *proxyState) {
	var victim *pharox.TargetState
	for _, st := range ps.targets {
		if victim == nil {
			victim = st
			continue
		}
		if c := st.IdleSince().Compare(victim.IdleSince()); c < 0 || c == 0 && st.Target < victim.Target {
			victim = st
		}
	}
	s.dropTarget(ps, victim.Target)
}

// setCooling keeps the per-target cooling index in step with st.
func (s *Store) setCooling(ps *proxyState, st *pharox.TargetState) {
	if st.CoolingUntil == nil {
		s.clearCooling(ps, st.Target)
		return
	}
	c := s.cooling[st.Target]
	if c == nil {
		if s.cooling == nil {
			s.cooling = make(map[string]map[uint32]int64)
		}
		c = make(map[uint32]int64)
		s.cooling[st.Target] = c
	}
	c[ps.idx] = st.CoolingUntil.UnixMicro()
}

func (s *Store) clearCooling(ps *proxyState, target string) {
	if c := s.cooling[target]; c != nil {
		delete(c, ps.idx)
		if len(c) == 0 {
			delete(s.cooling, target)
		}
	}
}

// dropTarget forgets one of ps's entries.
func (s *Store) dropTarget(ps *proxyState, target string) {
	delete(ps.targets, target)
	s.clearCooling(ps, target)
}

// dropTargets forgets every entry of a proxy that leaves the store, before
// its table index is reused. Call with mu held.
func (s *Store) dropTargets(ps *proxyState) {
	for t := range ps.targets {
		s.clearCooling(ps, t)
	}
	ps.targets = nil
	delete(s.targeted, ps)
}

// ListTargetStates returns the proxy's entries ordered by target.
func (s *Store) ListTargetStates(ctx context.Context, proxyID uuid.UUID) ([]*pharox.TargetState, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, fmt.Errorf("memory: list target states: %w", err)
	}
	ps := s.proxies[proxyID]
	if ps == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("memory: list target states: proxy %s: %w", proxyID, pharox.ErrProxyNotFound)
	}
	out := make([]*pharox.TargetState, 0, len(ps.targets))
	for _, st := range ps.targets {
		out = append(out, st.Clone())
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b *pharox.TargetState) int { return cmp.Compare(a.Target, b.Target) })
	return out, nil
}

// PoolTargetStats returns per-target health of the pool, ordered by
// target. It walks the pool's entries under the lock: an admin read.
func (s *Store) PoolTargetStats(ctx context.Context, poolID uuid.UUID) ([]*pharox.TargetStats, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: pool target stats: %w", err)
	}
	pl := s.pools[poolID]
	if pl == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("memory: pool target stats: pool %s: %w", poolID, pharox.ErrPoolNotFound)
	}
	leasable := 0
	byTarget := make(map[string]*pharox.TargetStats)
	hourAgo := now.Add(-time.Hour)
	for _, ps := range pl.proxies {
		ok := ps.p.Status.Leasable()
		if ok {
			leasable++
		}
		for t, st := range ps.targets {
			ts := byTarget[t]
			if ts == nil {
				ts = &pharox.TargetStats{Target: t}
				byTarget[t] = ts
			}
			if st.CoolingAt(now) {
				ts.CoolingProxies++
				if ok {
					ts.UsableProxies-- // counted back below
				}
			}
			if st.BannedAt != nil && !st.BannedAt.Before(hourAgo) {
				ts.BansLastHour++
			}
		}
	}
	s.mu.Unlock()
	out := make([]*pharox.TargetStats, 0, len(byTarget))
	for _, ts := range byTarget {
		ts.UsableProxies += leasable
		out = append(out, ts)
	}
	slices.SortFunc(out, func(a, b *pharox.TargetStats) int { return cmp.Compare(a.Target, b.Target) })
	return out, nil
}

// PurgeTargetStates deletes entries idle since before idleBefore. It walks
// every entry under the lock (only proxies with entries), as
// CleanupExpiredLeases's session sweep walks the bindings.
func (s *Store) PurgeTargetStates(ctx context.Context, idleBefore time.Time) (int, error) {
	if _, err := s.lock(ctx); err != nil {
		return 0, fmt.Errorf("memory: purge target states: %w", err)
	}
	defer s.mu.Unlock()
	n := 0
	for ps := range s.targeted {
		for t, st := range ps.targets {
			if st.IdleSince().Before(idleBefore) {
				s.dropTarget(ps, t)
				n++
			}
		}
		if len(ps.targets) == 0 {
			s.dropTargets(ps)
		}
	}
	return n, nil
}
