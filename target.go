package pharox

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"
)

// MaxTargetLength bounds a normalized target: the longest DNS name.
const MaxTargetLength = 253

// NormalizeTarget turns a host name, host:port, IP address or URL into the
// target it names: the registrable domain (eTLD+1 by the public suffix
// list), lower-case, without port, path or trailing dot, so that
// "https://www.shop.example.co.uk:8443/cart" and "shop.example.co.uk" are
// the same target "example.co.uk". Internationalized names become their
// ASCII (punycode) form. IP addresses stay the address (IPv6 without
// brackets, in its canonical form). Single-label names such as "localhost"
// and names that are themselves a public suffix stay as they are. Names
// under .localhost keep their own registrable domain ("a.localhost"), so
// tests can run several local sites.
//
// Empty (or blank) input gives "" and no error: no target. Anything that is
// not a host name, host:port, IP address or URL with a host gives an error
// wrapping ErrInvalidArgument that quotes the input.
func NormalizeTarget(s string) (string, error) {
	in := s
	s = strings.TrimSpace(s)
	if s == "" {
		return "", nil
	}
	bad := func() (string, error) {
		return "", fmt.Errorf("%w: target %q is not a host name, host:port, IP address or URL", ErrInvalidArgument, in)
	}
	if len(s) > 2048 {
		return bad()
	}
	if validHostName(s) {
		// Fast path: already a lower-case ASCII host name.
		return registrableDomain(s), nil
	}
	if ip, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil && !strings.Contains(s, "%") {
		return ip.Unmap().String(), nil
	}
	if !strings.Contains(s, "://") {
		if strings.ContainsAny(s, "@") {
			return bad() // user info only in a URL with a scheme
		}
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return bad()
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return bad()
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return bad()
	}
	host := u.Hostname()
	if host == "" {
		return bad()
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return bad()
		}
		return ip.Unmap().String(), nil
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	ascii, err := idna.Lookup.ToASCII(host)
	if err != nil || !validHostName(ascii) {
		return bad()
	}
	return registrableDomain(ascii), nil
}

// registrableDomain returns the eTLD+1 of a valid host name; single-label
// names and public suffixes themselves (co.uk, github.io) stay as they
// are: they are the most specific site they name.
func registrableDomain(host string) string {
	if !strings.Contains(host, ".") {
		return host
	}
	site, err := publicsuffix.EffectiveTLDPlusOne(host)
	if err != nil {
		return host
	}
	return site
}

// ValidNormalizedTarget reports, cheaply, whether t has the form
// NormalizeTarget returns (a lower-case ASCII host name or an IP address).
// Stores use it to validate requests on hot paths.
func ValidNormalizedTarget(t string) bool {
	if validHostName(t) {
		return true
	}
	ip, err := netip.ParseAddr(t)
	return err == nil && ip.Zone() == "" && ip.Unmap().String() == t
}

