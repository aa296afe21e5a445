package health

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

func TestClassify(t *testing.T) {
	slow := 100 * time.Millisecond
	cases := []struct {
		kind    ErrorKind
		latency time.Duration
		slow    time.Duration
		want    pharox.ProxyStatus
	}{
		{KindNone, 10 * time.Millisecond, slow, pharox.StatusActive},
		{KindNone, slow, slow, pharox.StatusActive},
		{KindNone, slow + 1, slow, pharox.StatusSlow},
		{KindNone, time.Hour, 0, pharox.StatusActive},
		{KindBanned, time.Millisecond, slow, pharox.StatusBanned},
		{KindTimeout, time.Hour, slow, pharox.StatusInactive},
		{KindRefused, 0, slow, pharox.StatusInactive},
		{KindProxyAuth, 0, slow, pharox.StatusInactive},
		{KindTLS, 0, slow, pharox.StatusInactive},
		{KindUnexpectedStatus, 0, slow, pharox.StatusInactive},
		{KindReset, 0, slow, pharox.StatusInactive},
	}
	for _, tc := range cases {
		if got := classify(tc.kind, tc.latency, tc.slow); got != tc.want {
			t.Errorf("classify(%q, %v, %v) = %s, want %s", tc.kind, tc.latency, tc.slow, got, tc.want)
		}
	}
}

func TestBanCooldown(t *testing.T) {
	base, limit := time.Minute, 10*time.Minute
	cases := []struct {
		streak, threshold int
		base, limit       time.Duration
		want              time.Duration
	}{
		{0, 3, base, limit, base}, // manual ban: streak reset
		{3, 3, base, limit, base}, // the probe that banned it
		{4, 3, base, limit, 2 * base},
		{5, 3, base, limit, 4 * base},
		{6, 3, base, limit, 8 * base},
		{7, 3, base, limit, limit}, // 16 min capped to 10
		{1000, 3, base, limit, limit},
		{1, 0, base, limit, base}, // threshold below 1 counts as 1
		{2, 0, base, limit, 2 * base},
		{1 << 30, 1, time.Hour, 0, 0}, // no cap: must stop before overflowing (checked below)
		{5, 3, 0, limit, 0},
	}
	for _, tc := range cases {
		got := BanCooldown(tc.streak, tc.threshold, tc.base, tc.limit)
		if tc.limit == 0 && tc.base > 0 {
			if got <= 0 {
				t.Errorf("BanCooldown(%d, %d, %v, no cap) = %v overflowed", tc.streak, tc.threshold, tc.base, got)
			}
			continue
		}
		if got != tc.want {
			t.Errorf("BanCooldown(%d, %d, %v, %v) = %v, want %v", tc.streak, tc.threshold, tc.base, tc.limit, got, tc.want)
		}
	}
}

// fakeClock is a settable clock for cool-down tests.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time          { return c.now }
func (c *fakeClock) Advance(d time.Duration) { c.now = c.now.Add(d) }

// TestBanBackoffLifecycle walks a proxy through bans and a recovery with a
// fake clock, applying results with the reference rule storage follows.
func TestBanBackoffLifecycle(t *testing.T) {
	const threshold = 2
	base, limit := time.Minute, 5*time.Minute
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	p := &pharox.Proxy{ID: uuid.New(), Status: pharox.StatusActive}
	due := func() bool {
		next := NextProbeAt(p, threshold, base, limit)
		return next.IsZero() || !clock.Now().Before(next)
	}
	probe := func(st pharox.ProxyStatus) {
		t.Helper()
		if !due() {
			t.Fatalf("probe at %v while resting until %v", clock.Now(), NextProbeAt(p, threshold, base, limit))
		}
		p.ApplyHealthCheck(pharox.HealthCheckResult{ProxyID: p.ID, Status: st, CheckedAt: clock.Now(), FailureThreshold: threshold})
	}

	// An active proxy is always due.
	if !due() {
		t.Fatal("active proxy not due")
	}
	probe(pharox.StatusBanned)
	if p.Status != pharox.StatusActive || !due() {
		t.Fatalf("one ban below the threshold: status %s, due %v", p.Status, due())
	}
	clock.Advance(time.Second)
	probe(pharox.StatusBanned)
	if p.Status != pharox.StatusBanned || p.FailureStreak != 2 {
		t.Fatalf("after two bans: %s streak %d", p.Status, p.FailureStreak)
	}
	bannedAt := clock.Now()
	if p.StatusChangedAt == nil || !p.StatusChangedAt.Equal(bannedAt) {
		t.Fatalf("StatusChangedAt = %v, want %v", p.StatusChangedAt, bannedAt)
	}

	// Rest for base, then 2·base, 4·base, then capped at 5 minutes.
	for _, rest := range []time.Duration{base, 2 * base, 4 * base, limit, limit} {
		clock.Advance(rest - time.Second)
		if due() {
			t.Fatalf("due %v into a %v rest", rest-time.Second, rest)
		}
		clock.Advance(time.Second)
		if !due() {
			t.Fatalf("not due after a %v rest", rest)
		}
		probe(pharox.StatusBanned)
		if p.Status != pharox.StatusBanned {
			t.Fatalf("status %s", p.Status)
		}
	}

	// Recovery resets the streak and lifts the rest at once.
	clock.Advance(limit)
	probe(pharox.StatusActive)
	if p.Status != pharox.StatusActive || p.FailureStreak != 0 || !due() {
		t.Fatalf("after recovery: %s streak %d due %v", p.Status, p.FailureStreak, due())
	}
	if !p.StatusChangedAt.Equal(clock.Now()) {
		t.Fatalf("StatusChangedAt = %v, want recovery time %v", p.StatusChangedAt, clock.Now())
	}
}

func TestNextProbeAt(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		p    *pharox.Proxy
		want time.Time
	}{
		{"nil", nil, time.Time{}},
		{"active", &pharox.Proxy{Status: pharox.StatusActive, CheckedAt: &at, FailureStreak: 9}, time.Time{}},
		{"inactive", &pharox.Proxy{Status: pharox.StatusInactive, CheckedAt: &at, FailureStreak: 9}, time.Time{}},
		{"banned, never checked", &pharox.Proxy{Status: pharox.StatusBanned}, time.Time{}},
		{"banned", &pharox.Proxy{Status: pharox.StatusBanned, CheckedAt: &at, FailureStreak: 4}, at.Add(4 * time.Minute)},
	}
	for _, tc := range cases {
		if got := NextProbeAt(tc.p, 2, time.Minute, time.Hour); !got.Equal(tc.want) {
			t.Errorf("%s: NextProbeAt = %v, want %v", tc.name, got, tc.want)
		}
	}
}
