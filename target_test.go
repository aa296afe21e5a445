package pharox_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

func TestNormalizeTarget(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"   ", ""},
		{"example.com", "example.com"},
		{"WWW.Example.COM", "example.com"},
		{"www.example.com.", "example.com"},
		{"shop.example.com:8443", "example.com"},
		{"https://www.shop.example.co.uk:8443/cart?x=1", "example.co.uk"},
		{"http://user:pw@a.b.example.org/", "example.org"},
		{"www.bbc.co.uk", "bbc.co.uk"},
		{"bbc.co.uk", "bbc.co.uk"},
		{"co.uk", "co.uk"},
		{"foo.github.io", "foo.github.io"},
		{"a.b.foo.github.io", "foo.github.io"},
		{"example.com/path", "example.com"},
		{"localhost", "localhost"},
		{"localhost:8080", "localhost"},
		{"http://localhost:8080/x", "localhost"},
		{"site-a.localhost", "site-a.localhost"},
		{"www.site-a.localhost:9000", "site-a.localhost"},
		{"intranet", "intranet"},
		{"127.0.0.1", "127.0.0.1"},
		{"127.0.0.1:8080", "127.0.0.1"},
		{"http://10.0.0.1:3128/", "10.0.0.1"},
		{"::1", "::1"},
		{"[::1]", "::1"},
		{"[2001:DB8::1]:443", "2001:db8::1"},
		{"https://[2001:db8:0:0::1]/", "2001:db8::1"},
		{"::ffff:1.2.3.4", "1.2.3.4"},
		{"bücher.example", "xn--bcher-kva.example"},
		{"https://www.bücher.de/", "xn--bcher-kva.de"},
		{"_dmarc.example.com", "example.com"},
	} {
		got, err := pharox.NormalizeTarget(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("NormalizeTarget(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		if got != "" && !pharox.ValidNormalizedTarget(got) {
			t.Errorf("ValidNormalizedTarget(%q) = false for a NormalizeTarget result", got)
		}
	}
	for _, in := range []string{
		"http://", "://x", "exa mple.com", "example..com", ".", "-bad.com", "bad-.com",
		"example.com:0", "example.com:99999", "example.com:port", "example.com:",
		"fe80::1%eth0", "[fe80::1%25eth0]:80", "a@b@c", "mailto:x@example.com",
		"1.2.3", "999.1.1.1", strings.Repeat("a", 64) + ".com", strings.Repeat("a.", 130) + "com",
		"exa\x00mple.com", "http://exa<mple.com/",
	} {
		got, err := pharox.NormalizeTarget(in)
		if !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("NormalizeTarget(%q) = %q, %v; want ErrInvalidArgument", in, got, err)
			continue
		}
		if !strings.Contains(err.Error(), "target "+strconv.Quote(in)) {
			t.Errorf("NormalizeTarget(%q) error %q does not quote the input", in, err)
		}
	}
	for _, bad := range []string{"", "Example.com", "example.com:80", "[::1]", "fe80::1%eth0", "::FFFF:1.2.3.4", "a b"} {
		if pharox.ValidNormalizedTarget(bad) {
			t.Errorf("ValidNormalizedTarget(%q) = true", bad)
		}
	}
}

func TestTargetPolicyValidate(t *testing.T) {
	if err := pharox.DefaultTargetPolicy().Validate(); err != nil {
		t.Fatalf("default policy: %v", err)
	}
	for name, mut := range map[string]func(*pharox.TargetPolicy){
		"FailureThreshold":   func(p *pharox.TargetPolicy) { p.FailureThreshold = 0 },
		"BaseCooldown":       func(p *pharox.TargetPolicy) { p.BaseCooldown = 0 },
		"MaxCooldown":        func(p *pharox.TargetPolicy) { p.MaxCooldown = p.BaseCooldown - 1 },
		"Retention":          func(p *pharox.TargetPolicy) { p.Retention = -time.Second },
		"MaxTargetsPerProxy": func(p *pharox.TargetPolicy) { p.MaxTargetsPerProxy = 0 },
		"EscalateTargets":    func(p *pharox.TargetPolicy) { p.EscalateTargets = -1 },
		"EscalateWindow":     func(p *pharox.TargetPolicy) { p.EscalateWindow = 0 },
		"Retention (":        func(p *pharox.TargetPolicy) { p.EscalateWindow = p.Retention + 1 },
		"BanStatusCodes":     func(p *pharox.TargetPolicy) { p.BanStatusCodes = []int{403, 99} },
	} {
		p := pharox.DefaultTargetPolicy()
		mut(&p)
		err := p.Validate()
		if !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s out of range: %v, want ErrInvalidArgument naming it", name, err)
		}
	}
	p := pharox.DefaultTargetPolicy()
	p.EscalateTargets, p.EscalateWindow = 0, 0
	if err := p.Validate(); err != nil {
		t.Errorf("escalation disabled without a window: %v", err)
	}
	if m := pharox.NewManager(nil, pharox.WithTargetPolicy(pharox.TargetPolicy{})); !errors.Is(m.Err(), pharox.ErrInvalidArgument) {
		t.Errorf("Manager with a zero target policy: Err() = %v", m.Err())
	}
}

