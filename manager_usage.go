package pharox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// nameQuotaError fills in the name of the consumer or pool a store's
// QuotaError is about, which the request knows and the store does not.
func nameQuotaError(err error, req *AcquireRequest) error {
	qe, ok := errors.AsType[*QuotaError](err)
	if !ok || qe.Name != "" {
		return err
	}
	named := *qe
	switch qe.Subject {
	case QuotaConsumer:
		named.Name = req.ConsumerName
	case QuotaPool:
		named.Name = req.PoolName
	}
	return &named
}

// waitable reports whether AcquireWait waits out this refusal: a free
// lease or a new token comes within seconds, a new day or month does not.
func (e *QuotaError) waitable() bool {
	return e.Limit == LimitMaxConcurrentLeases || e.Limit == LimitRequestsPerMinute
}

// SetQuota sets the limits of a consumer, pool or proxy (see [Quota] and
// [UsageStore.SetQuota]) and returns the stored quota with its name.
func (m *Manager) SetQuota(ctx context.Context, q Quota) (*Quota, error) {
	if m.invalid != nil {
		return nil, m.invalid
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	out, err := m.store.SetQuota(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("set %s quota: %w", q.Subject, err)
	}
	m.nameQuotas(ctx, out)
	return out, nil
}

// Quota returns the subject's quota with its counters as of now
// (ErrQuotaNotFound).
func (m *Manager) Quota(ctx context.Context, subject QuotaSubject, id uuid.UUID) (*Quota, error) {
	if m.invalid != nil {
		return nil, m.invalid
	}
	q, err := m.store.GetQuota(ctx, subject, id)
	if err != nil {
		return nil, err
	}
	m.nameQuotas(ctx, q)
	return q, nil
}

// Quotas returns every quota, ordered by subject then id, with names.
func (m *Manager) Quotas(ctx context.Context) ([]*Quota, error) {
	if m.invalid != nil {
		return nil, m.invalid
	}
	qs, err := m.store.ListQuotas(ctx)
	if err != nil {
		return nil, err
	}
	m.nameQuotas(ctx, qs...)
	return qs, nil
}

// DeleteQuota removes the subject's quota (ErrQuotaNotFound).
func (m *Manager) DeleteQuota(ctx context.Context, subject QuotaSubject, id uuid.UUID) error {
	if m.invalid != nil {
		return m.invalid
	}
	if !subject.Valid() {
		return fmt.Errorf("%w: quota: unknown subject %q (want consumer, pool or proxy)", ErrInvalidArgument, subject)
	}
	return m.store.DeleteQuota(ctx, subject, id)
}

// Usage totals the usage q selects (see [UsageStore.QueryUsage]), with the
// consumer, pool or proxy names filled in where they still exist.
func (m *Manager) Usage(ctx context.Context, q UsageQuery) ([]UsageRow, error) {
	if m.invalid != nil {
		return nil, m.invalid
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	rows, err := m.store.QueryUsage(ctx, q)
	if err != nil {
		return nil, err
	}
	names := m.names(ctx, q.GroupBy)
	for i := range rows {
		rows[i].Name = names(rows[i].Key)
	}
	return rows, nil
}

// PurgeUsage deletes the usage buckets that started before the given time.
func (m *Manager) PurgeUsage(ctx context.Context, before time.Time) (int, error) {
	if m.invalid != nil {
		return 0, m.invalid
	}
	return m.store.PurgeUsage(ctx, before)
}

// nameQuotas fills in the names of quotas' subjects, best effort.
func (m *Manager) nameQuotas(ctx context.Context, qs ...*Quota) {
	lookup := map[QuotaSubject]func(string) string{}
	for _, q := range qs {
		group := UsageGroup(q.Subject) // the subjects are also groupings
		if lookup[q.Subject] == nil {
			lookup[q.Subject] = m.names(ctx, group)
		}
		q.Name = lookup[q.Subject](q.SubjectID.String())
	}
}

// names returns a function naming a grouping's keys: consumer and pool
// names are read once; proxies are looked up one by one (a report lists
// the proxies that carried traffic, not the pool). Unknown keys, and
// targets, give "".
func (m *Manager) names(ctx context.Context, g UsageGroup) func(string) string {
	byID := map[string]string{}
	switch g {
	case UsageByConsumer:
		if cs, err := m.store.ListConsumers(ctx); err == nil {
			for _, c := range cs {
				byID[c.ID.String()] = c.Name
			}
		}
	case UsageByPool:
		if ps, err := m.store.ListPools(ctx); err == nil {
			for _, p := range ps {
				byID[p.ID.String()] = p.Name
			}
		}
	case UsageByProxy:
		return func(key string) string {
			id, err := uuid.Parse(key)
			if err != nil {
				return ""
			}
			if p, err := m.store.GetProxy(ctx, id); err == nil {
				return p.Address()
			}
			return ""
		}
	}
	return func(key string) string { return byID[key] }
}
