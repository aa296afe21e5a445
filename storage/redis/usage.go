package redis

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	goredis "github.com/redis/go-redis/v9"
)

// usageTTL returns the usage buckets' lifetime in seconds, as the release
// scripts take it (0: no expiry).
func (s *Store) usageTTL() int64 {
	if s.usageRetention <= 0 {
		return 0
	}
	return max(int64(s.usageRetention/time.Second), 1)
}

// quotaField names a quota in the quotas hash (see QUOTAS in quota.lua).
func quotaField(subject pharox.QuotaSubject, id uuid.UUID) string {
	return string(subject) + "|" + id.String()
}

// microsOrZero reads a time in microseconds where 0 means the zero time.
func microsOrZero(s string) (time.Time, error) {
	if s == "0" {
		return time.Time{}, nil
	}
	return micros(s)
}

// decodeQuota builds a Quota from its field and record, "mcl rpm bpd bpm
// day bt month bm tok tokat upd" (see qparse in quota.lua).
func decodeQuota(field, record string) (*pharox.Quota, error) {
	subject, id, _ := strings.Cut(field, "|")
	f := strings.Fields(record)
	if len(f) != 11 {
		return nil, fmt.Errorf("quota %s: malformed record", field)
	}
	q := &pharox.Quota{Subject: pharox.QuotaSubject(subject)}
	var err error
	if q.SubjectID, err = uuid.Parse(id); err != nil || !q.Subject.Valid() {
		return nil, fmt.Errorf("quota %s: malformed field", field)
	}
	ints := make([]int64, 0, 8)
	for _, i := range []int{0, 1, 2, 3, 5, 7} {
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("quota %s: malformed record", field)
		}
		ints = append(ints, n)
	}
	q.MaxConcurrentLeases, q.RequestsPerMinute = int(ints[0]), int(ints[1])
	q.BytesPerDay, q.BytesPerMonth = ints[2], ints[3]
	q.BytesToday, q.BytesThisMonth = ints[4], ints[5]
	var errs [5]error
	q.Day, errs[0] = microsOrZero(f[4])
	q.Month, errs[1] = microsOrZero(f[6])
	q.Tokens, errs[2] = strconv.ParseFloat(f[8], 64)
	q.TokensAt, errs[3] = microsOrZero(f[9])
	q.UpdatedAt, errs[4] = microsOrZero(f[10])
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("quota %s: malformed record: %v", field, err)
	}
	return q, nil
}

// quotaError decodes a quota's refusal from a script (see refusal in
// quota.lua), or returns nil when code is not one.
func quotaError(code string) *pharox.QuotaError {
	_, rest, ok := strings.Cut(code, "PHAROX_QUOTA_EXCEEDED ")
	if !ok {
		return nil
	}
	f := strings.Fields(rest)
	if len(f) != 5 {
		return nil
	}
	id, err1 := uuid.Parse(f[1])
	value, err2 := strconv.ParseInt(f[3], 10, 64)
	retry, err3 := strconv.ParseInt(f[4], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return nil
	}
	return &pharox.QuotaError{Subject: pharox.QuotaSubject(f[0]), SubjectID: id, Limit: f[2], Value: value,
		RetryAfter: time.Duration(retry)}
}

// serverNow returns the Redis server's clock, the store's time.
func (s *Store) serverNow(ctx context.Context) (time.Time, error) {
	t, err := s.rdb.Time(ctx).Result()
	if err != nil {
		return time.Time{}, err
	}
	return t.UTC().Truncate(time.Microsecond), nil
}

// errNeedSums is set_quota.lua's answer when a new quota needs the
// client's sums of the usage buckets (again).
const errNeedSums = "PHAROX_QUOTA_SUMS"

