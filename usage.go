package pharox

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"
)

// Usage is the traffic one lease carried: what its holder reports when it
// releases the lease (see [Manager.ReleaseWithUsage]). The gateway and the
// transport measure it; other holders report what they know.
type Usage struct {
	// Requests counts requests sent through the proxy (an HTTP request,
	// or one CONNECT or SOCKS tunnel).
	Requests int64 `json:"requests"`
	// BytesSent counts bytes sent to the proxy: request lines, headers
	// and bodies, or a tunnel's payload from the client.
	BytesSent int64 `json:"bytes_sent"`
	// BytesReceived counts bytes received from the proxy.
	BytesReceived int64 `json:"bytes_received"`
}

// Bytes returns BytesSent + BytesReceived: what byte quotas count.
func (u Usage) Bytes() int64 { return u.BytesSent + u.BytesReceived }

// IsZero reports whether u counts nothing.
func (u Usage) IsZero() bool { return u == Usage{} }

// Add returns u + o.
func (u Usage) Add(o Usage) Usage {
	return Usage{Requests: u.Requests + o.Requests, BytesSent: u.BytesSent + o.BytesSent, BytesReceived: u.BytesReceived + o.BytesReceived}
}

// MaxUsageBytes bounds each counter of one report (1 PiB): more from one
// lease is a bug or a lie, and the bound keeps sums far from overflow.
const MaxUsageBytes = 1 << 50

// Validate checks a usage report: no counter negative or above
// MaxUsageBytes.
func (u Usage) Validate() error {
	for _, c := range []struct {
		name string
		v    int64
	}{{"requests", u.Requests}, {"bytes_sent", u.BytesSent}, {"bytes_received", u.BytesReceived}} {
		if c.v < 0 {
			return fmt.Errorf("%w: usage: %s must not be negative, got %d", ErrInvalidArgument, c.name, c.v)
		}
		if c.v > MaxUsageBytes {
			return fmt.Errorf("%w: usage: %s %d is above the maximum %d", ErrInvalidArgument, c.name, c.v, int64(MaxUsageBytes))
		}
	}
	return nil
}

// UsageGroup says what [UsageQuery] totals are grouped by.
type UsageGroup string

// Usage groupings.
const (
	UsageByConsumer UsageGroup = "consumer"
	UsageByProxy    UsageGroup = "proxy"
	UsageByPool     UsageGroup = "pool"
	UsageByTarget   UsageGroup = "target"
)

// Valid reports whether g is a known grouping.
func (g UsageGroup) Valid() bool {
	switch g {
	case UsageByConsumer, UsageByProxy, UsageByPool, UsageByTarget:
		return true
	}
	return false
}

// ParseUsageGroup parses a grouping name; empty means UsageByConsumer.
func ParseUsageGroup(s string) (UsageGroup, error) {
	if s == "" {
		return UsageByConsumer, nil
	}
	g := UsageGroup(s)
	if !g.Valid() {
		return "", fmt.Errorf("%w: unknown usage grouping %q (want consumer, proxy, pool or target)", ErrInvalidArgument, s)
	}
	return g, nil
}

// UsageBucket is the length of the buckets stores aggregate usage in.
const UsageBucket = time.Hour

// UsageQuery selects usage totals for [UsageStore.QueryUsage].
type UsageQuery struct {
	// GroupBy is what rows are totalled by; required.
	GroupBy UsageGroup
	// Since and Until bound the hours counted: a bucket counts when
	// Since.Truncate(UsageBucket) <= its start < Until. Zero Since means
	// from the first bucket kept; zero Until means up to now.
	Since, Until time.Time
	// PoolID and ConsumerID, when not zero, count only that pool's or
	// that consumer's usage.
	PoolID     uuid.UUID
	ConsumerID uuid.UUID
}

