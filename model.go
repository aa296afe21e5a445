package pharox

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Protocol is the protocol a proxy speaks to its clients.
type Protocol string

// Proxy protocols.
const (
	ProtocolHTTP   Protocol = "http"
	ProtocolHTTPS  Protocol = "https"
	ProtocolSOCKS4 Protocol = "socks4"
	ProtocolSOCKS5 Protocol = "socks5"
)

// Valid reports whether p is one of the known protocols.
func (p Protocol) Valid() bool {
	switch p {
	case ProtocolHTTP, ProtocolHTTPS, ProtocolSOCKS4, ProtocolSOCKS5:
		return true
	}
	return false
}

// ParseProtocol parses a protocol name case-insensitively.
func ParseProtocol(s string) (Protocol, error) {
	p := Protocol(strings.ToLower(strings.TrimSpace(s)))
	if !p.Valid() {
		return "", fmt.Errorf("%w: unknown protocol %q (want http, https, socks4 or socks5)", ErrInvalidArgument, s)
	}
	return p, nil
}

// ProxyStatus is the health status of a proxy.
type ProxyStatus string

// Proxy statuses. Active and slow proxies are leasable; strategies that rank
// candidates prefer active ones over slow ones.
const (
	StatusActive   ProxyStatus = "active"
	StatusSlow     ProxyStatus = "slow"
	StatusInactive ProxyStatus = "inactive"
	StatusBanned   ProxyStatus = "banned"
)

// AllProxyStatuses lists every proxy status, in rank order.
var AllProxyStatuses = []ProxyStatus{StatusActive, StatusSlow, StatusInactive, StatusBanned}

// Valid reports whether s is one of the known statuses.
func (s ProxyStatus) Valid() bool {
	switch s {
	case StatusActive, StatusSlow, StatusInactive, StatusBanned:
		return true
	}
	return false
}

// Leasable reports whether proxies in this status may be leased.
func (s ProxyStatus) Leasable() bool { return s == StatusActive || s == StatusSlow }

// Rank orders statuses for strategies that rank candidates: lower is better.
func (s ProxyStatus) Rank() int {
	switch s {
	case StatusActive:
		return 0
	case StatusSlow:
		return 1
	case StatusInactive:
		return 2
	}
	return 3
}

// ParseProxyStatus parses a status name case-insensitively.
func ParseProxyStatus(s string) (ProxyStatus, error) {
	st := ProxyStatus(strings.ToLower(strings.TrimSpace(s)))
	if !st.Valid() {
		return "", fmt.Errorf("%w: unknown proxy status %q (want active, slow, inactive or banned)", ErrInvalidArgument, s)
	}
	return st, nil
}

// LeaseStatus is the state of a lease.
type LeaseStatus string

// Lease statuses. A lease starts active and ends exactly once, either
// released by its holder or expired (reclaimed after ExpiresAt).
const (
	LeaseActive   LeaseStatus = "active"
	LeaseReleased LeaseStatus = "released"
	LeaseExpired  LeaseStatus = "expired"
)

// Valid reports whether s is one of the known lease statuses.
func (s LeaseStatus) Valid() bool {
	return s == LeaseActive || s == LeaseReleased || s == LeaseExpired
}

// Credentials authenticate a client to a proxy. The password is never
// marshalled to JSON and never printed by String, GoString or slog.
type Credentials struct {
	User     string `json:"user"`
	Password string `json:"-"`
}

// String returns the user name with the password masked.
func (c Credentials) String() string {
	if c.Password == "" {
		return c.User
	}
	return c.User + ":***"
}

// GoString masks the password in %#v output.
func (c Credentials) GoString() string {
	return fmt.Sprintf("pharox.Credentials{User:%q, Password:\"***\"}", c.User)
}

// LogValue masks the password in slog output.
func (c Credentials) LogValue() slog.Value { return slog.StringValue(c.String()) }