// validHostName reports whether h is an ASCII DNS name: dot-separated
// labels of letters, digits, hyphens and underscores, 1-63 bytes each,
// no label starting or ending with a hyphen, MaxTargetLength bytes at most.
func validHostName(h string) bool {
	if h == "" || len(h) > MaxTargetLength {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	// An all-numeric name that is not an IP address (1.2.3 or 999.1.1.1)
	// is a typo, not a site.
	return strings.Trim(h, "0123456789.") != ""
}

// TargetPolicy says how outcomes reported for a target (a site) turn into
// cool-downs of a proxy for that target. Start from DefaultTargetPolicy()
// to change one setting and keep the others.
type TargetPolicy struct {
	// FailureThreshold is the failures in a row for one target that start
	// a cool-down for it; at least 1. A banned outcome starts one at once.
	FailureThreshold int
	// BaseCooldown is how long the first cool-down lasts; positive. Each
	// further cool-down without a success in between lasts twice as long
	// as the one before.
	BaseCooldown time.Duration
	// MaxCooldown caps the growth of the cool-down; at least BaseCooldown.
	MaxCooldown time.Duration
	// Retention is how long an entry is kept after it went idle (after its
	// last outcome or, if later, the end of its cool-down); positive. An
	// entry past it is forgotten: the next outcome starts from scratch.
	Retention time.Duration
	// MaxTargetsPerProxy caps the entries kept per proxy; at least 1. A
	// new target beyond it evicts the proxy's longest-idle entry.
	MaxTargetsPerProxy int
	// EscalateTargets is how many distinct targets must have started a
	// cool-down of one proxy within EscalateWindow for the Manager to mark
	// the proxy banned for every target (the global status, still capped
	// by OutcomePolicy.MaxBannedShare). 0 disables escalation.
	EscalateTargets int
	// EscalateWindow is the window EscalateTargets counts in; positive
	// when EscalateTargets is set, at most Retention.
	EscalateWindow time.Duration
	// BanStatusCodes are target answers that turn an outcome reported with
	// a target into a ban for that target (the Manager applies them, on
	// top of OutcomePolicy.BanStatusCodes). Unlike the global policy it
	// includes 403 by default: a site answering 403 through one proxy and
	// not through others is blocking that proxy, and the cool-down costs
	// that site only.
	BanStatusCodes []int
}

// Target policy defaults (see DefaultTargetPolicy).
const (
	DefaultTargetFailureThreshold   = 3
	DefaultTargetBaseCooldown       = 5 * time.Minute
	DefaultTargetMaxCooldown        = 6 * time.Hour
	DefaultTargetRetention          = 24 * time.Hour
	DefaultTargetMaxTargetsPerProxy = 256
	DefaultTargetEscalateTargets    = 5
	DefaultTargetEscalateWindow     = time.Hour
)

// DefaultTargetBanStatusCodes are the default TargetPolicy.BanStatusCodes.
func DefaultTargetBanStatusCodes() []int { return []int{403, 429} }

// DefaultTargetPolicy returns the policy used when none is configured:
// 3 failures in a row (or one ban) start a cool-down of 5 minutes,
// doubling per further cool-down up to 6 hours; entries are kept 24 hours
// after they went idle, at most 256 per proxy; a proxy that 5 distinct
// targets started cooling within an hour is banned for every target; 403
// and 429 answers count as bans.
func DefaultTargetPolicy() TargetPolicy {
	return TargetPolicy{
		FailureThreshold:   DefaultTargetFailureThreshold,
		BaseCooldown:       DefaultTargetBaseCooldown,
		MaxCooldown:        DefaultTargetMaxCooldown,
		Retention:          DefaultTargetRetention,
		MaxTargetsPerProxy: DefaultTargetMaxTargetsPerProxy,
		EscalateTargets:    DefaultTargetEscalateTargets,
		EscalateWindow:     DefaultTargetEscalateWindow,
		BanStatusCodes:     DefaultTargetBanStatusCodes(),
	}
}

// Validate reports, as an error wrapping ErrInvalidArgument, the first
// setting out of range (see the field docs).
func (p TargetPolicy) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: target policy: "+format, append([]any{ErrInvalidArgument}, args...)...)
	}
	switch {
	case p.FailureThreshold < 1:
		return bad("FailureThreshold must be at least 1, got %d", p.FailureThreshold)
	case p.BaseCooldown <= 0:
		return bad("BaseCooldown must be positive, got %v", p.BaseCooldown)
	case p.MaxCooldown < p.BaseCooldown:
		return bad("MaxCooldown must be at least BaseCooldown (%v), got %v", p.BaseCooldown, p.MaxCooldown)
	case p.Retention <= 0:
		return bad("Retention must be positive, got %v", p.Retention)
	case p.MaxTargetsPerProxy < 1:
		return bad("MaxTargetsPerProxy must be at least 1, got %d", p.MaxTargetsPerProxy)
	case p.EscalateTargets < 0:
		return bad("EscalateTargets must not be negative, got %d", p.EscalateTargets)
	case p.EscalateTargets > 0 && p.EscalateWindow <= 0:
		return bad("EscalateWindow must be positive when EscalateTargets is set, got %v", p.EscalateWindow)
	case p.EscalateWindow > p.Retention:
		return bad("EscalateWindow (%v) must not exceed Retention (%v): entries are forgotten after it", p.EscalateWindow, p.Retention)
	}
	for _, c := range p.BanStatusCodes {
		if c < 100 || c > 999 {
			return bad("BanStatusCodes: status code %d out of range 100-999", c)
		}
	}
	return nil
}

