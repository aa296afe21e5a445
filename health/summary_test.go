package health

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

func TestPercentile(t *testing.T) {
	ms := func(n ...int) []time.Duration {
		out := make([]time.Duration, len(n))
		for i, v := range n {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	cases := []struct {
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{nil, 50, 0},
		{ms(7), 99, 7 * time.Millisecond},
		{ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{ms(1, 2, 3, 4), 51, 3 * time.Millisecond},
		{ms(1, 2, 3, 4), 100, 4 * time.Millisecond},
		{ms(hundred...), 90, 90 * time.Millisecond},
		{ms(hundred...), 99, 99 * time.Millisecond},
		{ms(hundred...), 0, 1 * time.Millisecond},
	}
	for _, tc := range cases {
		if got := Percentile(tc.in, tc.p); got != tc.want {
			t.Errorf("Percentile(%v, %v) = %v, want %v", tc.in, tc.p, got, tc.want)
		}
	}
	st := NewLatencyStats(ms(40, 10, 30, 20))
	want := LatencyStats{Count: 4, Min: 10 * time.Millisecond, Mean: 25 * time.Millisecond, P50: 20 * time.Millisecond,
		P90: 40 * time.Millisecond, P95: 40 * time.Millisecond, P99: 40 * time.Millisecond, Max: 40 * time.Millisecond}
	if st != want {
		t.Errorf("NewLatencyStats = %+v, want %+v", st, want)
	}
}

func TestWriteTable(t *testing.T) {
	s := &SweepSummary{
		Pool: "edge", Pools: []string{"edge"}, Total: 5, Checked: 4, Skipped: 1, Changed: 2,
		Duration:    2 * time.Second,
		ByStatus:    map[pharox.ProxyStatus]int{pharox.StatusActive: 2, pharox.StatusInactive: 2, pharox.StatusBanned: 1},
		Observed:    map[pharox.ProxyStatus]int{pharox.StatusActive: 2, pharox.StatusInactive: 2},
		ByErrorKind: map[ErrorKind]int{KindTimeout: 1, KindRefused: 1},
		Latency:     NewLatencyStats([]time.Duration{12 * time.Millisecond, 250 * time.Millisecond}),
		Slowest: []ProxyReport{
			{ProxyID: uuid.New(), Proxy: "http://10.0.0.1:8080", Status: pharox.StatusActive, Latency: 250 * time.Millisecond, StatusCode: 200},
		},
		Failing: []ProxyReport{
			{ProxyID: uuid.New(), Proxy: "socks5://10.0.0.2:1080", Status: pharox.StatusInactive, ErrorKind: KindRefused, Error: "dial tcp: connection\nrefused", FailureStreak: 3},
		},
		FailingTotal: 2,
	}
	var buf bytes.Buffer
	if err := s.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"Pool            edge",
		"Proxies         5 (checked 4, skipped in ban cool-down 1, deleted 0, unfinished 0, store errors 0)",
		"Duration        2s (2.0 checks/s)",
		"active    2        2",
		"banned    1        0",
		"refused  1",
		"healthy (2)  12.0ms  12.0ms  250.0ms",
		"http://10.0.0.1:8080  250.0ms  active  200",
		"FAILING (first 1 of 2)",
		"socks5://10.0.0.2:1080",
		"dial tcp: connection refused",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	empty := &SweepSummary{Pools: []string{"a", "b"}}
	buf.Reset()
	if err := empty.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "a, b") || !strings.Contains(buf.String(), "no healthy probe") {
		t.Errorf("empty summary:\n%s", buf.String())
	}
}