// Proxy is one upstream proxy in a pool. Optional fields are pointers: nil
// means unknown (or, for MaxConcurrency, unlimited).
type Proxy struct {
	ID          uuid.UUID    `json:"id"`
	PoolID      uuid.UUID    `json:"pool_id"`
	Host        string       `json:"host"`
	Port        int          `json:"port"`
	Protocol    Protocol     `json:"protocol"`
	Credentials *Credentials `json:"credentials,omitempty"`

	Source    string   `json:"source,omitempty"`
	Country   string   `json:"country,omitempty"`
	City      string   `json:"city,omitempty"`
	ISP       string   `json:"isp,omitempty"`
	ASN       *int     `json:"asn,omitempty"`
	Latitude  *float64 `json:"latitude,omitempty"`
	Longitude *float64 `json:"longitude,omitempty"`
	Tags      []string `json:"tags,omitempty"`

	Status ProxyStatus `json:"status"`
	// MaxConcurrency caps simultaneous leases: nil is unlimited, 1 exclusive.
	MaxConcurrency *int `json:"max_concurrency"`
	// CurrentLeases is the number of active leases, maintained by storage in
	// the same atomic operation that creates or ends a lease.
	CurrentLeases int `json:"current_leases"`

	// Health state, written by Storage.ApplyHealthCheckResult.
	CheckedAt       *time.Time `json:"checked_at,omitempty"`
	LatencyMS       int64      `json:"latency_ms,omitempty"`
	LastError       string     `json:"last_error,omitempty"`
	LastStatusCode  int        `json:"last_status_code,omitempty"`
	FailureStreak   int        `json:"failure_streak"`
	StatusChangedAt *time.Time `json:"status_changed_at,omitempty"`

	CreatedAt time.Time `json:"created_at,omitzero"`
}

// proxyBox lets Clone make a deep copy in a single allocation: the pointer
// fields of the copy point into the same box.
type proxyBox struct {
	p                Proxy
	cred             Credentials
	lat, lon         float64
	asn, maxc        int
	checked, changed time.Time
}

// Clone returns a deep copy of p, so callers may mutate it freely.
func (p *Proxy) Clone() *Proxy {
	if p == nil {
		return nil
	}
	b := &proxyBox{p: *p}
	c := &b.p
	if p.Credentials != nil {
		b.cred = *p.Credentials
		c.Credentials = &b.cred
	}
	if p.Latitude != nil {
		b.lat = *p.Latitude
		c.Latitude = &b.lat
	}
	if p.Longitude != nil {
		b.lon = *p.Longitude
		c.Longitude = &b.lon
	}
	if p.ASN != nil {
		b.asn = *p.ASN
		c.ASN = &b.asn
	}
	if p.MaxConcurrency != nil {
		b.maxc = *p.MaxConcurrency
		c.MaxConcurrency = &b.maxc
	}
	if p.CheckedAt != nil {
		b.checked = *p.CheckedAt
		c.CheckedAt = &b.checked
	}
	if p.StatusChangedAt != nil {
		b.changed = *p.StatusChangedAt
		c.StatusChangedAt = &b.changed
	}
	if p.Tags != nil {
		c.Tags = slices.Clone(p.Tags)
	}
	return c
}

// Address returns host:port, with IPv6 hosts in brackets.
func (p *Proxy) Address() string { return net.JoinHostPort(p.Host, strconv.Itoa(p.Port)) }

func (p *Proxy) url() *url.URL {
	u := &url.URL{Scheme: string(p.Protocol), Host: p.Address()}
	switch {
	case p.Credentials == nil || p.Credentials.User == "" && p.Credentials.Password == "":
	case p.Credentials.Password == "":
		u.User = url.User(p.Credentials.User)
	default:
		u.User = url.UserPassword(p.Credentials.User, p.Credentials.Password)
	}
	return u
}

// URL returns scheme://user:pass@host:port with escaped credentials. It holds
// the password: hand it to HTTP clients, never to logs.
func (p *Proxy) URL() string { return p.url().String() }