// Validate checks a query as a store receives it.
func (q *UsageQuery) Validate() error {
	if !q.GroupBy.Valid() {
		return fmt.Errorf("%w: unknown usage grouping %q (want consumer, proxy, pool or target)", ErrInvalidArgument, q.GroupBy)
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Since.Before(q.Until) {
		return fmt.Errorf("%w: usage: since (%s) must be before until (%s)", ErrInvalidArgument, q.Since.Format(time.RFC3339), q.Until.Format(time.RFC3339))
	}
	return nil
}

// UsageRow is the usage of one consumer, proxy, pool or target over a
// query's hours.
type UsageRow struct {
	// Key identifies the group: the consumer, proxy or pool id, or the
	// normalized target ("" for leases taken without a target).
	Key string `json:"key"`
	// Name is the consumer or pool name, or the proxy's address, when the
	// Manager could resolve it; stores leave it empty.
	Name string `json:"name,omitempty"`
	// Leases counts the released leases that reported usage.
	Leases int64 `json:"leases"`
	Usage
}

// QuotaSubject is what a [Quota] limits.
type QuotaSubject string

// Quota subjects.
const (
	QuotaConsumer QuotaSubject = "consumer"
	QuotaPool     QuotaSubject = "pool"
	QuotaProxy    QuotaSubject = "proxy"
)

// Valid reports whether s is a known subject.
func (s QuotaSubject) Valid() bool {
	return s == QuotaConsumer || s == QuotaPool || s == QuotaProxy
}

// Quota limit names, as QuotaError.Limit and API details give them.
const (
	LimitMaxConcurrentLeases = "max_concurrent_leases"
	LimitRequestsPerMinute   = "requests_per_minute"
	LimitBytesPerDay         = "bytes_per_day"
	LimitBytesPerMonth       = "bytes_per_month"
)

// QuotaLimits are the limits of one quota; zero means unlimited.
type QuotaLimits struct {
	// MaxConcurrentLeases caps the subject's active, unexpired leases; an
	// acquisition that would exceed it fails inside the store's atomic
	// acquisition, like a proxy's max_concurrency. Consumers and pools.
	MaxConcurrentLeases int `json:"max_concurrent_leases,omitempty"`
	// RequestsPerMinute caps acquisitions: a token bucket holding at most
	// this many tokens, refilled at this many per minute; each successful
	// acquisition takes one. Consumers and pools.
	RequestsPerMinute int `json:"requests_per_minute,omitempty"`
	// BytesPerDay and BytesPerMonth cap the traffic (Usage.Bytes) reported
	// at release within the current UTC day or calendar month. They are
	// checked at acquisition, so they are soft by the traffic of the leases
	// active when the limit is reached. A consumer or pool over one is
	// refused; a proxy over one is not leased until the period ends (a
	// provider's traffic allowance).
	BytesPerDay   int64 `json:"bytes_per_day,omitempty"`
	BytesPerMonth int64 `json:"bytes_per_month,omitempty"`
}

// IsZero reports whether l limits nothing.
func (l QuotaLimits) IsZero() bool { return l == QuotaLimits{} }

// Quota is the limits set on one consumer, pool or proxy, with the
// counters the store keeps to enforce them.
type Quota struct {
	Subject   QuotaSubject `json:"subject"`
	SubjectID uuid.UUID    `json:"subject_id"`
	// Name is the consumer or pool name, or the proxy's address, filled in
	// by the Manager; stores leave it empty.
	Name string `json:"name,omitempty"`
	QuotaLimits

	// Day and BytesToday: the traffic counted in the UTC day starting at
	// Day. Month and BytesThisMonth: in the calendar month starting at
	// Month. Stores add each release's Usage.Bytes to them (see
	// [Quota.AddBytes]); a store setting a quota starts them from its
	// usage aggregates.
	Day            time.Time `json:"day"`
	BytesToday     int64     `json:"bytes_today"`
	Month          time.Time `json:"month"`
	BytesThisMonth int64     `json:"bytes_this_month"`
	// Tokens and TokensAt are the request bucket: Tokens left at TokensAt
	// (see [Quota.TakeToken]). A new quota starts full.
	Tokens   float64   `json:"-"`
	TokensAt time.Time `json:"-"`
	// UpdatedAt is when the limits were last set.
	UpdatedAt time.Time `json:"updated_at"`
}

// Validate checks a quota as a store receives it: a known subject and id,
// no negative limit, and only the limits the subject supports (a proxy
// takes only byte limits: its concurrency is max_concurrency).
func (q *Quota) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: quota: "+format, append([]any{ErrInvalidArgument}, args...)...)
	}
	if !q.Subject.Valid() {
		return bad("unknown subject %q (want consumer, pool or proxy)", q.Subject)
	}
	if q.SubjectID == uuid.Nil {
		return bad("%s id is empty", q.Subject)
	}
	switch {
	case q.MaxConcurrentLeases < 0:
		return bad("%s must not be negative, got %d", LimitMaxConcurrentLeases, q.MaxConcurrentLeases)
	case q.RequestsPerMinute < 0:
		return bad("%s must not be negative, got %d", LimitRequestsPerMinute, q.RequestsPerMinute)
	case q.BytesPerDay < 0:
		return bad("%s must not be negative, got %d", LimitBytesPerDay, q.BytesPerDay)
	case q.BytesPerMonth < 0:
		return bad("%s must not be negative, got %d", LimitBytesPerMonth, q.BytesPerMonth)
	case q.Subject == QuotaProxy && q.MaxConcurrentLeases > 0:
		return bad("a proxy takes no %s: set its max_concurrency", LimitMaxConcurrentLeases)
	case q.Subject == QuotaProxy && q.RequestsPerMinute > 0:
		return bad("a proxy takes no %s", LimitRequestsPerMinute)
	case q.QuotaLimits.IsZero():
		return bad("no limit set (delete the quota instead)")
	}
	return nil
}

