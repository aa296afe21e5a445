package storagetest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// recorder captures what AuditLeases reports instead of failing the test.
type recorder struct {
	testing.TB
	msgs []string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.msgs = append(r.msgs, fmt.Sprintf(format, args...))
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func at(us int) time.Time { return t0.Add(time.Duration(us) * time.Microsecond) }

func released(proxy uuid.UUID, from, to int) *pharox.Lease {
	r := at(to)
	return &pharox.Lease{ID: uuid.New(), ProxyID: proxy, Status: pharox.LeaseReleased,
		AcquiredAt: at(from), ExpiresAt: at(from + 1_000_000), ReleasedAt: &r}
}

func expired(proxy uuid.UUID, from, expires, reclaimed int) *pharox.Lease {
	r := at(reclaimed)
	return &pharox.Lease{ID: uuid.New(), ProxyID: proxy, Status: pharox.LeaseExpired,
		AcquiredAt: at(from), ExpiresAt: at(expires), ReleasedAt: &r}
}

func active(proxy uuid.UUID, from, expires int) *pharox.Lease {
	return &pharox.Lease{ID: uuid.New(), ProxyID: proxy, Status: pharox.LeaseActive, AcquiredAt: at(from), ExpiresAt: at(expires)}
}

func TestAuditLeases(t *testing.T) {
	p, q := uuid.New(), uuid.New()
	cases := []struct {
		name   string
		leases []*pharox.Lease
		max    map[uuid.UUID]int
		want   int
		substr string
	}{
		{"back to back at the same instant", []*pharox.Lease{released(p, 0, 10), released(p, 10, 20), released(p, 20, 30)},
			map[uuid.UUID]int{p: 1}, 0, ""},
		{"overlap by one microsecond", []*pharox.Lease{released(p, 0, 11), released(p, 10, 20)},
			map[uuid.UUID]int{p: 1}, 1, p.String()},
		{"overlap instant is reported", []*pharox.Lease{released(p, 0, 11), released(p, 10, 20)},
			map[uuid.UUID]int{p: 1}, 1, "03:04:05.000010"},
		{"order of input does not matter", []*pharox.Lease{released(p, 10, 20), released(p, 0, 11)},
			map[uuid.UUID]int{p: 1}, 1, ""},
		{"within max 2", []*pharox.Lease{released(p, 0, 30), released(p, 5, 10), released(p, 10, 30), released(p, 30, 40)},
			map[uuid.UUID]int{p: 2}, 0, ""},
		{"three on max 2", []*pharox.Lease{released(p, 0, 30), released(p, 5, 10), released(p, 9, 30)},
			map[uuid.UUID]int{p: 2}, 1, "held 3 leases"},
		{"two separate excursions", []*pharox.Lease{released(p, 0, 10), released(p, 5, 15), released(p, 20, 30), released(p, 25, 35)},
			map[uuid.UUID]int{p: 1}, 2, ""},
		{"other proxy is independent", []*pharox.Lease{released(p, 0, 10), released(q, 5, 15)},
			map[uuid.UUID]int{p: 1, q: 1}, 0, ""},
		{"unlimited proxy", []*pharox.Lease{released(q, 0, 10), released(q, 1, 10), released(q, 2, 10)},
			map[uuid.UUID]int{p: 1}, 0, ""},
		{"expired ends at ExpiresAt, not at reclaim", []*pharox.Lease{expired(p, 0, 10, 50), released(p, 10, 20)},
			map[uuid.UUID]int{p: 1}, 0, ""},
		{"leased before the previous expired", []*pharox.Lease{expired(p, 0, 10, 50), released(p, 9, 20)},
			map[uuid.UUID]int{p: 1}, 1, "expired"},
		{"active lease still holds after ExpiresAt", []*pharox.Lease{active(p, 0, 10), released(p, 100, 200)},
			map[uuid.UUID]int{p: 1}, 1, "still active"},
		{"zero-length lease holds nothing", []*pharox.Lease{released(p, 0, 10), released(p, 5, 5), released(p, 10, 20)},
			map[uuid.UUID]int{p: 1}, 0, ""},
		{"released without ReleasedAt", []*pharox.Lease{{ID: uuid.New(), ProxyID: p, Status: pharox.LeaseReleased, AcquiredAt: at(0)}},
			map[uuid.UUID]int{p: 1}, 1, "no ReleasedAt"},
		{"ends before it starts", []*pharox.Lease{released(p, 10, 5)},
			map[uuid.UUID]int{p: 1}, 1, "before it was acquired"},
		{"unknown status", []*pharox.Lease{{ID: uuid.New(), ProxyID: p, Status: "lost", AcquiredAt: at(0)}},
			nil, 1, "unknown status"},
		{"nil lease", []*pharox.Lease{nil}, nil, 1, "nil lease"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &recorder{TB: t}
			got := AuditLeases(r, c.leases, c.max)
			if got != c.want || len(r.msgs) != c.want {
				t.Fatalf("AuditLeases = %d violations, %d messages %q; want %d", got, len(r.msgs), r.msgs, c.want)
			}
			if c.substr != "" && !strings.Contains(strings.Join(r.msgs, "\n"), c.substr) {
				t.Fatalf("messages %q do not mention %q", r.msgs, c.substr)
			}
		})
	}
}

func TestAuditLeasesCapsReports(t *testing.T) {
	p := uuid.New()
	var ls []*pharox.Lease
	for i := range 40 {
		// Pairs overlapping by one microsecond, each pair its own excursion.
		ls = append(ls, released(p, i*100, i*100+11), released(p, i*100+10, i*100+20))
	}
	r := &recorder{TB: t}
	if got := AuditLeases(r, ls, map[uuid.UUID]int{p: 1}); got != 40 {
		t.Fatalf("AuditLeases = %d violations, want 40", got)
	}
	if len(r.msgs) != maxAuditReports+1 {
		t.Fatalf("AuditLeases printed %d messages, want %d and a note", len(r.msgs), maxAuditReports+1)
	}
}

func TestRunPattern(t *testing.T) {
	for in, want := range map[string]string{
		"TestPostgres":             "^TestPostgres$",
		"TestRedis/multi_process":  "^TestRedis$/^multi_process$",
		"TestX/a.b(c)":             `^TestX$/^a\.b\(c\)$`,
		"TestMultiProcess#01/sub+": `^TestMultiProcess#01$/^sub\+$`,
	} {
		if got := runPattern(in); got != want {
			t.Errorf("runPattern(%q) = %q, want %q", in, got, want)
		}
	}
}