// String returns the proxy URL with the password masked.
func (p *Proxy) String() string {
	if p == nil {
		return "<nil>"
	}
	return p.url().Redacted()
}

// LogValue renders the proxy for slog without its password.
func (p *Proxy) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("id", p.ID.String()),
		slog.String("url", p.String()),
		slog.String("status", string(p.Status)),
	)
}

// HasFreeSlot reports whether another lease fits under MaxConcurrency.
func (p *Proxy) HasFreeSlot() bool {
	return p.MaxConcurrency == nil || p.CurrentLeases < *p.MaxConcurrency
}

// Leasable reports whether p may be leased now: a leasable status and a
// free slot.
func (p *Proxy) Leasable() bool { return p.Status.Leasable() && p.HasFreeSlot() }

// Normalize trims and canonicalises fields in place (upper-case country,
// lower-case protocol and status, unbracketed IPv6 host, default status
// active) so that equal proxies compare equal across stores.
func (p *Proxy) Normalize() {
	p.Host = strings.TrimSpace(p.Host)
	if strings.HasPrefix(p.Host, "[") && strings.HasSuffix(p.Host, "]") {
		p.Host = p.Host[1 : len(p.Host)-1]
	}
	p.Protocol = Protocol(strings.ToLower(strings.TrimSpace(string(p.Protocol))))
	p.Status = ProxyStatus(strings.ToLower(strings.TrimSpace(string(p.Status))))
	if p.Status == "" {
		p.Status = StatusActive
	}
	p.Country = strings.ToUpper(strings.TrimSpace(p.Country))
	p.City = strings.TrimSpace(p.City)
	p.Source = strings.TrimSpace(p.Source)
	p.ISP = strings.TrimSpace(p.ISP)
	if len(p.Tags) > 0 {
		tags := make([]string, 0, len(p.Tags))
		for _, t := range p.Tags {
			if t = strings.TrimSpace(t); t != "" && !slices.Contains(tags, t) {
				tags = append(tags, t)
			}
		}
		p.Tags = tags
	}
}

// Validate reports the first invalid field of p as an ErrInvalidArgument.
// Call Normalize first.
func (p *Proxy) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: proxy: "+format, append([]any{ErrInvalidArgument}, args...)...)
	}
	if err := ValidateHost(p.Host); err != nil {
		return err
	}
	if p.Port < 1 || p.Port > 65535 {
		return bad("port %d out of range 1-65535", p.Port)
	}
	if !p.Protocol.Valid() {
		return bad("unknown protocol %q (want http, https, socks4 or socks5)", p.Protocol)
	}
	if !p.Status.Valid() {
		return bad("unknown status %q (want active, slow, inactive or banned)", p.Status)
	}
	if p.MaxConcurrency != nil && *p.MaxConcurrency < 1 {
		return bad("max_concurrency %d must be at least 1 (omit it for unlimited)", *p.MaxConcurrency)
	}
	if p.CurrentLeases < 0 {
		return bad("current_leases %d is negative", p.CurrentLeases)
	}
	if (p.Latitude == nil) != (p.Longitude == nil) {
		return bad("latitude and longitude must be given together")
	}
	if p.Latitude != nil {
		if err := validateLatLon(*p.Latitude, *p.Longitude); err != nil {
			return err
		}
	}
	if p.ASN != nil && *p.ASN < 0 {
		return bad("asn %d is negative", *p.ASN)
	}
	if p.Credentials != nil && strings.ContainsAny(p.Credentials.User+p.Credentials.Password, "\x00\r\n") {
		return bad("credentials contain a NUL or line break")
	}
	return nil
}