// Cooldown returns how long the bans-th cool-down in a row lasts:
// BaseCooldown doubled bans-1 times, capped at MaxCooldown.
func (p TargetPolicy) Cooldown(bans int) time.Duration {
	d := p.BaseCooldown
	for i := 1; i < bans && d < p.MaxCooldown; i++ {
		d *= 2
	}
	return min(d, p.MaxCooldown)
}

// TargetState is what a store keeps per (proxy, target).
type TargetState struct {
	ProxyID uuid.UUID `json:"proxy_id"`
	// Target is the normalized target (see NormalizeTarget).
	Target string `json:"target"`
	// FailureStreak counts failures in a row for this target since the
	// last success or cool-down.
	FailureStreak int `json:"failure_streak"`
	// Bans counts cool-downs in a row without a success after one ended;
	// it drives the exponential growth of the next cool-down.
	Bans int `json:"bans"`
	// CoolingUntil is when the last cool-down ends (or ended): the proxy is
	// not leased for this target while it is in the future. Nil when the
	// proxy never cooled for it or a success after a cool-down cleared it.
	CoolingUntil *time.Time `json:"cooling_until,omitempty"`
	// BannedAt is when the last cool-down started.
	BannedAt *time.Time `json:"banned_at,omitempty"`
	// LastReason and LastStatusCode come from the last failure or ban.
	LastReason     string     `json:"last_reason,omitempty"`
	LastStatusCode int        `json:"last_status_code,omitempty"`
	LastSuccessAt  *time.Time `json:"last_success_at,omitempty"`
	LastFailureAt  *time.Time `json:"last_failure_at,omitempty"`
	// UpdatedAt is when the last outcome was applied.
	UpdatedAt time.Time `json:"updated_at"`
}

// CoolingAt reports whether the proxy is cooling down for the target at now.
func (s *TargetState) CoolingAt(now time.Time) bool {
	return s.CoolingUntil != nil && s.CoolingUntil.After(now)
}

// IdleSince returns when the entry went idle: the later of UpdatedAt and
// the end of its cool-down. Retention counts from it, and the per-proxy cap
// evicts the entry with the earliest one first.
func (s *TargetState) IdleSince() time.Time {
	if s.CoolingUntil != nil && s.CoolingUntil.After(s.UpdatedAt) {
		return *s.CoolingUntil
	}
	return s.UpdatedAt
}

// Clone returns a deep copy.
func (s *TargetState) Clone() *TargetState {
	if s == nil {
		return nil
	}
	c := *s
	c.CoolingUntil = cloneTime(s.CoolingUntil)
	c.BannedAt = cloneTime(s.BannedAt)
	c.LastSuccessAt = cloneTime(s.LastSuccessAt)
	c.LastFailureAt = cloneTime(s.LastFailureAt)
	return &c
}

// TargetOutcome is one outcome for one (proxy, target), as stores apply it.
type TargetOutcome struct {
	ProxyID uuid.UUID
	// Target is normalized (see NormalizeTarget) and not empty.
	Target string
	// Kind is OutcomeSuccess, OutcomeFailure or OutcomeBanned.
	Kind       OutcomeKind
	StatusCode int
	Reason     string
	// At is when the outcome happened; zero means the store's clock now.
	// Stores apply the outcome as of At (cool-downs start at At).
	At time.Time
}