func TestTargetPolicyCooldown(t *testing.T) {
	p := pharox.DefaultTargetPolicy()
	p.BaseCooldown, p.MaxCooldown = time.Minute, 10*time.Minute
	for bans, want := range map[int]time.Duration{0: time.Minute, 1: time.Minute, 2: 2 * time.Minute, 3: 4 * time.Minute,
		4: 8 * time.Minute, 5: 10 * time.Minute, 60: 10 * time.Minute, 1 << 30: 10 * time.Minute} {
		if got := p.Cooldown(bans); got != want {
			t.Errorf("Cooldown(%d) = %v, want %v", bans, got, want)
		}
	}
}

// The reference rule, step by step.
func TestTargetStateApply(t *testing.T) {
	p := pharox.DefaultTargetPolicy()
	p.FailureThreshold, p.BaseCooldown, p.MaxCooldown, p.Retention = 2, time.Minute, 3*time.Minute, time.Hour
	id := uuid.New()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	out := func(kind pharox.OutcomeKind) pharox.TargetOutcome {
		return pharox.TargetOutcome{ProxyID: id, Target: "example.com", Kind: kind, StatusCode: 403, Reason: "blocked"}
	}
	var s pharox.TargetState
	at := func(d time.Duration) time.Time { return t0.Add(d) }

	// Streak below the threshold: recorded, not cooling.
	s = s.Apply(out(pharox.OutcomeFailure), p, at(0))
	if s.FailureStreak != 1 || s.CoolingUntil != nil || s.ProxyID != id || s.Target != "example.com" || s.LastStatusCode != 403 || s.LastReason != "blocked" {
		t.Fatalf("after one failure: %+v", s)
	}
	// A success restarts the streak.
	s = s.Apply(out(pharox.OutcomeSuccess), p, at(time.Second))
	if s.FailureStreak != 0 || s.LastSuccessAt == nil || !s.LastSuccessAt.Equal(at(time.Second)) {
		t.Fatalf("after a success: %+v", s)
	}
	// Two failures in a row: first cool-down, BaseCooldown long.
	s = s.Apply(out(pharox.OutcomeFailure), p, at(2*time.Second))
	s = s.Apply(out(pharox.OutcomeFailure), p, at(3*time.Second))
	if s.Bans != 1 || s.FailureStreak != 0 || !s.CoolingAt(at(3*time.Second)) || !s.CoolingUntil.Equal(at(3*time.Second+time.Minute)) ||
		!s.BannedAt.Equal(at(3*time.Second)) {
		t.Fatalf("after the threshold: %+v", s)
	}
	// Reports during the cool-down neither stack nor extend it; a success
	// during it leaves it.
	before := s.Clone()
	s = s.Apply(out(pharox.OutcomeBanned), p, at(10*time.Second))
	s = s.Apply(out(pharox.OutcomeFailure), p, at(11*time.Second))
	s = s.Apply(out(pharox.OutcomeSuccess), p, at(12*time.Second))
	if s.Bans != 1 || !s.CoolingUntil.Equal(*before.CoolingUntil) || s.FailureStreak != 0 || !s.LastFailureAt.Equal(at(11*time.Second)) {
		t.Fatalf("during the cool-down: %+v", s)
	}
	// After it: a ban starts the second cool-down at once, twice as long;
	// the third is capped.
	end := *s.CoolingUntil
	if s.CoolingAt(end) {
		t.Fatal("cooling at the cool-down's end")
	}
	s = s.Apply(out(pharox.OutcomeBanned), p, end)
	if s.Bans != 2 || !s.CoolingUntil.Equal(end.Add(2*time.Minute)) {
		t.Fatalf("second cool-down: %+v", s)
	}
	end = *s.CoolingUntil
	s = s.Apply(out(pharox.OutcomeBanned), p, end.Add(time.Second))
	if s.Bans != 3 || !s.CoolingUntil.Equal(end.Add(time.Second+3*time.Minute)) {
		t.Fatalf("third cool-down (capped): %+v", s)
	}
	end = *s.CoolingUntil
	// A success after a cool-down ended resets the backoff.
	s = s.Apply(out(pharox.OutcomeSuccess), p, end.Add(time.Second))
	if s.Bans != 0 || s.CoolingUntil != nil || s.BannedAt == nil {
		t.Fatalf("success after the cool-down: %+v", s)
	}
	s = s.Apply(out(pharox.OutcomeBanned), p, end.Add(2*time.Second))
	if s.Bans != 1 || !s.CoolingUntil.Equal(end.Add(2*time.Second+time.Minute)) {
		t.Fatalf("ban after a reset: %+v", s)
	}
	// Without a success, an entry idle past the retention is forgotten:
	// the backoff restarts.
	s = s.Apply(out(pharox.OutcomeBanned), p, end.Add(2*time.Second+time.Minute))
	if s.Bans != 2 {
		t.Fatalf("ban right after a cool-down: %+v", s)
	}
	idle := s.IdleSince()
	if !idle.Equal(*s.CoolingUntil) {
		t.Fatalf("IdleSince = %v, want the cool-down's end %v", idle, s.CoolingUntil)
	}
	kept := s.Apply(out(pharox.OutcomeBanned), p, idle.Add(p.Retention))
	if kept.Bans != 3 {
		t.Fatalf("ban at the end of the retention: %+v", kept)
	}
	fresh := s.Apply(out(pharox.OutcomeFailure), p, idle.Add(p.Retention+time.Nanosecond))
	if fresh.Bans != 0 || fresh.FailureStreak != 1 || fresh.CoolingUntil != nil || fresh.BannedAt != nil || fresh.LastSuccessAt != nil {
		t.Fatalf("failure past the retention: %+v", fresh)
	}
	if fresh.RecentlyBanned(idle, time.Hour) {
		t.Fatal("RecentlyBanned without a ban")
	}
	if !s.RecentlyBanned(*s.BannedAt, 0) || s.RecentlyBanned(s.BannedAt.Add(time.Hour+1), time.Hour) {
		t.Fatal("RecentlyBanned window")
	}
}