// ValidateHost accepts an IPv4 or IPv6 address or a DNS name.
func ValidateHost(host string) error {
	if host == "" {
		return fmt.Errorf("%w: proxy: host is empty", ErrInvalidArgument)
	}
	if net.ParseIP(host) != nil {
		return nil
	}
	if len(host) > 253 {
		return fmt.Errorf("%w: proxy: host name longer than 253 characters", ErrInvalidArgument)
	}
	for _, label := range strings.Split(strings.TrimSuffix(host, "."), ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%w: proxy: host %q is not a valid IP address or DNS name", ErrInvalidArgument, host)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("%w: proxy: host %q is not a valid IP address or DNS name", ErrInvalidArgument, host)
			}
		}
	}
	return nil
}

func validateLatLon(lat, lon float64) error {
	if !(lat >= -90 && lat <= 90) {
		return fmt.Errorf("%w: latitude %v out of range -90..90", ErrInvalidArgument, lat)
	}
	if !(lon >= -180 && lon <= 180) {
		return fmt.Errorf("%w: longitude %v out of range -180..180", ErrInvalidArgument, lon)
	}
	return nil
}

// ApplyHealthCheck updates p's health state from r. It is the reference
// rule every storage driver implements atomically (drivers that cannot run
// Go, such as SQL or Lua, mirror it):
//
//   - CheckedAt, LatencyMS, LastStatusCode and LastError always take r's values.
//   - A healthy result (active or slow) resets FailureStreak to 0 and sets
//     the status to r.Status.
//   - A failing result (inactive or banned) increments FailureStreak; the
//     status becomes r.Status only once the streak reaches
//     r.FailureThreshold (values below 1 count as 1).
//   - StatusChangedAt is set to CheckedAt whenever the status changes.
func (p *Proxy) ApplyHealthCheck(r HealthCheckResult) {
	checked := r.CheckedAt
	p.CheckedAt = &checked
	p.LatencyMS = r.Latency.Milliseconds()
	p.LastStatusCode = r.StatusCode
	p.LastError = r.Error
	next := p.Status
	if r.Status.Leasable() {
		p.FailureStreak = 0
		next = r.Status
	} else {
		p.FailureStreak++
		if p.FailureStreak >= max(1, r.FailureThreshold) {
			next = r.Status
		}
	}
	if next != p.Status {
		p.Status = next
		changed := checked
		p.StatusChangedAt = &changed
	}
}

// Pool is a named set of proxies.
type Pool struct {
	ID          uuid.UUID `json:"id"`
	Name        string    `json:"name"`
	Description string    `json:"description"`
	CreatedAt   time.Time `json:"created_at,omitzero"`
}

// Validate checks the pool name.
func (p *Pool) Validate() error {
	return ValidateName("pool name", p.Name)
}

// ValidateName checks a pool or consumer name: not blank, at most 200
// bytes, no NUL or line breaks. what names the field in the error.
func ValidateName(what, name string) error {
	if strings.TrimSpace(name) == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalidArgument, what)
	}
	if len(name) > 200 {
		return fmt.Errorf("%w: %s longer than 200 bytes", ErrInvalidArgument, what)
	}
	if strings.ContainsAny(name, "\x00\r\n") {
		return fmt.Errorf("%w: %s contains control characters", ErrInvalidArgument, what)
	}
	return nil
}