// Validate checks an outcome as a store receives it.
func (o *TargetOutcome) Validate() error {
	if o.ProxyID == uuid.Nil {
		return fmt.Errorf("%w: target outcome: proxy id is empty", ErrInvalidArgument)
	}
	if !ValidNormalizedTarget(o.Target) {
		return fmt.Errorf("%w: target outcome: target %q is not a normalized target", ErrInvalidArgument, o.Target)
	}
	switch o.Kind {
	case OutcomeSuccess, OutcomeFailure, OutcomeBanned:
	default:
		return fmt.Errorf("%w: unknown outcome kind %q (want success, failure or banned)", ErrInvalidArgument, o.Kind)
	}
	return nil
}

// Apply is the reference rule every store mirrors: it returns the state
// after outcome o at time now (the outcome's At, or the store's clock),
// under policy p. s is the stored state, or the zero TargetState for a
// (proxy, target) without one.
//
//   - A state idle for longer than p.Retention is forgotten first, as if
//     it had been purged.
//   - Success: the failure streak restarts; after a cool-down has ended it
//     also clears CoolingUntil and Bans. A success during a cool-down (a
//     request that started before it) leaves the cool-down as it is.
//   - Failure: recorded; outside a cool-down it extends the streak, and
//     p.FailureThreshold failures in a row start a cool-down.
//   - Banned: recorded; outside a cool-down it starts one at once.
//   - A cool-down starting at now lasts p.Cooldown(Bans+1) and restarts
//     the streak. Failures and bans during a cool-down only update the
//     last reason, status code and failure time, so concurrent reports
//     of one block never stack.
func (s TargetState) Apply(o TargetOutcome, p TargetPolicy, now time.Time) TargetState {
	if s.IdleSince().Before(now.Add(-p.Retention)) {
		s = TargetState{}
	}
	s = *s.Clone()
	s.ProxyID, s.Target = o.ProxyID, o.Target
	cooling := s.CoolingAt(now)
	switch o.Kind {
	case OutcomeSuccess:
		s.FailureStreak = 0
		s.LastSuccessAt = &now
		if !cooling {
			s.Bans = 0
			s.CoolingUntil = nil
		}
	case OutcomeFailure, OutcomeBanned:
		at := now
		s.LastFailureAt = &at
		s.LastReason = o.Reason
		s.LastStatusCode = o.StatusCode
		if cooling {
			break
		}
		s.FailureStreak++
		if o.Kind == OutcomeBanned || s.FailureStreak >= p.FailureThreshold {
			s.Bans++
			until := now.Add(p.Cooldown(s.Bans))
			started := now
			s.CoolingUntil, s.BannedAt = &until, &started
			s.FailureStreak = 0
		}
	}
	s.UpdatedAt = now
	return s
}

// RecentlyBanned reports whether the entry's last cool-down started within
// window before now: what EscalateTargets counts.
func (s *TargetState) RecentlyBanned(now time.Time, window time.Duration) bool {
	return s.BannedAt != nil && !s.BannedAt.Before(now.Add(-window))
}

// TargetStats describes one target seen in a pool (see
// [TargetStore.PoolTargetStats]).
type TargetStats struct {
	Target string `json:"target"`
	// CoolingProxies counts the pool's proxies cooling down for the target now.
	CoolingProxies int `json:"cooling_proxies"`
	// UsableProxies counts the pool's proxies in a leasable status (active
	// or slow) that are not cooling down for the target.
	UsableProxies int `json:"usable_proxies"`
	// BansLastHour counts the pool's proxies whose last cool-down for the
	// target started within the last hour.
	BansLastHour int `json:"bans_last_hour"`
}