// SetQuota creates or replaces the subject's limits in one script (see
// doc.go, Usage and quotas). A new quota's byte counters start from the
// buckets of the current day and month: the client sums the hours before
// the current one, the script adds the rest. A consumer's
// max_concurrent_leases also makes the store count the consumer's active
// leases taken before, one script per pool.
func (s *Store) SetQuota(ctx context.Context, q pharox.Quota) (*pharox.Quota, error) {
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("redis: set quota: %w", err)
	}
	what := fmt.Sprintf("set %s quota of %s", q.Subject, q.SubjectID)
	args := []any{string(q.Subject), q.SubjectID.String(), q.MaxConcurrentLeases, q.RequestsPerMinute, q.BytesPerDay, q.BytesPerMonth}
	sums := ""
	var v any
	for attempt := 0; ; attempt++ {
		var err error
		v, err = s.run(ctx, scriptSetQuota, append(args, sums)...)
		if err == nil {
			break
		}
		// A day or month that ended between the sums and the script can
		// only happen once in a row.
		if !strings.Contains(err.Error(), errNeedSums) || attempt == 2 {
			return nil, wrap(err, "%s", what)
		}
		if sums, err = s.usageSums(ctx, q.Subject, q.SubjectID); err != nil {
			return nil, wrap(err, "%s", what)
		}
	}
	arr, _ := v.([]any)
	if len(arr) != 2 {
		return nil, fmt.Errorf("redis: %s: unexpected reply", what)
	}
	nowStr, _ := arr[0].(string)
	record, _ := arr[1].(string)
	now, err := micros(nowStr)
	if err != nil {
		return nil, fmt.Errorf("redis: %s: %w", what, err)
	}
	out, err := decodeQuota(quotaField(q.Subject, q.SubjectID), record)
	if err != nil {
		return nil, fmt.Errorf("redis: %s: %w", what, err)
	}
	if q.Subject == pharox.QuotaConsumer && q.MaxConcurrentLeases > 0 {
		if err := s.trackConsumer(ctx, q.SubjectID); err != nil {
			return nil, wrap(err, "%s", what)
		}
	}
	rolled := out.RollPeriods(now)
	return &rolled, nil
}

// trackConsumer counts the consumer's active leases of every pool in its
// set of active leases (track.lua), so that a max_concurrent_leases quota
// counts the leases it held before the quota. Leases taken meanwhile are
// counted by their acquisitions, which already see the quota.
func (s *Store) trackConsumer(ctx context.Context, id uuid.UUID) error {
	pools, err := s.rdb.HVals(ctx, s.prefix+"pools").Result()
	if err != nil {
		return err
	}
	for _, pid := range pools {
		if _, err := s.run(ctx, scriptTrack, id.String(), pid); err != nil {
			return err
		}
	}
	return nil
}

