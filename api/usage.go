package api

import (
	"math"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// QuotaRefusal is the structured part of a 429 answer: which quota
// refused the acquisition. The answer's detail says the same in one
// sentence, and its Retry-After header when to try again.
type QuotaRefusal struct {
	// Subject is consumer or pool.
	Subject   string    `json:"subject"`
	SubjectID uuid.UUID `json:"subject_id"`
	// Name is the consumer's or pool's name.
	Name string `json:"name,omitempty"`
	// Limit is the limit exceeded (max_concurrent_leases,
	// requests_per_minute, bytes_per_day or bytes_per_month) and Value
	// its setting.
	Limit string `json:"limit"`
	Value int64  `json:"value"`
	// RetryAfterSeconds repeats the Retry-After header.
	RetryAfterSeconds int64 `json:"retry_after_seconds"`
}

// RetryAfterSeconds is how a refusal's wait goes on the wire: whole
// seconds, rounded up, at least 1 (a client must not retry at once).
func RetryAfterSeconds(d time.Duration) int64 {
	return max(1, int64(math.Ceil(d.Seconds())))
}

// FromQuotaError converts a refusal.
func FromQuotaError(e *pharox.QuotaError) QuotaRefusal {
	return QuotaRefusal{Subject: string(e.Subject), SubjectID: e.SubjectID, Name: e.Name,
		Limit: e.Limit, Value: e.Value, RetryAfterSeconds: RetryAfterSeconds(e.RetryAfter)}
}

// Model converts the refusal back into the error a local Manager returns;
// retryAfter, when positive, is the answer's Retry-After header and wins
// over the body's copy.
func (q *QuotaRefusal) Model(retryAfter time.Duration) *pharox.QuotaError {
	if retryAfter <= 0 {
		retryAfter = time.Duration(q.RetryAfterSeconds) * time.Second
	}
	return &pharox.QuotaError{Subject: pharox.QuotaSubject(q.Subject), SubjectID: q.SubjectID, Name: q.Name,
		Limit: q.Limit, Value: q.Value, RetryAfter: retryAfter}
}

// QuotaLimits is the body of PUT /v1/quotas/{subject}/{name_or_id}: the
// limits to set, zero or absent meaning unlimited. At least one must be
// set; a proxy takes only the byte limits.
type QuotaLimits struct {
	MaxConcurrentLeases int   `json:"max_concurrent_leases,omitempty"`
	RequestsPerMinute   int   `json:"requests_per_minute,omitempty"`
	BytesPerDay         int64 `json:"bytes_per_day,omitempty"`
	BytesPerMonth       int64 `json:"bytes_per_month,omitempty"`
}

// FromQuotaLimits converts limits to the wire.
func FromQuotaLimits(l pharox.QuotaLimits) QuotaLimits {
	return QuotaLimits{MaxConcurrentLeases: l.MaxConcurrentLeases, RequestsPerMinute: l.RequestsPerMinute,
		BytesPerDay: l.BytesPerDay, BytesPerMonth: l.BytesPerMonth}
}

// Model converts the wire limits into the model.
func (l QuotaLimits) Model() pharox.QuotaLimits {
	return pharox.QuotaLimits{MaxConcurrentLeases: l.MaxConcurrentLeases, RequestsPerMinute: l.RequestsPerMinute,
		BytesPerDay: l.BytesPerDay, BytesPerMonth: l.BytesPerMonth}
}

// Quota is a consumer's, pool's or proxy's quota on the wire: its limits
// (zero is unlimited) and the traffic counted against the byte limits in
// the current UTC day and calendar month.
type Quota struct {
	Subject   string    `json:"subject"`
	SubjectID uuid.UUID `json:"subject_id"`
	// Name is the consumer or pool name, or the proxy's address.
	Name                string `json:"name,omitempty"`
	MaxConcurrentLeases int    `json:"max_concurrent_leases"`
	RequestsPerMinute   int    `json:"requests_per_minute"`
	BytesPerDay         int64  `json:"bytes_per_day"`
	BytesPerMonth       int64  `json:"bytes_per_month"`
	// Day and BytesToday: the bytes counted since Day (UTC midnight);
	// Month and BytesThisMonth: since Month (the first of the month).
	Day            Time  `json:"day"`
	BytesToday     int64 `json:"bytes_today"`
	Month          Time  `json:"month"`
	BytesThisMonth int64 `json:"bytes_this_month"`
	// ExhaustedUntil, for a proxy over its traffic allowance, is when the
	// allowance resets; until then the proxy is not leased.
	ExhaustedUntil *Time `json:"exhausted_until,omitempty"`
	UpdatedAt      Time  `json:"updated_at"`
}

// FromQuota converts a stored quota; now decides ExhaustedUntil.
func FromQuota(q *pharox.Quota, now time.Time) Quota {
	out := Quota{
		Subject: string(q.Subject), SubjectID: q.SubjectID, Name: q.Name,
		MaxConcurrentLeases: q.MaxConcurrentLeases, RequestsPerMinute: q.RequestsPerMinute,
		BytesPerDay: q.BytesPerDay, BytesPerMonth: q.BytesPerMonth,
		Day: Time{q.Day}, BytesToday: q.BytesToday, Month: Time{q.Month}, BytesThisMonth: q.BytesThisMonth,
		UpdatedAt: Time{q.UpdatedAt},
	}
	if q.Subject == pharox.QuotaProxy {
		if until := q.ExhaustedUntil(now); !until.IsZero() {
			out.ExhaustedUntil = &Time{until}
		}
	}
	return out
}

// Model converts the wire quota back into the model. The request bucket
// does not travel: Tokens and TokensAt stay zero.
func (q *Quota) Model() *pharox.Quota {
	return &pharox.Quota{
		Subject: pharox.QuotaSubject(q.Subject), SubjectID: q.SubjectID, Name: q.Name,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: q.MaxConcurrentLeases, RequestsPerMinute: q.RequestsPerMinute,
			BytesPerDay: q.BytesPerDay, BytesPerMonth: q.BytesPerMonth},
		Day: q.Day.Time, BytesToday: q.BytesToday, Month: q.Month.Time, BytesThisMonth: q.BytesThisMonth,
		UpdatedAt: q.UpdatedAt.Time,
	}
}