// TargetStore keeps per-(proxy, target) health; it is part of [Storage].
// Stores honour AcquireRequest.Target in AcquireLease: proxies cooling down
// for the target are not candidates, decided inside the same atomic
// acquisition, at a cost that grows with the number of such proxies
// skipped, never with the pool size. Entries of a deleted proxy go with it.
type TargetStore interface {
	// ApplyTargetOutcome applies o atomically following [TargetState.Apply]
	// (as of o.At, or the store's clock when zero), creating the entry if
	// needed and evicting the proxy's longest-idle entry beyond
	// p.MaxTargetsPerProxy. It returns the new state and how many of the
	// proxy's entries, this one included, started a cool-down within
	// p.EscalateWindow before that time. Errors: ErrProxyNotFound,
	// ErrInvalidArgument (see TargetOutcome.Validate).
	//
	// Once it has returned, no acquisition that starts afterwards, in any
	// process, leases the proxy for o.Target before the cool-down ends.
	// (An acquisition running concurrently may go either way: a store that
	// is not one lock reads the outcome's clock before it commits.) The
	// conformance suite checks exactly this.
	ApplyTargetOutcome(ctx context.Context, o TargetOutcome, p TargetPolicy) (*TargetState, int, error)
	// ListTargetStates returns the proxy's entries ordered by target
	// (ErrProxyNotFound).
	ListTargetStates(ctx context.Context, proxyID uuid.UUID) ([]*TargetState, error)
	// PoolTargetStats returns, ordered by target, one TargetStats per
	// target that any proxy of the pool has an entry for
	// (ErrPoolNotFound).
	PoolTargetStats(ctx context.Context, poolID uuid.UUID) ([]*TargetStats, error)
	// PurgeTargetStates deletes the entries that went idle (see
	// TargetState.IdleSince) before the given time and returns how many.
	PurgeTargetStates(ctx context.Context, idleBefore time.Time) (int, error)
}

// WithTargetPolicy sets how outcomes reported with a target turn into
// cool-downs and escalate to a global ban. The default is
// DefaultTargetPolicy(). A policy that fails [TargetPolicy.Validate]
// makes the Manager invalid (see NewManager).
func WithTargetPolicy(p TargetPolicy) ManagerOption {
	return func(m *Manager) {
		p.BanStatusCodes = slices.Clone(p.BanStatusCodes)
		m.targets = p
	}
}

// TargetPolicy returns (a copy of) the Manager's target policy.
func (m *Manager) TargetPolicy() TargetPolicy {
	p := m.targets
	p.BanStatusCodes = slices.Clone(p.BanStatusCodes)
	return p
}

// TargetStates returns the proxy's per-target entries, ordered by target.
// Errors: ErrProxyNotFound.
func (m *Manager) TargetStates(ctx context.Context, proxyID uuid.UUID) ([]*TargetState, error) {
	if m.invalid != nil {
		return nil, m.invalid
	}
	return m.store.ListTargetStates(ctx, proxyID)
}

// PoolTargetStats returns per-target health of the pool: for each target
// any of its proxies has an entry for, how many proxies cool down for it
// and how many are usable. Errors: ErrPoolNotFound.
func (m *Manager) PoolTargetStats(ctx context.Context, poolID uuid.UUID) ([]*TargetStats, error) {
	if m.invalid != nil {
		return nil, m.invalid
	}
	return m.store.PoolTargetStats(ctx, poolID)
}

// PurgeTargetStates deletes per-target entries idle for longer than the
// policy's Retention and returns how many. CleanupExpiredLeases runs it
// too, at most once a minute per Manager.
func (m *Manager) PurgeTargetStates(ctx context.Context) (int, error) {
	if m.invalid != nil {
		return 0, m.invalid
	}
	n, err := m.store.PurgeTargetStates(ctx, time.Now().Add(-m.targets.Retention))
	if err != nil {
		return n, fmt.Errorf("purge target states: %w", err)
	}
	return n, nil
}
