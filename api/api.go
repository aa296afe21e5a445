// Package api holds the JSON wire types of the pharox HTTP service, shared
// by the server and the Go client so both sides agree by construction.
//
// The shapes follow the Python pharox service's contract: ids are UUID
// strings, timestamps ISO 8601 with a numeric offset, errors
// {"detail": "..."}. Proxy passwords appear only where a caller is entitled
// to them (see [FromProxy]).
package api

import (
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// TimeLayout is how timestamps go on the wire: ISO 8601 with a numeric
// offset (+00:00 rather than Z) and always six fractional digits, which
// every Python datetime parser accepts.
const TimeLayout = "2006-01-02T15:04:05.000000-07:00"

// Time is a time.Time that marshals with [TimeLayout] in UTC and accepts
// any RFC 3339 timestamp. Optional timestamps are *Time, so absent ones are
// omitted or null.
type Time struct{ time.Time }

// NewTime wraps t for the wire.
func NewTime(t time.Time) Time { return Time{t} }

// TimePtr wraps *t for the wire; nil stays nil.
func TimePtr(t *time.Time) *Time {
	if t == nil {
		return nil
	}
	return &Time{*t}
}

// MarshalJSON implements json.Marshaler. It must be MarshalJSON, not
// MarshalText: the embedded time.Time's own MarshalJSON would win.
func (t Time) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, len(TimeLayout)+2)
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, TimeLayout)
	return append(b, '"'), nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (t *Time) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return fmt.Errorf("timestamp must be an ISO 8601 string, got %s", b)
	}
	parsed, err := time.Parse(time.RFC3339Nano, string(b[1:len(b)-1]))
	if err != nil {
		return fmt.Errorf("timestamp %s is not ISO 8601 with offset", b)
	}
	t.Time = parsed
	return nil
}

// Error is the body of every error response.
type Error struct {
	Detail string `json:"detail"`
	// Quota says which quota refused an acquisition, on a 429.
	Quota *QuotaRefusal `json:"quota,omitempty"`
}

// Pool is a pool on the wire.
type Pool struct {
	ID          uuid.UUID `json:"id"`
	Name        string    `json:"name"`
	Description string    `json:"description"`
	CreatedAt   *Time     `json:"created_at,omitempty"`
}

// FromPool converts a stored pool.
func FromPool(p *pharox.Pool) Pool {
	out := Pool{ID: p.ID, Name: p.Name, Description: p.Description}
	if !p.CreatedAt.IsZero() {
		out.CreatedAt = &Time{p.CreatedAt}
	}
	return out
}

// CreatePoolRequest is the body of POST /v1/pools/.
type CreatePoolRequest struct {
	Name        string `json:"name"`
	Description string `json:"description"`
}

// Consumer is a consumer on the wire.
type Consumer struct {
	ID   uuid.UUID `json:"id"`
	Name string    `json:"name"`
}

// CreateConsumerRequest is the body of POST /v1/consumers/ (idempotent by
// name).
type CreateConsumerRequest struct {
	Name string `json:"name"`
}

// Proxy is a proxy on the wire. Password and URL (which embeds the
// password) are filled only when the caller may see secrets: in a lease
// handed to its consumer, or for an admin who asks explicitly.
type Proxy struct {
	ID       uuid.UUID `json:"id"`
	PoolID   uuid.UUID `json:"pool_id"`
	Host     string    `json:"host"`
	Port     int       `json:"port"`
	Protocol string    `json:"protocol"`
	Username string    `json:"username,omitempty"`
	Password string    `json:"password,omitempty"`
	URL      string    `json:"url,omitempty"`

	Source    string   `json:"source,omitempty"`
	Country   string   `json:"country,omitempty"`
	City      string   `json:"city,omitempty"`
	ISP       string   `json:"isp,omitempty"`
	ASN       *int     `json:"asn,omitempty"`
	Latitude  *float64 `json:"latitude,omitempty"`
	Longitude *float64 `json:"longitude,omitempty"`
	Tags      []string `json:"tags,omitempty"`

	Status         string `json:"status"`
	MaxConcurrency *int   `json:"max_concurrency"`
	CurrentLeases  int    `json:"current_leases"`

	CheckedAt       *Time  `json:"checked_at,omitempty"`
	LatencyMS       int64  `json:"latency_ms,omitempty"`
	LastError       string `json:"last_error,omitempty"`
	LastStatusCode  int    `json:"last_status_code,omitempty"`
	FailureStreak   int    `json:"failure_streak"`
	StatusChangedAt *Time  `json:"status_changed_at,omitempty"`
	CreatedAt       *Time  `json:"created_at,omitempty"`
}

