package transport

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
)

// TestSuccessReports checks that successes are reported once per interval
// for a healthy proxy, and every time with an interval of zero.
func TestSuccessReports(t *testing.T) {
	for _, tc := range []struct {
		every time.Duration
		want  int32
	}{{time.Hour, 1}, {0, 5}} {
		t.Run(tc.every.String(), func(t *testing.T) {
			testpeers.CheckLeaks(t)
			e := newEnv(t)
			e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, "127.0.1.1"))
			// Healthy as a checked proxy is: active with no failure streak.
			cl := &countingLeaser{Leaser: Local(e.mgr)}
			rt := e.transportWith(cl, WithSuccessReportInterval(tc.every))
			c := &http.Client{Transport: rt}
			for range 5 {
				fetch(t, c, context.Background(), e.tg.Plain.URL)
			}
			if n := cl.reports.Load(); n != tc.want {
				t.Fatalf("%d success reports for 5 requests, want %d", n, tc.want)
			}
			for _, o := range cl.outcomes {
				if o.Kind != pharox.OutcomeSuccess || o.StatusCode != http.StatusOK || o.Latency <= 0 {
					t.Fatalf("reported %+v, want a success with status and latency", o)
				}
			}
			e.noLeases()
		})
	}
}

// TestBrokenBodyReported checks that a body cut off mid-way is reported as
// a failure of the proxy it came through, and that a caller cancelling
// its request is not.
func TestBrokenBodyReported(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, "127.0.1.1"))
	cl := &countingLeaser{Leaser: Local(e.mgr)}
	rt := e.transportWith(cl, WithSuccessReportInterval(0))
	c := &http.Client{Transport: rt}

	resp, err := c.Get(e.tg.TLS.URL + "/cut")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("read a cut body without error")
	}
	resp.Body.Close()
	if p := e.proxy("127.0.1.1"); p.FailureStreak != 1 || !strings.Contains(p.LastError, "response body broke") {
		t.Fatalf("proxy streak %d, last error %q; want the broken body reported", p.FailureStreak, p.LastError)
	}
	e.noLeases()

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.tg.TLS.URL+"/stream", nil)
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	io.ReadAll(resp.Body)
	resp.Body.Close()
	cl.mu.Lock()
	last := cl.outcomes[len(cl.outcomes)-1]
	cl.mu.Unlock()
	if last.Kind != pharox.OutcomeSuccess {
		t.Fatalf("after the caller cancelled, reported %+v, want the success of the answer", last)
	}
	e.noLeases()
	close(e.tg.release)
}
