package server

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

// DefaultUsageRetention is how long hourly usage buckets are kept when
// Options.UsageRetention is zero: 90 days.
const DefaultUsageRetention = 90 * 24 * time.Hour

// usagePurgeEvery is how often the reaper purges usage buckets: they are
// hourly, so more often would find nothing new.
const usagePurgeEvery = time.Hour

// ---- usage ----

// readsOwnOnly answers 403 to a consumer key that has no consumers of its
// own (a bootstrap consumer key): usage and quotas are per consumer, and
// such a key could name any.
func readsOwnOnly(c *caller, what string) error {
	if c != nil && c.role == RoleConsumer && !c.scoped() {
		return &httpError{http.StatusForbidden, fmt.Sprintf(
			"This API key (%s) has the consumer role and no consumers of its own; reading %s needs a key bound to consumers, a viewer or an admin key",
			c.id.Name, what)}
	}
	return nil
}

// queryTime parses a time query parameter: RFC 3339 or Unix seconds.
func queryTime(r *http.Request, name string) (time.Time, error) {
	v := strings.TrimSpace(r.URL.Query().Get(name))
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t.UTC(), nil
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) && f >= 0 && f < 1e11 {
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(frac*1e9)).UTC(), nil
	}
	return time.Time{}, unprocessable("query parameter %s must be an RFC 3339 time like 2027-01-31T00:00:00Z or Unix seconds, got %q", name, truncate(v, 64))
}

// consumerByRef finds a consumer by id or, failing that, by name, without
// creating it (reads must not make consumers).
func (s *Server) consumerByRef(ctx context.Context, ref string) (*pharox.Consumer, error) {
	if id, err := uuid.Parse(ref); err == nil {
		c, err := s.store.GetConsumer(ctx, id)
		if err == nil || !errors.Is(err, pharox.ErrConsumerNotFound) {
			return c, err
		}
	}
	all, err := s.store.ListConsumers(ctx)
	if err != nil {
		return nil, err
	}
	for _, c := range all {
		if c.Name == ref {
			return c, nil
		}
	}
	// The detail keeps "Consumer not found", which clients match.
	return nil, withDetail(pharox.ErrConsumerNotFound, "Consumer not found: no consumer has the name or id %q", truncate(ref, 64))
}

func (s *Server) usage(r *http.Request) (any, error) {
	c := callerOf(r)
	if err := readsOwnOnly(c, "usage"); err != nil {
		return nil, err
	}
	ctx := r.Context()
	q := r.URL.Query()
	var uq pharox.UsageQuery
	switch g := pharox.UsageGroup(q.Get("group_by")); {
	case g == "":
		uq.GroupBy = pharox.UsageByConsumer
	case g.Valid():
		uq.GroupBy = g
	default:
		return nil, unprocessable("query parameter group_by must be consumer, proxy, pool or target, got %q", truncate(string(g), 32))
	}
	var err error
	if uq.Since, err = queryTime(r, "since"); err != nil {
		return nil, err
	}
	if uq.Until, err = queryTime(r, "until"); err != nil {
		return nil, err
	}
	if !uq.Since.IsZero() && !uq.Until.IsZero() && !uq.Since.Before(uq.Until) {
		return nil, unprocessable("since (%s) must be before until (%s)", uq.Since.Format(time.RFC3339), uq.Until.Format(time.RFC3339))
	}
	if ref := q.Get("pool"); ref != "" {
		p, err := s.poolByRef(ctx, ref)
		if err != nil {
			return nil, err
		}
		if !c.seesPool(p.Name) {
			return nil, fmt.Errorf("pool %q is outside the key's pools: %w", p.Name, pharox.ErrPoolNotFound)
		}
		uq.PoolID = p.ID
	}
	var consumers []uuid.UUID // a scoped key's: one query each
	if ref := q.Get("consumer"); ref != "" {
		cons, err := s.consumerByRef(ctx, ref)
		if err != nil {
			return nil, err
		}
		if err := c.checkConsumer(cons.Name); err != nil {
			return nil, err
		}
		uq.ConsumerID = cons.ID
	} else if c.scoped() {
		all, err := s.store.ListConsumers(ctx)
		if err != nil {
			return nil, err
		}
		for _, cons := range all {
			if c.ownsLease(cons.Name) {
				consumers = append(consumers, cons.ID)
			}
		}
	}

	var rows []pharox.UsageRow
	if !c.scoped() || uq.ConsumerID != uuid.Nil {
		if rows, err = s.mgr.Usage(ctx, uq); err != nil {
			return nil, err
		}
	} else {
		rows, err = s.usageOf(ctx, uq, consumers)
		if err != nil {
			return nil, err
		}
	}
	out := api.UsageReport{GroupBy: string(uq.GroupBy), Rows: make([]api.UsageRow, len(rows))}
	if !uq.Since.IsZero() {
		out.Since = &api.Time{Time: uq.Since.Truncate(pharox.UsageBucket)}
	}
	if !uq.Until.IsZero() {
		out.Until = &api.Time{Time: uq.Until}
	}
	for i, row := range rows {
		out.Rows[i] = api.FromUsageRow(row)
	}
	return out, nil
}