// usageSums sums the subject's bytes in the buckets of the current day
// and month before the current hour, as set_quota.lua takes them: "day
// month hour bytes_day bytes_month" (day and month in us, hour in unix
// seconds).
func (s *Store) usageSums(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) (string, error) {
	now, err := s.serverNow(ctx)
	if err != nil {
		return "", err
	}
	day, month, hour := pharox.DayStart(now), pharox.MonthStart(now), now.Truncate(time.Hour)
	// The subject's id sits at a fixed place in a bucket's field.
	at := map[pharox.QuotaSubject]int{pharox.QuotaConsumer: 0, pharox.QuotaProxy: 37, pharox.QuotaPool: 74}[subject]
	want := id.String()
	var bd, bm int64
	err = s.scanBuckets(ctx, month, hour, func(h time.Time, field, value string) error {
		if len(field) < at+36 || field[at:at+36] != want {
			return nil
		}
		n, err := bucketValues(value)
		if err != nil {
			return err
		}
		b := n[2] + n[3]
		bm += b
		if !h.Before(day) {
			bd += b
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%d %d %d %d %d", day.UnixMicro(), month.UnixMicro(), hour.Unix(), bd, bm), nil
}

// bucketValues parses a bucket's value, "leases requests bytes_sent
// bytes_received".
func bucketValues(v string) ([4]int64, error) {
	var n [4]int64
	f := strings.Fields(v)
	if len(f) != 4 {
		return n, fmt.Errorf("malformed usage bucket value %q", v)
	}
	for i, x := range f {
		var err error
		if n[i], err = strconv.ParseInt(x, 10, 64); err != nil {
			return n, fmt.Errorf("malformed usage bucket value %q", v)
		}
	}
	return n, nil
}

// bucketScan is how many fields of an hour's bucket one HSCAN asks for.
const bucketScan = 1000

// scanBuckets calls fn for every field of the hourly buckets that started
// in [since, until) (zero: unbounded), reading outside any script:
// HSCAN in pages, first pages of up to 100 hours pipelined, so that a
// large range neither blocks Redis nor costs a round trip per hour.
func (s *Store) scanBuckets(ctx context.Context, since, until time.Time, fn func(hour time.Time, field, value string) error) error {
	by := &goredis.ZRangeBy{Min: "-inf", Max: "+inf"}
	if !since.IsZero() {
		by.Min = strconv.FormatInt(ceilSeconds(since), 10)
	}
	if !until.IsZero() {
		// An hour's start (whole seconds) is before until exactly when
		// it is before until rounded up to a second.
		by.Max = "(" + strconv.FormatInt(ceilSeconds(until), 10)
	}
	hours, err := s.rdb.ZRangeByScore(ctx, s.prefix+"usage:hours", by).Result()
	if err != nil {
		return err
	}
	for len(hours) > 0 {
		part := hours[:min(100, len(hours))]
		hours = hours[len(part):]
		cmds := make([]*goredis.ScanCmd, len(part))
		if _, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for i, h := range part {
				cmds[i] = p.HScan(ctx, s.prefix+"usage:"+h, 0, "", bucketScan)
			}
			return nil
		}); err != nil {
			return err
		}
		for i, h := range part {
			sec, err := strconv.ParseInt(h, 10, 64)
			if err != nil {
				return fmt.Errorf("malformed usage hour %q", h)
			}
			start := time.Unix(sec, 0).UTC()
			kv, cursor := cmds[i].Val()
			for {
				for j := 0; j+1 < len(kv); j += 2 {
					if err := fn(start, kv[j], kv[j+1]); err != nil {
						return err
					}
				}
				if cursor == 0 {
					break
				}
				if kv, cursor, err = s.rdb.HScan(ctx, s.prefix+"usage:"+h, cursor, "", bucketScan).Result(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// ceilSeconds returns t in unix seconds, rounded up.
func ceilSeconds(t time.Time) int64 {
	sec := t.Unix()
	if t.Nanosecond() > 0 {
		sec++
	}
	return sec
}

// GetQuota returns the subject's quota, counters rolled to the server's now.
func (s *Store) GetQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) (*pharox.Quota, error) {
	what := fmt.Sprintf("get %s quota of %s", subject, id)
	field := quotaField(subject, id)
	var now *goredis.TimeCmd
	var rec *goredis.StringCmd
	_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		now = p.Time(ctx)
		rec = p.HGet(ctx, s.prefix+"quotas", field)
		return nil
	})
	if errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("redis: %s: %w", what, pharox.ErrQuotaNotFound)
	}
	if err != nil {
		return nil, wrap(err, "%s", what)
	}
	q, err := decodeQuota(field, rec.Val())
	if err != nil {
		return nil, fmt.Errorf("redis: %s: %w", what, err)
	}
	rolled := q.RollPeriods(now.Val())
	return &rolled, nil
}

// ListQuotas returns every quota ordered by subject then id, counters
// rolled to the server's now.
func (s *Store) ListQuotas(ctx context.Context) ([]*pharox.Quota, error) {
	var now *goredis.TimeCmd
	var all *goredis.MapStringStringCmd
	if _, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		now = p.Time(ctx)
		all = p.HGetAll(ctx, s.prefix+"quotas")
		return nil
	}); err != nil {
		return nil, wrap(err, "list quotas")
	}
	out := []*pharox.Quota{}
	for field, rec := range all.Val() {
		if strings.HasPrefix(field, "x|") {
			continue // a pool's exhausted-allowance flag
		}
		q, err := decodeQuota(field, rec)
		if err != nil {
			return nil, fmt.Errorf("redis: list quotas: %w", err)
		}
		rolled := q.RollPeriods(now.Val())
		out = append(out, &rolled)
	}
	slices.SortFunc(out, func(a, b *pharox.Quota) int {
		return cmp.Or(cmp.Compare(a.Subject, b.Subject), cmp.Compare(a.SubjectID.String(), b.SubjectID.String()))
	})
	return out, nil
}

