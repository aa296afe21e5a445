package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

func quotaPath(subject pharox.QuotaSubject, id uuid.UUID) string {
	return "/v1/quotas/" + url.PathEscape(string(subject)) + "/" + id.String()
}

// SetQuota sets the limits of a consumer, pool or proxy (admin), keeping
// the counters of a quota it replaces (see [pharox.Manager.SetQuota]), and
// returns the stored quota with its subject's name. Errors:
// ErrInvalidArgument (see pharox.Quota.Validate), ErrConsumerNotFound,
// ErrPoolNotFound or ErrProxyNotFound for an unknown subject. Setting the
// same limits again changes nothing, so it is retried.
func (c *Client) SetQuota(ctx context.Context, q pharox.Quota) (*pharox.Quota, error) {
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	var out api.Quota
	if _, err := c.do(ctx, call{method: http.MethodPut, path: quotaPath(q.Subject, q.SubjectID),
		body: api.FromQuotaLimits(q.QuotaLimits), out: &out, notFound: subjectNotFound(q.Subject)}); err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// Quota returns the quota of a consumer, pool or proxy, its byte counters
// as of now (pharox.ErrQuotaNotFound when it has none).
func (c *Client) Quota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) (*pharox.Quota, error) {
	if !subject.Valid() {
		return nil, fmt.Errorf("client: %w: unknown quota subject %q (want consumer, pool or proxy)", pharox.ErrInvalidArgument, subject)
	}
	var out api.Quota
	if _, err := c.do(ctx, call{method: http.MethodGet, path: quotaPath(subject, id), out: &out, notFound: pharox.ErrQuotaNotFound}); err != nil {
		return nil, err
	}
	return out.Model(), nil
}

// Quotas returns every quota the key may read, consumers' then pools'
// then proxies', each ordered by id.
func (c *Client) Quotas(ctx context.Context) ([]*pharox.Quota, error) {
	var out []api.Quota
	if _, err := c.do(ctx, call{method: http.MethodGet, path: "/v1/quotas/", out: &out}); err != nil {
		return nil, err
	}
	qs := make([]*pharox.Quota, len(out))
	for i := range out {
		qs[i] = out[i].Model()
	}
	return qs, nil
}

// DeleteQuota removes the quota of a consumer, pool or proxy (admin;
// pharox.ErrQuotaNotFound when it has none). It is not retried: a retry
// after it acted would answer that there is no quota.
func (c *Client) DeleteQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) error {
	if !subject.Valid() {
		return fmt.Errorf("client: %w: unknown quota subject %q (want consumer, pool or proxy)", pharox.ErrInvalidArgument, subject)
	}
	_, err := c.do(ctx, call{method: http.MethodDelete, path: quotaPath(subject, id), mode: retryUnsent, notFound: pharox.ErrQuotaNotFound})
	return err
}

// Usage totals the traffic reported at release that q selects, one row
// per group ordered by key, with names (see [pharox.Manager.Usage]). A key
// bound to consumers gets its consumers' usage only.
func (c *Client) Usage(ctx context.Context, q pharox.UsageQuery) ([]pharox.UsageRow, error) {
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	v := url.Values{}
	v.Set("group_by", string(q.GroupBy))
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.UTC().Format(time.RFC3339Nano))
	}
	if q.PoolID != uuid.Nil {
		v.Set("pool", q.PoolID.String())
	}
	if q.ConsumerID != uuid.Nil {
		v.Set("consumer", q.ConsumerID.String())
	}
	var out api.UsageReport
	if _, err := c.do(ctx, call{method: http.MethodGet, path: "/v1/usage", query: v, out: &out}); err != nil {
		return nil, err
	}
	rows := make([]pharox.UsageRow, len(out.Rows))
	for i := range out.Rows {
		rows[i] = out.Rows[i].Model()
	}
	return rows, nil
}

// subjectNotFound is the sentinel a 404 for the subject of a quota means.
func subjectNotFound(s pharox.QuotaSubject) error {
	switch s {
	case pharox.QuotaPool:
		return pharox.ErrPoolNotFound
	case pharox.QuotaProxy:
		return pharox.ErrProxyNotFound
	}
	return pharox.ErrConsumerNotFound
}