// usageOf totals q over several consumers, one query each: a consumer key
// sees its consumers' usage only.
func (s *Server) usageOf(ctx context.Context, q pharox.UsageQuery, consumers []uuid.UUID) ([]pharox.UsageRow, error) {
	byKey := map[string]*pharox.UsageRow{}
	for _, id := range consumers {
		cq := q
		cq.ConsumerID = id
		rows, err := s.mgr.Usage(ctx, cq)
		if err != nil {
			return nil, err
		}
		for _, row := range rows {
			if sum := byKey[row.Key]; sum != nil {
				sum.Leases += row.Leases
				sum.Usage = sum.Usage.Add(row.Usage)
				continue
			}
			byKey[row.Key] = &row
		}
	}
	out := make([]pharox.UsageRow, 0, len(byKey))
	for _, row := range byKey {
		out = append(out, *row)
	}
	slices.SortFunc(out, func(a, b pharox.UsageRow) int { return cmp.Compare(a.Key, b.Key) })
	return out, nil
}

// poolByRef finds a pool by id or name.
func (s *Server) poolByRef(ctx context.Context, ref string) (*pharox.Pool, error) {
	if id, err := uuid.Parse(ref); err == nil {
		p, err := s.store.GetPool(ctx, id)
		if err == nil || !errors.Is(err, pharox.ErrPoolNotFound) {
			return p, err
		}
	}
	return s.store.GetPoolByName(ctx, ref)
}

// ---- quotas ----

// quotaSubject reads the {subject} path segment.
func quotaSubject(r *http.Request) (pharox.QuotaSubject, error) {
	raw := r.PathValue("subject")
	subject := pharox.QuotaSubject(strings.ToLower(raw))
	if !subject.Valid() {
		return "", unprocessable("quota subject must be consumer, pool or proxy, got %q", truncate(raw, 32))
	}
	return subject, nil
}

// quotaTarget is the consumer, pool or proxy a quota path names.
type quotaTarget struct {
	subject pharox.QuotaSubject
	id      uuid.UUID
	// name is the consumer or pool name, or the proxy's address.
	name string
}

// String names the target in a sentence: consumer "scraper-1".
func (t quotaTarget) String() string {
	if t.subject == pharox.QuotaProxy {
		return "proxy " + t.name
	}
	return fmt.Sprintf("%s %q", t.subject, t.name)
}