// DeleteQuota removes the subject's quota.
func (s *Store) DeleteQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) error {
	if !subject.Valid() {
		return fmt.Errorf("redis: delete quota: %w: unknown subject %q (want consumer, pool or proxy)", pharox.ErrInvalidArgument, subject)
	}
	if _, err := s.run(ctx, scriptDeleteQuota, string(subject), id.String(), callToken()); err != nil {
		return wrap(err, "delete %s quota of %s", subject, id)
	}
	return nil
}

// QueryUsage totals the hourly buckets q selects, reading them outside
// any script (see scanBuckets).
func (s *Store) QueryUsage(ctx context.Context, q pharox.UsageQuery) ([]pharox.UsageRow, error) {
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("redis: query usage: %w", err)
	}
	part := map[pharox.UsageGroup]int{pharox.UsageByConsumer: 0, pharox.UsageByProxy: 1, pharox.UsageByPool: 2, pharox.UsageByTarget: 3}[q.GroupBy]
	var pool, consumer string
	if q.PoolID != uuid.Nil {
		pool = q.PoolID.String()
	}
	if q.ConsumerID != uuid.Nil {
		consumer = q.ConsumerID.String()
	}
	since := q.Since
	if !since.IsZero() {
		since = since.Truncate(pharox.UsageBucket)
	}
	rows := map[string]*pharox.UsageRow{}
	err := s.scanBuckets(ctx, since, q.Until, func(_ time.Time, field, value string) error {
		f := strings.SplitN(field, "|", 4)
		if len(f) != 4 {
			return fmt.Errorf("malformed usage bucket field %q", field)
		}
		if pool != "" && f[2] != pool || consumer != "" && f[0] != consumer {
			return nil
		}
		n, err := bucketValues(value)
		if err != nil {
			return err
		}
		r := rows[f[part]]
		if r == nil {
			r = &pharox.UsageRow{Key: f[part]}
			rows[f[part]] = r
		}
		r.Leases += n[0]
		r.Usage = r.Add(pharox.Usage{Requests: n[1], BytesSent: n[2], BytesReceived: n[3]})
		return nil
	})
	if err != nil {
		return nil, wrap(err, "query usage")
	}
	out := make([]pharox.UsageRow, 0, len(rows))
	for _, r := range rows {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b pharox.UsageRow) int { return cmp.Compare(a.Key, b.Key) })
	return out, nil
}

// purgeHours bounds the hours one purge_usage.lua call deletes.
const purgeHours = 100

// PurgeUsage deletes the hourly buckets that started before the given
// time and returns how many (consumer, proxy, pool, target) groups they
// held, as SQL stores count rows.
func (s *Store) PurgeUsage(ctx context.Context, before time.Time) (int, error) {
	bound := ceilSeconds(before)
	total := 0
	for {
		v, err := s.run(ctx, scriptPurgeUsage, bound, purgeHours, callToken())
		if err != nil {
			return total, wrap(err, "purge usage")
		}
		arr, _ := v.([]any)
		if len(arr) != 2 {
			return total, fmt.Errorf("redis: purge usage: unexpected reply")
		}
		n, _ := arr[0].(int64)
		hours, _ := arr[1].(int64)
		total += int(n)
		if hours < purgeHours {
			return total, nil
		}
	}
}
