package transport

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
	"github.com/pharox/pharox/observe"
)

// TestMetrics checks the Prometheus figures of a Transport: requests by
// result, attempts by outcome, retries and lease waits.
func TestMetrics(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	e.addProxy(e.pool.ID, testpeers.StartHTTP(t, "127.0.1.1"), "AR")
	e.addProxy(e.pool.ID, testpeers.StartHTTP(t, "127.0.1.2"), "UY")
	reg := prometheus.NewRegistry()
	m, err := observe.NewTransportMetrics(reg, observe.PrometheusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rt := e.transport(WithObserver(m), WithStrategy(pharox.RoundRobin), WithMaxWait(0))
	c := &http.Client{Transport: rt}
	e.tg.Ban("127.0.1.1")
	for range 4 {
		if code, _ := fetch(t, c, context.Background(), e.tg.Plain.URL); code != http.StatusOK {
			t.Fatalf("answer %d, want 200", code)
		}
	}
	nowhere := WithRequestOptions(context.Background(), RequestOptions{Filters: &pharox.Filters{Country: "ZZ"}})
	req, _ := http.NewRequestWithContext(nowhere, http.MethodGet, e.tg.Plain.URL, nil)
	if _, err := c.Do(req); !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("request matching no proxy: %v, want ErrNoProxyAvailable", err)
	}

	if got := testutil.ToFloat64(m.Requests().WithLabelValues("main", observe.ResultOK)); got != 4 {
		t.Errorf("ok requests %v, want 4", got)
	}
	if got := testutil.ToFloat64(m.Requests().WithLabelValues("main", observe.ResultNoProxy)); got != 1 {
		t.Errorf("no_proxy requests %v, want 1", got)
	}
	bans := testutil.ToFloat64(m.Attempts().WithLabelValues("main", "banned"))
	retries := testutil.ToFloat64(m.Retries().WithLabelValues("main"))
	if bans < 1 || retries != bans {
		t.Errorf("%v banned attempts and %v retries, want at least one, as many retries as bans", bans, retries)
	}
	if got := testutil.ToFloat64(m.Attempts().WithLabelValues("main", "success")); got != 4 {
		t.Errorf("successful attempts %v, want 4", got)
	}
	if n := testutil.CollectAndCount(reg, "pharox_transport_lease_wait_seconds"); n != 2 {
		t.Errorf("%d lease wait series, want hit and miss", n)
	}
	e.noLeases()
}