// Apply returns a copy: the state it was called on keeps its times.
func TestTargetStateApplyCopies(t *testing.T) {
	p := pharox.DefaultTargetPolicy()
	id := uuid.New()
	now := time.Now()
	var s pharox.TargetState
	s = s.Apply(pharox.TargetOutcome{ProxyID: id, Target: "example.com", Kind: pharox.OutcomeBanned}, p, now)
	until := *s.CoolingUntil
	next := s.Apply(pharox.TargetOutcome{ProxyID: id, Target: "example.com", Kind: pharox.OutcomeBanned}, p, until.Add(time.Second))
	if !s.CoolingUntil.Equal(until) || next.CoolingUntil == s.CoolingUntil {
		t.Fatalf("Apply changed or shared its receiver's times: %v %v", s.CoolingUntil, next.CoolingUntil)
	}
}

func TestTargetOutcomeValidate(t *testing.T) {
	ok := pharox.TargetOutcome{ProxyID: uuid.New(), Target: "example.com", Kind: pharox.OutcomeFailure}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, o := range map[string]pharox.TargetOutcome{
		"no proxy":       {Target: "example.com", Kind: pharox.OutcomeFailure},
		"no target":      {ProxyID: uuid.New(), Kind: pharox.OutcomeFailure},
		"raw target":     {ProxyID: uuid.New(), Target: "https://Example.com/", Kind: pharox.OutcomeFailure},
		"unknown kind":   {ProxyID: uuid.New(), Target: "example.com", Kind: "meh"},
		"upper-case":     {ProxyID: uuid.New(), Target: "EXAMPLE.com", Kind: pharox.OutcomeFailure},
		"with port":      {ProxyID: uuid.New(), Target: "example.com:80", Kind: pharox.OutcomeFailure},
		"bracketed ipv6": {ProxyID: uuid.New(), Target: "[::1]", Kind: pharox.OutcomeFailure},
	} {
		if err := o.Validate(); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("%s: Validate() = %v, want ErrInvalidArgument", name, err)
		}
	}
}

// NormalizeTarget never panics, its results pass ValidNormalizedTarget, and
// normalizing a result again gives the same result.
func FuzzNormalizeTarget(f *testing.F) {
	for _, s := range []string{"https://www.shop.example.co.uk:8443/cart", "[::1]:80", "localhost", "bücher.de",
		"a.b.foo.github.io", "10.0.0.1:3128", "exa mple.com", "http://", "::ffff:1.2.3.4", "x.localhost."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := pharox.NormalizeTarget(in)
		if err != nil {
			if !errors.Is(err, pharox.ErrInvalidArgument) {
				t.Fatalf("NormalizeTarget(%q): error %v does not wrap ErrInvalidArgument", in, err)
			}
			return
		}
		if got == "" {
			return
		}
		if !pharox.ValidNormalizedTarget(got) {
			t.Fatalf("NormalizeTarget(%q) = %q, which ValidNormalizedTarget refuses", in, got)
		}
		again, err := pharox.NormalizeTarget(got)
		if err != nil || again != got {
			t.Fatalf("NormalizeTarget(%q) = %q, but normalizing that again gives %q, %v", in, got, again, err)
		}
	})
}
