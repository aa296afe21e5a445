package observe

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pharox/pharox"
)

// Results of a Transport request, the result label of
// transport_requests_total.
const (
	ResultOK       = "ok"
	ResultNoProxy  = "no_proxy"
	ResultCanceled = "canceled"
	ResultError    = "error"
)

// TransportMetrics records the events of a transport.Transport (it is a
// transport.Observer):
//
//	pharox_transport_requests_total{pool,result}            counter
//	pharox_transport_attempts_total{pool,outcome}           counter
//	pharox_transport_retries_total{pool}                    counter
//	pharox_transport_lease_wait_seconds{pool,status}        histogram
//	pharox_transport_target_outcomes_total{pool,outcome}    counter
//
// result is ok (a response came back, whatever its status), no_proxy,
// canceled or error; outcome is success, failure, banned or none (the
// attempt said nothing about the proxy); status is hit, miss or error.
// target_outcomes_total counts the outcomes that went with the request's
// site (target): success, or banned, which cools the proxy down for that
// site only. It has no label per site, which would grow with traffic.
type TransportMetrics struct {
	requests *prometheus.CounterVec
	attempts *prometheus.CounterVec
	retries  *prometheus.CounterVec
	wait     *prometheus.HistogramVec
	targets  *prometheus.CounterVec
}

// NewTransportMetrics creates the recorder and registers its metrics with
// reg (prometheus.DefaultRegisterer when nil). Namespace and
// AcquireBuckets of opts apply; the other fields do not.
func NewTransportMetrics(reg prometheus.Registerer, opts PrometheusOptions) (*TransportMetrics, error) {
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	ns := opts.Namespace
	if ns == "" {
		ns = "pharox"
	}
	buckets := opts.AcquireBuckets
	if buckets == nil {
		buckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	}
	const sub = "transport"
	m := &TransportMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Requests sent through leased proxies, by pool and result (ok, no_proxy, canceled, error)."},
			[]string{"pool", "result"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "attempts_total",
			Help: "Attempts through a proxy, by pool and the outcome reported (success, failure, banned, none)."},
			[]string{"pool", "outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "retries_total",
			Help: "Requests sent again through another proxy, by pool."}, []string{"pool"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "lease_wait_seconds",
			Help: "Time to lease a proxy for a request, waiting included, by pool and status (hit, miss, error).", Buckets: buckets},
			[]string{"pool", "status"}),
		targets: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "target_outcomes_total",
			Help: "Outcomes reported for the request's site (target), by pool and outcome (success, banned)."},
			[]string{"pool", "outcome"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.attempts, m.retries, m.wait, m.targets} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// ObserveLeaseWait records one acquisition.
func (m *TransportMetrics) ObserveLeaseWait(pool string, d time.Duration, err error) {
	status := StatusHit
	switch {
	case err == nil:
	case errors.Is(err, pharox.ErrNoProxyAvailable):
		status = StatusMiss
	default:
		status = StatusError
	}
	if errors.Is(err, pharox.ErrPoolNotFound) {
		pool = unknownPool
	}
	m.wait.WithLabelValues(pool, status).Observe(d.Seconds())
}

// ObserveOutcome records one attempt's outcome.
func (m *TransportMetrics) ObserveOutcome(pool string, o pharox.Outcome) {
	kind := string(o.Kind)
	if kind == "" {
		kind = "none"
	}
	m.attempts.WithLabelValues(pool, kind).Inc()
	if o.Target != "" {
		m.targets.WithLabelValues(pool, kind).Inc()
	}
}

// ObserveRequest records one request.
func (m *TransportMetrics) ObserveRequest(pool string, attempts int, err error) {
	result := ResultOK
	switch {
	case err == nil:
	case errors.Is(err, pharox.ErrNoProxyAvailable):
		result = ResultNoProxy
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		result = ResultCanceled
	default:
		result = ResultError
	}
	if errors.Is(err, pharox.ErrPoolNotFound) {
		pool = unknownPool
	}
	m.requests.WithLabelValues(pool, result).Inc()
	if attempts > 1 {
		m.retries.WithLabelValues(pool).Add(float64(attempts - 1))
	}
}

// Requests is the request counter, for tests and dashboards.
func (m *TransportMetrics) Requests() *prometheus.CounterVec { return m.requests }

// Attempts is the attempt counter.
func (m *TransportMetrics) Attempts() *prometheus.CounterVec { return m.attempts }

// TargetOutcomes is the counter of outcomes reported for a site.
func (m *TransportMetrics) TargetOutcomes() *prometheus.CounterVec { return m.targets }

// Retries is the retry counter.
func (m *TransportMetrics) Retries() *prometheus.CounterVec { return m.retries }
