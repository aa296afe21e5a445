package server

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pharox/pharox"
)

// httpMetrics are the server's own request metrics. Labels are the route
// pattern, never the raw path, so their number stays bounded.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// targetOutcomes counts the outcomes reported for a site (target),
	// without a label per site, which would grow with traffic.
	// Acquisitions for a site are the Manager's events (observe).
	targetOutcomes *prometheus.CounterVec
}

func newHTTPMetrics(reg prometheus.Registerer, g prometheus.Gatherer) (*httpMetrics, prometheus.Gatherer) {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pharox", Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests served, by method, route and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "pharox", Subsystem: "http", Name: "request_duration_seconds",
			Help:    "HTTP request latency, by method and route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"method", "route"}),
		targetOutcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pharox", Subsystem: "target", Name: "outcomes_total",
			Help: "Outcomes reported for a site (target), by kind: success, failure or banned.",
		}, []string{"kind"}),
	}
	var gatherer prometheus.Gatherer
	if reg == nil {
		private := prometheus.NewRegistry()
		reg = private
		if g != nil {
			gatherer = prometheus.Gatherers{g, private}
		} else {
			gatherer = private
		}
	} else {
		gatherer = g
		if gatherer == nil {
			gatherer, _ = reg.(prometheus.Gatherer)
		}
		if gatherer == nil {
			gatherer = prometheus.NewRegistry()
		}
	}
	m.requests = register(reg, m.requests)
	m.duration = register(reg, m.duration)
	m.targetOutcomes = register(reg, m.targetOutcomes)
	return m, gatherer
}

// register registers c, or returns the collector already registered under
// the same name, so several servers may share one registry.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}

func (m *httpMetrics) observe(method, route string, status int, d time.Duration) {
	switch method {
	case "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS":
	default:
		method = "other"
	}
	m.requests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(method, route).Observe(d.Seconds())
}

func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) {
	s.metricsOnce.Do(func() {
		s.metricsHandler = promhttp.HandlerFor(s.gather, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	})
	s.metricsHandler.ServeHTTP(w, r)
}

// targetOutcome counts an outcome applied for a site.
func (m *httpMetrics) targetOutcome(kind pharox.OutcomeKind) {
	switch kind {
	case pharox.OutcomeSuccess, pharox.OutcomeFailure, pharox.OutcomeBanned:
		m.targetOutcomes.WithLabelValues(string(kind)).Inc()
	}
}
