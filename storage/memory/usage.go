package memory

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// consumerState is a stored consumer with what quotas need: its count of
// active leases (every active lease is unexpired: each operation reaps
// first) and its quota.
type consumerState struct {
	c      pharox.Consumer
	leases int
	quota  *pharox.Quota
}

// quotaKey names a quota in Store.quotas.
type quotaKey struct {
	subject pharox.QuotaSubject
	id      uuid.UUID
}

// usageKey names an hourly bucket within its hour.
type usageKey struct {
	consumer, proxy, pool uuid.UUID
	target                string
}

// usageSums is one bucket's totals.
type usageSums struct {
	leases int64
	pharox.Usage
}

// admit applies the consumer's then the pool's quota to an acquisition at
// now, following [pharox.Quota.Admit]. Active leases are the consumer's
// and pool's counts: the reaping before each operation leaves no expired
// lease active, so counting costs nothing. Call with mu held.
func admit(cs *consumerState, pl *poolState, now time.Time) error {
	if q := cs.quota; q != nil {
		if err := q.Admit(cs.leases, now); err != nil {
			return err
		}
	}
	if q := pl.quota; q != nil {
		if err := q.Admit(pl.leases, now); err != nil {
			return err
		}
	}
	return nil
}

// takeTokens takes a request token from the consumer's and the pool's
// buckets once a proxy is leased. Call with mu held.
func takeTokens(cs *consumerState, pl *poolState, now time.Time) {
	if q := cs.quota; q != nil && q.RequestsPerMinute > 0 {
		*q = q.TakeToken(now)
	}
	if q := pl.quota; q != nil && q.RequestsPerMinute > 0 {
		*q = q.TakeToken(now)
	}
}

// setSpent makes the search skip proxies over their traffic allowance at
// now: one lookup per candidate examined, and none while no proxy is.
func (s *Store) setSpent(now int64) {
	if len(s.spent) > 0 {
		s.scan.spent, s.scan.now = s.spent, now
	}
}

// overAllowance reports whether ps's traffic allowance is used up at the
// search's time.
func (sc *scanner) overAllowance(ps *proxyState) bool {
	if sc.spent == nil {
		return false
	}
	until, ok := sc.spent[ps.idx]
	return ok && until > sc.now
}

// setAllowance keeps Store.spent in step with ps's quota at now. Call with
// mu held.
func (s *Store) setAllowance(ps *proxyState, now time.Time) {
	var until time.Time
	if ps.quota != nil {
		until = ps.quota.ExhaustedUntil(now)
	}
	if until.IsZero() {
		delete(s.spent, ps.idx)
		return
	}
	if s.spent == nil {
		s.spent = make(map[uint32]int64)
	}
	s.spent[ps.idx] = until.UnixMicro()
}

// sweepSpent forgets allowances that have reset.
func (s *Store) sweepSpent(now int64) {
	for idx, until := range s.spent {
		if until <= now {
			delete(s.spent, idx)
		}
	}
}

// meter stores a release's usage report on the lease and counts it in
// the hourly bucket and the byte counters of the lease's quotas. Call with
// mu held, before the lease ends.
func (s *Store) meter(ls *leaseState, u pharox.Usage, now time.Time) {
	ls.usage = u
	ls.l.Usage = &ls.usage
	hour := now.Truncate(pharox.UsageBucket).Unix()
	buckets := s.usage[hour]
	if buckets == nil {
		if s.usage == nil {
			s.usage = make(map[int64]map[usageKey]*usageSums)
		}
		buckets = make(map[usageKey]*usageSums)
		s.usage[hour] = buckets
	}
	k := usageKey{consumer: ls.l.ConsumerID, proxy: ls.l.ProxyID, pool: ls.l.PoolID, target: ls.l.Target}
	b := buckets[k]
	if b == nil {
		b = &usageSums{}
		buckets[k] = b
	}
	b.leases++
	b.Usage = b.Usage.Add(u)

	n := u.Bytes()
	for _, q := range []*pharox.Quota{ls.consumer.quota, ls.proxy.pool.quota, ls.proxy.quota} {
		if q != nil {
			*q = q.AddBytes(n, now)
		}
	}
	if ls.proxy.quota != nil {
		s.setAllowance(ls.proxy, now)
	}
}