// Consumer is a registered worker that holds leases.
type Consumer struct {
	ID        uuid.UUID `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// Lease is one consumer's claim on one slot of one proxy.
type Lease struct {
	ID           uuid.UUID   `json:"id"`
	ProxyID      uuid.UUID   `json:"proxy_id"`
	ConsumerID   uuid.UUID   `json:"consumer_id"`
	ConsumerName string      `json:"consumer_name,omitempty"`
	PoolID       uuid.UUID   `json:"pool_id"`
	PoolName     string      `json:"pool_name"`
	Status       LeaseStatus `json:"status"`
	AcquiredAt   time.Time   `json:"acquired_at"`
	ExpiresAt    time.Time   `json:"expires_at"`
	// ReleasedAt is when the lease ended: its release, or for an expired
	// lease a time no earlier than ExpiresAt (when the store reclaimed it,
	// or ExpiresAt itself). Nil while active.
	ReleasedAt *time.Time `json:"released_at,omitempty"`
	// SessionKey is the sticky-session key the lease was acquired with.
	SessionKey string `json:"session_key,omitempty"`
	// Target is the normalized target (see NormalizeTarget) the lease was
	// acquired for, if any; usage is aggregated per target by it.
	Target string `json:"target,omitempty"`
	// Usage is the traffic its holder reported at release; nil while
	// active, when it expired or when the release reported none.
	Usage *Usage `json:"usage,omitempty"`
	// Proxy is a snapshot of the leased proxy, set by AcquireLease so the
	// holder can use it without another call. Other reads may leave it nil.
	Proxy *Proxy `json:"proxy,omitempty"`
}

// Clone returns a deep copy of l.
func (l *Lease) Clone() *Lease {
	if l == nil {
		return nil
	}
	c := *l
	if l.ReleasedAt != nil {
		t := *l.ReleasedAt
		c.ReleasedAt = &t
	}
	if l.Usage != nil {
		u := *l.Usage
		c.Usage = &u
	}
	c.Proxy = l.Proxy.Clone()
	return &c
}

// PoolStats is a snapshot of one pool's occupancy.
type PoolStats struct {
	PoolName string `json:"pool_name"`
	// TotalProxies counts every proxy in the pool, whatever its status.
	TotalProxies int `json:"total_proxies"`
	// ActiveProxies counts proxies in a leasable status (active or slow).
	ActiveProxies int `json:"active_proxies"`
	// AvailableProxies counts leasable proxies with at least one free slot.
	AvailableProxies int `json:"available_proxies"`
	// LeasedProxies counts proxies holding at least one active lease.
	LeasedProxies int `json:"leased_proxies"`
	// TotalLeases counts active leases.
	TotalLeases int `json:"total_leases"`
	// ByStatus counts proxies per status.
	ByStatus    map[ProxyStatus]int `json:"by_status"`
	CollectedAt time.Time           `json:"collected_at"`
}

// HealthCheckResult is the outcome of one probe of one proxy, or of one
// report of real traffic through it. See [Proxy.ApplyHealthCheck] for how
// storage applies it.
type HealthCheckResult struct {
	ProxyID uuid.UUID `json:"proxy_id"`
	// Status is the observed classification.
	Status     ProxyStatus   `json:"status"`
	Latency    time.Duration `json:"latency"`
	Protocol   Protocol      `json:"protocol,omitempty"`
	Attempts   int           `json:"attempts,omitempty"`
	StatusCode int           `json:"status_code,omitempty"`
	CheckedAt  time.Time     `json:"checked_at"`
	// ErrorKind classifies a failure (for example "timeout", "refused",
	// "proxy_auth", "tls", "unexpected_status", "banned").
	ErrorKind string `json:"error_kind,omitempty"`
	// Error describes the failure; storage keeps it as Proxy.LastError.
	Error string `json:"error,omitempty"`
	// FailureThreshold is how many failures in a row it takes before a
	// failing Status is applied; below 1 means at once.
	FailureThreshold int `json:"failure_threshold,omitempty"`
	// Target is the site (see NormalizeTarget) the probe requested, when
	// known. Stores ignore it; the health orchestrator records a ban for
	// that site too (TargetStore.ApplyTargetOutcome).
	Target string `json:"target,omitempty"`
}

// Validate checks the result before storage applies it.
func (r *HealthCheckResult) Validate() error {
	if r.ProxyID == uuid.Nil {
		return fmt.Errorf("%w: health result: proxy id is empty", ErrInvalidArgument)
	}
	if !r.Status.Valid() {
		return fmt.Errorf("%w: health result: unknown status %q", ErrInvalidArgument, r.Status)
	}
	if r.Latency < 0 {
		return fmt.Errorf("%w: health result: negative latency", ErrInvalidArgument)
	}
	return nil
}
