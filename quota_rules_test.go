package pharox_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

func TestUsageValidate(t *testing.T) {
	for _, tc := range []struct {
		u    pharox.Usage
		want string
	}{
		{pharox.Usage{}, ""},
		{pharox.Usage{Requests: 3, BytesSent: 10, BytesReceived: 20}, ""},
		{pharox.Usage{Requests: -1}, "requests must not be negative"},
		{pharox.Usage{BytesSent: -5}, "bytes_sent must not be negative"},
		{pharox.Usage{BytesReceived: pharox.MaxUsageBytes + 1}, "bytes_received"},
	} {
		err := tc.u.Validate()
		if tc.want == "" {
			if err != nil {
				t.Errorf("%+v: %v", tc.u, err)
			}
			continue
		}
		if !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want ErrInvalidArgument naming %q", tc.u, err, tc.want)
		}
	}
	if got := (pharox.Usage{BytesSent: 2, BytesReceived: 3}).Bytes(); got != 5 {
		t.Errorf("Bytes = %d, want 5", got)
	}
}

func TestQuotaValidate(t *testing.T) {
	id := uuid.New()
	ok := []pharox.Quota{
		{Subject: pharox.QuotaConsumer, SubjectID: id, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 2}},
		{Subject: pharox.QuotaPool, SubjectID: id, QuotaLimits: pharox.QuotaLimits{RequestsPerMinute: 60}},
		{Subject: pharox.QuotaProxy, SubjectID: id, QuotaLimits: pharox.QuotaLimits{BytesPerMonth: 1 << 30}},
	}
	for _, q := range ok {
		if err := q.Validate(); err != nil {
			t.Errorf("%+v: %v", q, err)
		}
	}
	bad := []struct {
		q    pharox.Quota
		want string
	}{
		{pharox.Quota{Subject: "key", SubjectID: id, QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1}}, `unknown subject "key"`},
		{pharox.Quota{Subject: pharox.QuotaConsumer, QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1}}, "consumer id is empty"},
		{pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: id, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: -1}}, "max_concurrent_leases must not be negative"},
		{pharox.Quota{Subject: pharox.QuotaProxy, SubjectID: id, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 1}}, "max_concurrency"},
		{pharox.Quota{Subject: pharox.QuotaProxy, SubjectID: id, QuotaLimits: pharox.QuotaLimits{RequestsPerMinute: 1}}, "requests_per_minute"},
		{pharox.Quota{Subject: pharox.QuotaPool, SubjectID: id}, "no limit set"},
	}
	for _, tc := range bad {
		err := tc.q.Validate()
		if !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want ErrInvalidArgument naming %q", tc.q, err, tc.want)
		}
	}
}

func TestQuotaPeriodsRoll(t *testing.T) {
	day1 := time.Date(2026, 1, 31, 23, 59, 0, 0, time.UTC)
	q := pharox.Quota{}.AddBytes(100, day1)
	if q.BytesToday != 100 || q.BytesThisMonth != 100 || !q.Day.Equal(pharox.DayStart(day1)) || !q.Month.Equal(pharox.MonthStart(day1)) {
		t.Fatalf("after the first release: %+v", q)
	}
	q = q.AddBytes(50, day1.Add(30*time.Second))
	if q.BytesToday != 150 || q.BytesThisMonth != 150 {
		t.Fatalf("same day: %+v", q)
	}
	// Two minutes later it is February: both periods restart.
	feb := day1.Add(2 * time.Minute)
	q = q.AddBytes(7, feb)
	if q.BytesToday != 7 || q.BytesThisMonth != 7 || q.Month.Month() != time.February {
		t.Fatalf("new month: %+v", q)
	}
	// A day later, same month: only the day restarts.
	q = q.AddBytes(1, feb.Add(24*time.Hour))
	if q.BytesToday != 1 || q.BytesThisMonth != 8 {
		t.Fatalf("new day: %+v", q)
	}
	// Reading rolls without adding.
	if r := q.RollPeriods(feb.Add(60 * 24 * time.Hour)); r.BytesToday != 0 || r.BytesThisMonth != 0 {
		t.Fatalf("rolled two months on: %+v", r)
	}
}

func TestQuotaAdmitOrderAndRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 10, 18, 0, 0, 0, time.UTC)
	id := uuid.New()
	q := pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: id,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 2, RequestsPerMinute: 2, BytesPerDay: 100, BytesPerMonth: 1000}}

	limitOf := func(err error) (string, time.Duration) {
		t.Helper()
		if err == nil {
			return "", 0
		}
		qe, ok := errors.AsType[*pharox.QuotaError](err)
		if !ok || !errors.Is(err, pharox.ErrQuotaExceeded) {
			t.Fatalf("error %v is not a *QuotaError matching ErrQuotaExceeded", err)
		}
		if qe.Subject != pharox.QuotaConsumer || qe.SubjectID != id {
			t.Fatalf("error names %s %s", qe.Subject, qe.SubjectID)
		}
		return qe.Limit, qe.RetryAfter
	}
	if l, _ := limitOf(q.Admit(1, now)); l != "" {
		t.Fatalf("under every limit: refused by %s", l)
	}
	// The concurrency cap is checked first.
	over := q.AddBytes(5000, now)
	if l, ra := limitOf(over.Admit(2, now)); l != pharox.LimitMaxConcurrentLeases || ra != time.Second {
		t.Fatalf("at the cap: %s after %v", l, ra)
	}
	// Then the day, retrying at midnight.
	if l, ra := limitOf(over.Admit(0, now)); l != pharox.LimitBytesPerDay || ra != 6*time.Hour {
		t.Fatalf("over the day: %s after %v", l, ra)
	}
	// The next day only the month is over: retry on the first of April.
	next := now.Add(24 * time.Hour)
	if l, ra := limitOf(over.Admit(0, next)); l != pharox.LimitBytesPerMonth || ra != time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC).Sub(next) {
		t.Fatalf("over the month: %s after %v", l, ra)
	}
	// The bucket: two tokens, then refused until one is back (30s at 2/min).
	b := q.TakeToken(now).TakeToken(now)
	if l, ra := limitOf(b.Admit(0, now)); l != pharox.LimitRequestsPerMinute || ra != 30*time.Second {
		t.Fatalf("empty bucket: %s after %v", l, ra)
	}
	// (Float arithmetic may put it a nanosecond later.)
	if l, ra := limitOf(b.Admit(0, now.Add(20*time.Second))); l != pharox.LimitRequestsPerMinute || ra < 10*time.Second || ra > 10*time.Second+time.Millisecond {
		t.Fatalf("bucket refilling: %s after %v", l, ra)
	}
	if l, _ := limitOf(b.Admit(0, now.Add(30*time.Second))); l != "" {
		t.Fatalf("a token is back after 30s: refused by %s", l)
	}
	// A bucket never refills above its size.
	if got := b.RefillTokens(now.Add(time.Hour)); got != 2 {
		t.Fatalf("refilled an hour later: %v tokens, want 2", got)
	}
}

func TestQuotaExhaustedUntil(t *testing.T) {
	now := time.Date(2026, 3, 10, 18, 0, 0, 0, time.UTC)
	q := pharox.Quota{Subject: pharox.QuotaProxy, SubjectID: uuid.New(), QuotaLimits: pharox.QuotaLimits{BytesPerDay: 100}}
	if q.Exhausted(now) {
		t.Fatal("an unused allowance is exhausted")
	}
	q = q.AddBytes(100, now)
	if got := q.ExhaustedUntil(now); !got.Equal(time.Date(2026, 3, 11, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("day allowance used up: until %v", got)
	}
	if q.Exhausted(now.Add(6 * time.Hour)) {
		t.Fatal("still exhausted the next day")
	}
	q.BytesPerMonth = 150
	q = q.AddBytes(60, now)
	if got := q.ExhaustedUntil(now); !got.Equal(time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("day and month used up: until %v, want the later (April)", got)
	}
}

func TestQuotaErrorMessage(t *testing.T) {
	e := &pharox.QuotaError{Subject: pharox.QuotaConsumer, Name: "scraper-1", Limit: pharox.LimitMaxConcurrentLeases, Value: 5, RetryAfter: time.Second}
	if got, want := e.Error(), `consumer "scraper-1" is over its quota max_concurrent_leases=5 (retry in 1s)`; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