// SetQuota creates or replaces the subject's limits (see
// [pharox.UsageStore.SetQuota]).
func (s *Store) SetQuota(ctx context.Context, q pharox.Quota) (*pharox.Quota, error) {
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("memory: set quota: %w", err)
	}
	now, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: set quota: %w", err)
	}
	defer s.mu.Unlock()
	var slot **pharox.Quota
	var ps *proxyState
	var match func(usageKey) bool
	switch q.Subject {
	case pharox.QuotaConsumer:
		cs := s.consumers[q.SubjectID]
		if cs == nil {
			return nil, fmt.Errorf("memory: set quota: consumer %s: %w", q.SubjectID, pharox.ErrConsumerNotFound)
		}
		slot = &cs.quota
		match = func(k usageKey) bool { return k.consumer == q.SubjectID }
	case pharox.QuotaPool:
		pl := s.pools[q.SubjectID]
		if pl == nil {
			return nil, fmt.Errorf("memory: set quota: pool %s: %w", q.SubjectID, pharox.ErrPoolNotFound)
		}
		slot = &pl.quota
		match = func(k usageKey) bool { return k.pool == q.SubjectID }
	case pharox.QuotaProxy:
		ps = s.proxies[q.SubjectID]
		if ps == nil {
			return nil, fmt.Errorf("memory: set quota: proxy %s: %w", q.SubjectID, pharox.ErrProxyNotFound)
		}
		slot = &ps.quota
		match = func(k usageKey) bool { return k.proxy == q.SubjectID }
	}
	cur := *slot
	if cur == nil {
		// A new quota: counters from the buckets of this day and month,
		// a full bucket of tokens.
		cur = &pharox.Quota{Subject: q.Subject, SubjectID: q.SubjectID, Day: pharox.DayStart(now), Month: pharox.MonthStart(now)}
		day, month := cur.Day.Unix(), cur.Month.Unix()
		for hour, buckets := range s.usage {
			if hour < month {
				continue
			}
			for k, b := range buckets {
				if match(k) {
					cur.BytesThisMonth += b.Bytes()
					if hour >= day {
						cur.BytesToday += b.Bytes()
					}
				}
			}
		}
		cur.Tokens = float64(q.RequestsPerMinute)
		if s.quotas == nil {
			s.quotas = make(map[quotaKey]*pharox.Quota)
		}
		s.quotas[quotaKey{q.Subject, q.SubjectID}] = cur
		*slot = cur
	} else {
		*cur = cur.RollPeriods(now)
		cur.Tokens = min(cur.Tokens, float64(q.RequestsPerMinute))
	}
	cur.QuotaLimits = q.QuotaLimits
	cur.UpdatedAt = now
	if ps != nil {
		s.setAllowance(ps, now)
	}
	out := cur.RollPeriods(now)
	return &out, nil
}

// GetQuota returns the subject's quota, counters rolled to now.
func (s *Store) GetQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) (*pharox.Quota, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: get quota: %w", err)
	}
	q := s.quotas[quotaKey{subject, id}]
	if q == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("memory: get quota of %s %s: %w", subject, id, pharox.ErrQuotaNotFound)
	}
	out := q.RollPeriods(now)
	s.mu.Unlock()
	return &out, nil
}

// subjectRank orders quotas by subject in ListQuotas.
var subjectRank = map[pharox.QuotaSubject]int{pharox.QuotaConsumer: 0, pharox.QuotaPool: 1, pharox.QuotaProxy: 2}

// ListQuotas returns every quota ordered by subject then id, counters
// rolled to now.
func (s *Store) ListQuotas(ctx context.Context) ([]*pharox.Quota, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: list quotas: %w", err)
	}
	out := make([]*pharox.Quota, 0, len(s.quotas))
	for _, q := range s.quotas {
		r := q.RollPeriods(now)
		out = append(out, &r)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b *pharox.Quota) int {
		if c := cmp.Compare(subjectRank[a.Subject], subjectRank[b.Subject]); c != 0 {
			return c
		}
		return cmp.Compare(a.SubjectID.String(), b.SubjectID.String())
	})
	return out, nil
}