// quotaRef resolves the {name_or_id} path segment: a consumer or pool by
// id or name, a proxy by id. ensure creates a consumer named for the first
// time, as an acquisition would: a quota may be set before the consumer
// first leases.
func (s *Server) quotaRef(ctx context.Context, subject pharox.QuotaSubject, ref string, ensure bool) (quotaTarget, error) {
	t := quotaTarget{subject: subject}
	switch subject {
	case pharox.QuotaConsumer:
		c, err := s.consumerByRef(ctx, ref)
		if errors.Is(err, pharox.ErrConsumerNotFound) && ensure {
			if err = pharox.ValidateName("consumer", ref); err != nil {
				return t, err
			}
			c, err = s.mgr.EnsureConsumer(ctx, ref)
		}
		if err != nil {
			return t, err
		}
		t.id, t.name = c.ID, c.Name
	case pharox.QuotaPool:
		p, err := s.poolByRef(ctx, ref)
		if err != nil {
			return t, err
		}
		t.id, t.name = p.ID, p.Name
	case pharox.QuotaProxy:
		id, err := uuid.Parse(ref)
		if err != nil {
			return t, unprocessable("a proxy's quota names the proxy by id, got %q", truncate(ref, 64))
		}
		p, err := s.store.GetProxy(ctx, id)
		if err != nil {
			return t, err
		}
		t.id, t.name = p.ID, p.Address()
	}
	return t, nil
}

// checkQuotaReader answers 403 when a consumer key reads a quota that is
// not one of its consumers'.
func (c *caller) checkQuotaReader(t quotaTarget) error {
	if !c.scoped() {
		return nil
	}
	if t.subject != pharox.QuotaConsumer {
		return &httpError{http.StatusForbidden, fmt.Sprintf("This API key (%s) reads only the quotas of its consumers, not of %s", c.id.Name, t)}
	}
	return c.checkConsumer(t.name)
}

// noQuota is the answer for a subject without a quota.
func noQuota(err error, t quotaTarget) error {
	if errors.Is(err, pharox.ErrQuotaNotFound) {
		return withDetail(err, "No quota is set for %s", t)
	}
	return err
}

func (s *Server) listQuotas(r *http.Request) (any, error) {
	c := callerOf(r)
	if err := readsOwnOnly(c, "quotas"); err != nil {
		return nil, err
	}
	qs, err := s.mgr.Quotas(r.Context())
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := make([]api.Quota, 0, len(qs))
	for _, q := range qs {
		if c.scoped() && (q.Subject != pharox.QuotaConsumer || !c.ownsLease(q.Name)) {
			continue
		}
		out = append(out, api.FromQuota(q, now))
	}
	return out, nil
}

func (s *Server) getQuota(r *http.Request) (any, error) {
	c := callerOf(r)
	if err := readsOwnOnly(c, "quotas"); err != nil {
		return nil, err
	}
	subject, err := quotaSubject(r)
	if err != nil {
		return nil, err
	}
	ref := r.PathValue("name_or_id")
	// A consumer key is told no before the name is looked up, so that it
	// cannot probe which consumers exist.
	if _, perr := uuid.Parse(ref); perr != nil {
		if err := c.checkQuotaReader(quotaTarget{subject: subject, name: ref}); err != nil {
			return nil, err
		}
	}
	t, err := s.quotaRef(r.Context(), subject, ref, false)
	if err != nil {
		return nil, err
	}
	if err := c.checkQuotaReader(t); err != nil {
		return nil, err
	}
	q, err := s.mgr.Quota(r.Context(), t.subject, t.id)
	if err != nil {
		return nil, noQuota(err, t)
	}
	return api.FromQuota(q, time.Now()), nil
}

// quotaLimitFields names the fields of a quota's body, for the detail of
// an unknown one.
const quotaLimitFields = "max_concurrent_leases, requests_per_minute, bytes_per_day or bytes_per_month"