// UsageRow is the traffic of one consumer, proxy, pool or target.
type UsageRow struct {
	// Key is the consumer, proxy or pool id, or the target ("" for
	// leases taken without one).
	Key string `json:"key"`
	// Name is the consumer or pool name, or the proxy's address, when it
	// still exists.
	Name string `json:"name,omitempty"`
	// Leases counts the released leases that reported usage.
	Leases        int64 `json:"leases"`
	Requests      int64 `json:"requests"`
	BytesSent     int64 `json:"bytes_sent"`
	BytesReceived int64 `json:"bytes_received"`
}

// FromUsageRow converts one row.
func FromUsageRow(r pharox.UsageRow) UsageRow {
	return UsageRow{Key: r.Key, Name: r.Name, Leases: r.Leases, Requests: r.Requests,
		BytesSent: r.BytesSent, BytesReceived: r.BytesReceived}
}

// Model converts the wire row back into the model.
func (r *UsageRow) Model() pharox.UsageRow {
	return pharox.UsageRow{Key: r.Key, Name: r.Name, Leases: r.Leases,
		Usage: pharox.Usage{Requests: r.Requests, BytesSent: r.BytesSent, BytesReceived: r.BytesReceived}}
}

// UsageReport answers GET /v1/usage: the traffic reported at release,
// totalled per group over the hours from Since (rounded down to the hour)
// to Until. Since and Until are null when unbounded.
type UsageReport struct {
	GroupBy string     `json:"group_by"`
	Since   *Time      `json:"since"`
	Until   *Time      `json:"until"`
	Rows    []UsageRow `json:"rows"`
}