// DeleteQuota removes the subject's quota.
func (s *Store) DeleteQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) error {
	if _, err := s.lock(ctx); err != nil {
		return fmt.Errorf("memory: delete quota: %w", err)
	}
	defer s.mu.Unlock()
	if !s.dropQuota(quotaKey{subject, id}) {
		return fmt.Errorf("memory: delete quota of %s %s: %w", subject, id, pharox.ErrQuotaNotFound)
	}
	return nil
}

// dropQuota forgets a quota, if there is one, and reports whether there
// was. Call with mu held, before a deleted proxy leaves the table.
func (s *Store) dropQuota(k quotaKey) bool {
	if s.quotas[k] == nil {
		return false
	}
	delete(s.quotas, k)
	switch k.subject {
	case pharox.QuotaConsumer:
		if cs := s.consumers[k.id]; cs != nil {
			cs.quota = nil
		}
	case pharox.QuotaPool:
		if pl := s.pools[k.id]; pl != nil {
			pl.quota = nil
		}
	case pharox.QuotaProxy:
		if ps := s.proxies[k.id]; ps != nil {
			s.dropProxyQuota(ps)
		}
	}
	return true
}

// dropProxyQuota forgets ps's quota and allowance: ps is deleted or its
// quota is. Call with mu held, before ps leaves the table (its index is
// then reused).
func (s *Store) dropProxyQuota(ps *proxyState) {
	if ps.quota != nil {
		delete(s.quotas, quotaKey{pharox.QuotaProxy, ps.p.ID})
		ps.quota = nil
	}
	delete(s.spent, ps.idx)
}

// QueryUsage totals the hourly buckets q selects. It walks the buckets of
// the hours selected, under the lock: an admin read.
func (s *Store) QueryUsage(ctx context.Context, q pharox.UsageQuery) ([]pharox.UsageRow, error) {
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("memory: query usage: %w", err)
	}
	if _, err := s.lockNoReap(ctx); err != nil {
		return nil, fmt.Errorf("memory: query usage: %w", err)
	}
	since := q.Since.Truncate(pharox.UsageBucket)
	rows := map[string]*pharox.UsageRow{}
	for hour, buckets := range s.usage {
		start := time.Unix(hour, 0)
		if !q.Since.IsZero() && start.Before(since) || !q.Until.IsZero() && !start.Before(q.Until) {
			continue
		}
		for k, b := range buckets {
			if q.PoolID != uuid.Nil && k.pool != q.PoolID || q.ConsumerID != uuid.Nil && k.consumer != q.ConsumerID {
				continue
			}
			var key string
			switch q.GroupBy {
			case pharox.UsageByConsumer:
				key = k.consumer.String()
			case pharox.UsageByProxy:
				key = k.proxy.String()
			case pharox.UsageByPool:
				key = k.pool.String()
			case pharox.UsageByTarget:
				key = k.target
			}
			r := rows[key]
			if r == nil {
				r = &pharox.UsageRow{Key: key}
				rows[key] = r
			}
			r.Leases += b.leases
			r.Usage = r.Usage.Add(b.Usage)
		}
	}
	s.mu.Unlock()
	out := make([]pharox.UsageRow, 0, len(rows))
	for _, k := range slices.Sorted(maps.Keys(rows)) {
		out = append(out, *rows[k])
	}
	return out, nil
}

// PurgeUsage deletes the buckets that started before the given time.
func (s *Store) PurgeUsage(ctx context.Context, before time.Time) (int, error) {
	if _, err := s.lockNoReap(ctx); err != nil {
		return 0, fmt.Errorf("memory: purge usage: %w", err)
	}
	defer s.mu.Unlock()
	n := 0
	for hour, buckets := range s.usage {
		if time.Unix(hour, 0).Before(before) {
			n += len(buckets)
			delete(s.usage, hour)
		}
	}
	return n, nil
}