// FromProxy converts a stored proxy; withSecrets includes the password and
// the credential-bearing URL.
func FromProxy(p *pharox.Proxy, withSecrets bool) Proxy {
	out := Proxy{
		ID: p.ID, PoolID: p.PoolID, Host: p.Host, Port: p.Port, Protocol: string(p.Protocol),
		Source: p.Source, Country: p.Country, City: p.City, ISP: p.ISP, ASN: p.ASN,
		Latitude: p.Latitude, Longitude: p.Longitude, Tags: p.Tags,
		Status: string(p.Status), MaxConcurrency: p.MaxConcurrency, CurrentLeases: p.CurrentLeases,
		CheckedAt: TimePtr(p.CheckedAt), LatencyMS: p.LatencyMS, LastError: p.LastError,
		LastStatusCode: p.LastStatusCode, FailureStreak: p.FailureStreak,
		StatusChangedAt: TimePtr(p.StatusChangedAt),
	}
	if !p.CreatedAt.IsZero() {
		out.CreatedAt = &Time{p.CreatedAt}
	}
	if p.Credentials != nil {
		out.Username = p.Credentials.User
	}
	if withSecrets {
		if p.Credentials != nil {
			out.Password = p.Credentials.Password
		}
		out.URL = p.URL()
	}
	return out
}

// CreateProxyRequest is the body of POST /v1/pools/{pool_id}/proxies/ and
// one element of an import.
type CreateProxyRequest struct {
	Host           string   `json:"host"`
	Port           int      `json:"port"`
	Protocol       string   `json:"protocol"`
	Username       string   `json:"username,omitempty"`
	Password       string   `json:"password,omitempty"`
	Source         string   `json:"source,omitempty"`
	Country        string   `json:"country,omitempty"`
	City           string   `json:"city,omitempty"`
	ISP            string   `json:"isp,omitempty"`
	ASN            *int     `json:"asn,omitempty"`
	Latitude       *float64 `json:"latitude,omitempty"`
	Longitude      *float64 `json:"longitude,omitempty"`
	Tags           []string `json:"tags,omitempty"`
	Status         string   `json:"status,omitempty"`
	MaxConcurrency *int     `json:"max_concurrency,omitempty"`
}

// ToProxy converts the request into a proxy of poolID, normalized and
// validated (errors wrap pharox.ErrInvalidArgument). Protocol defaults to
// http when empty.
func (r *CreateProxyRequest) ToProxy(poolID uuid.UUID) (pharox.Proxy, error) {
	p := pharox.Proxy{
		PoolID: poolID, Host: r.Host, Port: r.Port, Protocol: pharox.Protocol(r.Protocol),
		Source: r.Source, Country: r.Country, City: r.City, ISP: r.ISP, ASN: r.ASN,
		Latitude: r.Latitude, Longitude: r.Longitude, Tags: r.Tags,
		Status: pharox.ProxyStatus(r.Status), MaxConcurrency: r.MaxConcurrency,
	}
	if p.Protocol == "" {
		p.Protocol = pharox.ProtocolHTTP
	}
	if r.Username != "" || r.Password != "" {
		p.Credentials = &pharox.Credentials{User: r.Username, Password: r.Password}
	}
	p.Normalize()
	return p, p.Validate()
}

// FromProxyModel is the inverse of ToProxy, for clients that hold a
// pharox.Proxy and want to create it remotely.
func FromProxyModel(p *pharox.Proxy) CreateProxyRequest {
	r := CreateProxyRequest{
		Host: p.Host, Port: p.Port, Protocol: string(p.Protocol), Source: p.Source,
		Country: p.Country, City: p.City, ISP: p.ISP, ASN: p.ASN, Latitude: p.Latitude,
		Longitude: p.Longitude, Tags: p.Tags, Status: string(p.Status), MaxConcurrency: p.MaxConcurrency,
	}
	if p.Credentials != nil {
		r.Username, r.Password = p.Credentials.User, p.Credentials.Password
	}
	return r
}

// ImportProxiesRequest is the body of POST /v1/pools/{pool_id}/proxies/import:
// all proxies are stored or none.
type ImportProxiesRequest struct {
	Proxies []CreateProxyRequest `json:"proxies"`
}

// ImportProxiesResponse answers an import.
type ImportProxiesResponse struct {
	Created int     `json:"created"`
	Proxies []Proxy `json:"proxies"`
}

// UpdateProxyRequest is the body of PATCH /v1/pools/{pool_id}/proxies/{proxy_id}.
type UpdateProxyRequest struct {
	Status string `json:"status"`
}