func (s *Server) setQuota(r *http.Request) (any, error) {
	subject, err := quotaSubject(r)
	if err != nil {
		return nil, err
	}
	body, err := readBody(r)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, unprocessable("Request body is required: a JSON object with %s", quotaLimitFields)
	}
	// Unknown fields are refused: a misspelled limit would otherwise be
	// dropped, and the quota set without it.
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var limits api.QuotaLimits
	if err := dec.Decode(&limits); err != nil {
		if field, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return nil, unprocessable("Unknown field %s: a quota takes %s", field, quotaLimitFields)
		}
		return nil, jsonError(err)
	}
	q := pharox.Quota{Subject: subject, QuotaLimits: limits.Model()}
	// The limits are checked before the subject is resolved, which may
	// create a consumer: a refused quota must leave nothing behind. The
	// id is checked by the store.
	probe := q
	probe.SubjectID = uuid.Max
	if err := probe.Validate(); err != nil {
		return nil, err
	}
	t, err := s.quotaRef(r.Context(), subject, r.PathValue("name_or_id"), true)
	if err != nil {
		return nil, err
	}
	q.SubjectID = t.id
	out, err := s.mgr.SetQuota(r.Context(), q)
	if err != nil {
		return nil, err
	}
	s.audit(r, "quota.set", string(t.subject), t.id.String(), fmt.Sprintf("set the quota of %s: %s", t, describeLimits(q.QuotaLimits)))
	return api.FromQuota(out, time.Now()), nil
}

func (s *Server) deleteQuota(r *http.Request) (any, error) {
	subject, err := quotaSubject(r)
	if err != nil {
		return nil, err
	}
	t, err := s.quotaRef(r.Context(), subject, r.PathValue("name_or_id"), false)
	if err != nil {
		return nil, err
	}
	if err := s.mgr.DeleteQuota(r.Context(), t.subject, t.id); err != nil {
		return nil, noQuota(err, t)
	}
	s.audit(r, "quota.delete", string(t.subject), t.id.String(), fmt.Sprintf("deleted the quota of %s", t))
	return nil, nil
}

// describeLimits lists the limits set, as name=value pairs.
func describeLimits(l pharox.QuotaLimits) string {
	var parts []string
	for _, f := range []struct {
		name string
		v    int64
	}{
		{pharox.LimitMaxConcurrentLeases, int64(l.MaxConcurrentLeases)},
		{pharox.LimitRequestsPerMinute, int64(l.RequestsPerMinute)},
		{pharox.LimitBytesPerDay, l.BytesPerDay},
		{pharox.LimitBytesPerMonth, l.BytesPerMonth},
	} {
		if f.v > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", f.name, f.v))
		}
	}
	return strings.Join(parts, ", ")
}

// ---- refusals ----

// quotaDetail is the sentence of a 429: the subject by the name its user
// gave it, the limit, and when to retry.
func quotaDetail(qe *pharox.QuotaError) string {
	who := qe.SubjectID.String()
	if qe.Name != "" {
		who = strconv.Quote(qe.Name)
	}
	subject := string(qe.Subject)
	if subject != "" {
		subject = strings.ToUpper(subject[:1]) + subject[1:]
	}
	return fmt.Sprintf("%s %s is over its quota %s=%d; retry in %s", subject, who, qe.Limit, qe.Value,
		retryIn(api.RetryAfterSeconds(qe.RetryAfter)))
}

// retryIn renders a wait in whole seconds compactly: 1s, 2m5s, 7h30m.
func retryIn(secs int64) string {
	s := (time.Duration(secs) * time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// ---- background ----

// purgeUsage deletes the usage buckets older than the retention, at most
// once an hour.
func (s *Server) purgeUsage(ctx context.Context, now time.Time) {
	if s.opts.UsageRetention < 0 {
		return
	}
	s.usagePurgeMu.Lock()
	due := !now.Before(s.nextUsagePurge)
	if due {
		s.nextUsagePurge = now.Add(usagePurgeEvery)
	}
	s.usagePurgeMu.Unlock()
	if !due {
		return
	}
	n, err := s.mgr.PurgeUsage(ctx, now.Add(-s.opts.UsageRetention))
	switch {
	case err != nil && ctx.Err() == nil:
		s.log.Error("pharox server: purge usage buckets", "err", err)
		// Try again at the next round rather than in an hour.
		s.usagePurgeMu.Lock()
		s.nextUsagePurge = time.Time{}
		s.usagePurgeMu.Unlock()
	case n > 0:
		s.log.Info("pharox server: purged usage buckets", "count", n, "retention", s.opts.UsageRetention)
	}
}