// Clone returns a copy of q.
func (q *Quota) Clone() *Quota {
	if q == nil {
		return nil
	}
	c := *q
	return &c
}

// DayStart returns the start of t's UTC day.
func DayStart(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// MonthStart returns the start of t's UTC calendar month.
func MonthStart(t time.Time) time.Time {
	y, m, _ := t.UTC().Date()
	return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
}

// RollPeriods returns q with its byte counters as of now: a counter whose
// day or month has ended restarts at 0 in the current one. Stores apply it
// before reading or adding to the counters; reads return it rolled.
func (q Quota) RollPeriods(now time.Time) Quota {
	if day := DayStart(now); !q.Day.Equal(day) {
		q.Day, q.BytesToday = day, 0
	}
	if month := MonthStart(now); !q.Month.Equal(month) {
		q.Month, q.BytesThisMonth = month, 0
	}
	return q
}

// AddBytes is the reference rule for a release reporting n bytes at now:
// the counters roll (see RollPeriods) and both grow by n.
func (q Quota) AddBytes(n int64, now time.Time) Quota {
	q = q.RollPeriods(now)
	q.BytesToday += n
	q.BytesThisMonth += n
	return q
}

// RefillTokens returns the bucket's tokens at now: Tokens plus
// RequestsPerMinute per minute since TokensAt, at most RequestsPerMinute.
// A bucket never used (zero TokensAt) is full.
func (q Quota) RefillTokens(now time.Time) float64 {
	capacity := float64(q.RequestsPerMinute)
	if q.TokensAt.IsZero() {
		return capacity
	}
	elapsed := max(now.Sub(q.TokensAt), 0)
	return min(capacity, q.Tokens+elapsed.Minutes()*capacity)
}

// Admit is the reference rule stores mirror inside an acquisition, before
// choosing a proxy, for a consumer or pool quota: active is the subject's
// active, unexpired leases at now. It returns nil when an acquisition may
// go on, or the QuotaError of the first limit exceeded, checked in this
// order: max_concurrent_leases (RetryAfter 1s), bytes_per_day,
// bytes_per_month (RetryAfter: until the period ends),
// requests_per_minute (RetryAfter: until a token is back). It takes no
// token: a store takes one with TakeToken once a proxy is leased, so an
// acquisition that fails takes none.
func (q Quota) Admit(active int, now time.Time) error {
	exceeded := func(limit string, value int64, retry time.Duration) error {
		return &QuotaError{Subject: q.Subject, SubjectID: q.SubjectID, Limit: limit, Value: value, RetryAfter: retry}
	}
	r := q.RollPeriods(now)
	switch {
	case q.MaxConcurrentLeases > 0 && active >= q.MaxConcurrentLeases:
		return exceeded(LimitMaxConcurrentLeases, int64(q.MaxConcurrentLeases), time.Second)
	case q.BytesPerDay > 0 && r.BytesToday >= q.BytesPerDay:
		return exceeded(LimitBytesPerDay, q.BytesPerDay, r.Day.AddDate(0, 0, 1).Sub(now))
	case q.BytesPerMonth > 0 && r.BytesThisMonth >= q.BytesPerMonth:
		return exceeded(LimitBytesPerMonth, q.BytesPerMonth, r.Month.AddDate(0, 1, 0).Sub(now))
	case q.RequestsPerMinute > 0:
		if tokens := q.RefillTokens(now); tokens < 1 {
			wait := time.Duration(math.Ceil((1 - tokens) * float64(time.Minute) / float64(q.RequestsPerMinute)))
			return exceeded(LimitRequestsPerMinute, int64(q.RequestsPerMinute), wait)
		}
	}
	return nil
}

// TakeToken returns q with one token taken from its request bucket at now
// (after a refill). Call it only after Admit allowed the acquisition; a
// quota without RequestsPerMinute is returned unchanged.
func (q Quota) TakeToken(now time.Time) Quota {
	if q.RequestsPerMinute <= 0 {
		return q
	}
	q.Tokens = q.RefillTokens(now) - 1
	q.TokensAt = now
	return q
}

// Exhausted reports whether a proxy quota's traffic allowance is used up
// at now: such a proxy is not a candidate until ExhaustedUntil.
func (q Quota) Exhausted(now time.Time) bool {
	return !q.ExhaustedUntil(now).IsZero()
}

// ExhaustedUntil returns when the used-up allowance resets (the end of the
// day or month over its limit, the later if both), or the zero time when
// the quota is not used up at now.
func (q Quota) ExhaustedUntil(now time.Time) time.Time {
	r := q.RollPeriods(now)
	var until time.Time
	if q.BytesPerDay > 0 && r.BytesToday >= q.BytesPerDay {
		until = r.Day.AddDate(0, 0, 1)
	}
	if q.BytesPerMonth > 0 && r.BytesThisMonth >= q.BytesPerMonth {
		until = r.Month.AddDate(0, 1, 0)
	}
	return until
}

// ErrQuotaExceeded means an acquisition was refused because a consumer or
// pool is over one of its quotas. The error is a *QuotaError saying which
// limit and when to retry; the service answers 429 with Retry-After.
var ErrQuotaExceeded = errors.New("pharox: quota exceeded")

// ErrQuotaNotFound means the subject has no quota.
var ErrQuotaNotFound = errors.New("pharox: quota not found")

// QuotaError is the error of an acquisition refused by a quota. It matches
// ErrQuotaExceeded with errors.Is.
type QuotaError struct {
	Subject   QuotaSubject
	SubjectID uuid.UUID
	// Name is the consumer or pool name, when the Manager knows it.
	Name string
	// Limit is the limit exceeded (LimitMaxConcurrentLeases, ...), Value
	// its setting.
	Limit string
	Value int64
	// RetryAfter is when the acquisition may succeed at the earliest.
	RetryAfter time.Duration
}

func (e *QuotaError) Error() string {
	who := e.SubjectID.String()
	if e.Name != "" {
		who = fmt.Sprintf("%q", e.Name)
	}
	return fmt.Sprintf("%s %s is over its quota %s=%d (retry in %s)", e.Subject, who, e.Limit, e.Value, e.RetryAfter.Round(time.Second))
}

// Is makes errors.Is(err, ErrQuotaExceeded) true.
func (e *QuotaError) Is(target error) bool { return target == ErrQuotaExceeded }

// UsageStore keeps usage aggregates and quotas; it is part of [Storage].
//
// # Metering
//
// ReleaseLease with a usage report stores it on the ended lease
// (Lease.Usage) and, in the same operation (one extra statement or script
// call at most), adds it to the hourly bucket of (hour of the release,
// consumer, proxy, pool, lease target) and to the byte counters of the
// quotas of that consumer, pool and proxy, if any (see [Quota.AddBytes]).
// A release retried after it acted counts nothing again. Leases that expire
// report nothing.
//
// # Quotas
//
// AcquireLease enforces the quotas of the request's consumer and pool
// inside its atomic acquisition, following [Quota.Admit] and
// [Quota.TakeToken]: no interleaving of acquisitions, from any number of
// processes, leaves a subject with more active unexpired leases than its
// MaxConcurrentLeases, or takes more tokens than its bucket holds. A proxy
// whose quota is [Quota.Exhausted] is not a candidate. A refused
// acquisition returns a *QuotaError (ErrQuotaExceeded) and takes nothing.
// Quotas of a deleted pool or proxy go with it.
type UsageStore interface {
	// SetQuota creates or replaces the subject's limits, keeping its
	// counters when it had a quota; a new quota's byte counters start
	// from the usage aggregates of the current day and month, and its
	// bucket full. Errors: ErrInvalidArgument (see Quota.Validate), and
	// ErrConsumerNotFound, ErrPoolNotFound or ErrProxyNotFound for an
	// unknown subject.
	SetQuota(ctx context.Context, q Quota) (*Quota, error)
	// GetQuota returns the subject's quota, counters rolled to now
	// (ErrQuotaNotFound).
	GetQuota(ctx context.Context, subject QuotaSubject, id uuid.UUID) (*Quota, error)
	// ListQuotas returns every quota, ordered by subject then id, counters
	// rolled to now.
	ListQuotas(ctx context.Context) ([]*Quota, error)
	// DeleteQuota removes the subject's quota (ErrQuotaNotFound).
	DeleteQuota(ctx context.Context, subject QuotaSubject, id uuid.UUID) error
	// QueryUsage totals the hourly buckets q selects, one row per group,
	// ordered by Key. Errors: ErrInvalidArgument. Its cost grows with the
	// buckets selected, not with leases.
	QueryUsage(ctx context.Context, q UsageQuery) ([]UsageRow, error)
	// PurgeUsage deletes the buckets that started before the given time
	// and returns how many.
	PurgeUsage(ctx context.Context, before time.Time) (int, error)
}