// Lease is a lease on the wire. Proxy is set (with its credentials) when the
// lease is handed out by an acquisition.
type Lease struct {
	ID           uuid.UUID `json:"id"`
	ProxyID      uuid.UUID `json:"proxy_id"`
	ConsumerID   uuid.UUID `json:"consumer_id"`
	ConsumerName string    `json:"consumer_name,omitempty"`
	PoolID       uuid.UUID `json:"pool_id"`
	PoolName     string    `json:"pool_name,omitempty"`
	Status       string    `json:"status"`
	AcquiredAt   Time      `json:"acquired_at"`
	ExpiresAt    Time      `json:"expires_at"`
	ReleasedAt   *Time     `json:"released_at,omitempty"`
	SessionKey   string    `json:"session_key,omitempty"`
	// Target is the site the lease was acquired for, if any.
	Target string `json:"target,omitempty"`
	// Usage is the traffic reported at release, if any.
	Usage *pharox.Usage `json:"usage,omitempty"`
	Proxy *Proxy        `json:"proxy,omitempty"`
}

// ReleaseRequest is the optional body of POST /v1/leases/{id}/release: the
// Python SDK sends none (or {}); the gateway and the Go client report the
// traffic the lease carried.
type ReleaseRequest struct {
	Usage *pharox.Usage `json:"usage,omitempty"`
}

// FromLease converts a stored lease; withSecrets includes the proxy's
// password and URL when the lease carries a proxy.
func FromLease(l *pharox.Lease, withSecrets bool) Lease {
	out := Lease{
		ID: l.ID, ProxyID: l.ProxyID, ConsumerID: l.ConsumerID, ConsumerName: l.ConsumerName,
		PoolID: l.PoolID, PoolName: l.PoolName, Status: string(l.Status),
		AcquiredAt: Time{l.AcquiredAt}, ExpiresAt: Time{l.ExpiresAt},
		ReleasedAt: TimePtr(l.ReleasedAt), SessionKey: l.SessionKey,
		Target: l.Target,
	}
	if l.Usage != nil {
		u := *l.Usage
		out.Usage = &u
	}
	if l.Proxy != nil {
		p := FromProxy(l.Proxy, withSecrets)
		out.Proxy = &p
	}
	return out
}

// AcquireRequest is the body of POST /v1/leases/. The pool is named by
// pool_id (the Python contract) or pool_name; the consumer by consumer_id
// (the id of a known consumer, or else a consumer name, as the Python SDK
// sends it) or consumer_name (a name), or neither for the default
// consumer. Names are created on first use.
type AcquireRequest struct {
	PoolID       string `json:"pool_id,omitempty"`
	PoolName     string `json:"pool_name,omitempty"`
	ConsumerID   string `json:"consumer_id,omitempty"`
	ConsumerName string `json:"consumer_name,omitempty"`
	// TTLSeconds is the lease length; omitted means 300.
	TTLSeconds *float64 `json:"ttl_seconds,omitempty"`
	// Strategy names a selector; omitted means first_available.
	Strategy string          `json:"strategy,omitempty"`
	Filters  *pharox.Filters `json:"filters,omitempty"`
	// SessionKey makes the lease sticky; SessionTTLSeconds is how long the
	// binding lives (omitted means 600).
	SessionKey        string   `json:"session_key,omitempty"`
	SessionTTLSeconds *float64 `json:"session_ttl_seconds,omitempty"`
	// WaitSeconds, when positive, waits up to that long for a free slot
	// before answering 409. More than the server's maximum is refused
	// (422).
	WaitSeconds float64 `json:"wait_seconds,omitempty"`
	// Target, when set, is the site the lease is for: a host name,
	// host:port, IP address or URL, normalized to its registrable domain
	// (see pharox.NormalizeTarget). Proxies cooling down for that site are
	// skipped. Omitted means any proxy, as before.
	Target string `json:"target,omitempty"`
}

// RenewRequest is the body of POST /v1/leases/{lease_id}/renew.
type RenewRequest struct {
	TTLSeconds float64 `json:"ttl_seconds"`
}

// OutcomeRequest is the body of POST /v1/leases/{lease_id}/outcome.
type OutcomeRequest struct {
	Kind       string  `json:"kind"`
	LatencyMS  float64 `json:"latency_ms,omitempty"`
	StatusCode int     `json:"status_code,omitempty"`
	Reason     string  `json:"reason,omitempty"`
	// Target, when set, is the site the request went to (as in
	// AcquireRequest): a failure or ban then counts against the proxy for
	// that site only. Report failures of the proxy itself (unreachable,
	// refused its credentials) without one.
	Target string `json:"target,omitempty"`
}

// TargetStats is one site's health in a pool, an element of the answer
// of GET /v1/pools/{pool_id}/targets.
type TargetStats struct {
	// Target is the site (a registrable domain or an IP address).
	Target string `json:"target"`
	// UsableProxies counts the pool's proxies in a leasable status (active
	// or slow) that are not cooling down for the site.
	UsableProxies int `json:"usable_proxies"`
	// CoolingProxies counts the pool's proxies cooling down for the site.
	CoolingProxies int `json:"cooling_proxies"`
	// BansLastHour counts the pool's proxies whose last cool-down for the
	// site started within the last hour.
	BansLastHour int `json:"bans_last_hour"`
}

// FromTargetStats converts one site's pool stats.
func FromTargetStats(s *pharox.TargetStats) TargetStats {
	return TargetStats{Target: s.Target, UsableProxies: s.UsableProxies, CoolingProxies: s.CoolingProxies, BansLastHour: s.BansLastHour}
}

// TargetState is a proxy's health for one site, an element of the answer
// of GET /v1/pools/{pool_id}/proxies/{proxy_id}/targets.
type TargetState struct {
	ProxyID uuid.UUID `json:"proxy_id"`
	Target  string    `json:"target"`
	// Cooling tells whether the proxy is cooling down for the site now
	// (CoolingUntil in the future, by the server's clock).
	Cooling bool `json:"cooling"`
	// FailureStreak counts failures in a row for the site.
	FailureStreak int `json:"failure_streak"`
	// Bans counts cool-downs in a row; each lasts twice the one before.
	Bans           int    `json:"bans"`
	CoolingUntil   *Time  `json:"cooling_until,omitempty"`
	BannedAt       *Time  `json:"banned_at,omitempty"`
	LastReason     string `json:"last_reason,omitempty"`
	LastStatusCode int    `json:"last_status_code,omitempty"`
	LastSuccessAt  *Time  `json:"last_success_at,omitempty"`
	LastFailureAt  *Time  `json:"last_failure_at,omitempty"`
	UpdatedAt      Time   `json:"updated_at"`
}

// FromTargetState converts a proxy's state for one site; now decides
// Cooling.
func FromTargetState(s *pharox.TargetState, now time.Time) TargetState {
	return TargetState{
		ProxyID: s.ProxyID, Target: s.Target, Cooling: s.CoolingAt(now),
		FailureStreak: s.FailureStreak, Bans: s.Bans,
		CoolingUntil: TimePtr(s.CoolingUntil), BannedAt: TimePtr(s.BannedAt),
		LastReason: s.LastReason, LastStatusCode: s.LastStatusCode,
		LastSuccessAt: TimePtr(s.LastSuccessAt), LastFailureAt: TimePtr(s.LastFailureAt),
		UpdatedAt: Time{s.UpdatedAt},
	}
}

// PoolStats is a pool's occupancy on the wire.
type PoolStats struct {
	PoolName         string         `json:"pool_name"`
	TotalProxies     int            `json:"total_proxies"`
	ActiveProxies    int            `json:"active_proxies"`
	AvailableProxies int            `json:"available_proxies"`
	LeasedProxies    int            `json:"leased_proxies"`
	TotalLeases      int            `json:"total_leases"`
	ByStatus         map[string]int `json:"by_status"`
	CollectedAt      Time           `json:"collected_at"`
}

// FromPoolStats converts a stats snapshot.
func FromPoolStats(s *pharox.PoolStats) PoolStats {
	out := PoolStats{
		PoolName: s.PoolName, TotalProxies: s.TotalProxies, ActiveProxies: s.ActiveProxies,
		AvailableProxies: s.AvailableProxies, LeasedProxies: s.LeasedProxies,
		TotalLeases: s.TotalLeases, ByStatus: make(map[string]int, len(pharox.AllProxyStatuses)),
		CollectedAt: Time{s.CollectedAt},
	}
	for _, st := range pharox.AllProxyStatuses {
		out.ByStatus[string(st)] = s.ByStatus[st]
	}
	return out
}

// SweepRequest is the body of POST /v1/pools/{pool_id}/health-check.
type SweepRequest struct {
	// TargetURL overrides the server's configured probe target.
	TargetURL string `json:"target_url,omitempty"`
}

// SweepResult answers a sweep: counts of checked proxies by resulting
// status.
type SweepResult struct {
	Pool       string         `json:"pool"`
	Checked    int            `json:"checked"`
	Skipped    int            `json:"skipped"`
	ByStatus   map[string]int `json:"by_status"`
	DurationMS int64          `json:"duration_ms"`
}
