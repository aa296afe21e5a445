package gateway

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pharox/pharox"
)

// metrics are the gateway's Prometheus collectors; a nil *metrics records
// nothing.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	latency  *prometheus.HistogramVec
	tunnels  *prometheus.GaugeVec
	bytes    *prometheus.CounterVec
	failures *prometheus.CounterVec
	retries  prometheus.Counter
	// targetOutcomes and targetMisses keep per-site health visible
	// without a label per site, which would grow with traffic.
	targetOutcomes *prometheus.CounterVec
	targetMisses   prometheus.Counter
	// usageBytes and usageRequests count the metered traffic reported at
	// release, by pool (pools are few and made by the operator, unlike
	// consumers, sites or sessions, which are left out).
	usageBytes    *prometheus.CounterVec
	usageRequests *prometheus.CounterVec
	quotaRefusals *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	const ns, sub = "pharox", "gateway"
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Requests and tunnels served, by kind (http, connect, socks5) and status (the gateway's answer; 499 when the client went away)."},
			[]string{"kind", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "request_duration_seconds",
			Help: "Time from the request to its end (for tunnels: their lifetime), by kind.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 12)},
			[]string{"kind"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "upstream_latency_seconds",
			Help: "Time for an upstream to answer a request's headers or to open a tunnel, by kind.", Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 14)},
			[]string{"kind"}),
		tunnels: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "tunnels_open",
			Help: "Tunnels open now, by kind (connect, socks5)."}, []string{"kind"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "bytes_total",
			Help: "Payload bytes relayed, by direction: in (from clients) and out (to clients)."}, []string{"direction"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "upstream_failures_total",
			Help: "Failed attempts through an upstream, by reason (connect, proxy_auth, ban, broken, target_unreachable)."}, []string{"reason"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "retries_total",
			Help: "Requests and tunnels retried on another upstream."}),
		targetOutcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "target_outcomes_total",
			Help: "Outcomes reported for the request's site (target), by kind: success, or banned (which cools the upstream down for that site only)."},
			[]string{"kind"}),
		targetMisses: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "target_misses_total",
			Help: "Acquisitions for a site (target) that found no upstream: every free one was cooling down for the site, or none was free."}),
		usageBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "usage_bytes_total",
			Help: "Bytes metered per lease and reported at its release, by pool and direction: sent to and received from upstream proxies (forwarded requests: the bytes on the upstream connection; tunnels: their payload)."},
			[]string{"pool", "direction"}),
		usageRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "usage_requests_total",
			Help: "Requests and tunnels metered per lease and reported at its release, by pool."}, []string{"pool"}),
		quotaRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "quota_refusals_total",
			Help: "Acquisitions refused by a quota (answered 429, or SOCKS5 \"connection not allowed\"), by subject (consumer, pool) and limit."},
			[]string{"subject", "limit"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.latency, m.tunnels, m.bytes, m.failures, m.retries, m.targetOutcomes, m.targetMisses,
		m.usageBytes, m.usageRequests, m.quotaRefusals} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("gateway: metrics already registered (one gateway per registry): %w", err)
			}
			return nil, fmt.Errorf("gateway: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) done(st *reqState, d time.Duration) {
	if m == nil {
		return
	}
	code := st.status
	if code == 0 {
		code = 499
	}
	m.requests.WithLabelValues(st.kind, strconv.Itoa(code)).Inc()
	m.duration.WithLabelValues(st.kind).Observe(d.Seconds())
	if n := st.sent.Load(); n > 0 {
		m.bytes.WithLabelValues("in").Add(float64(n))
	}
	if n := st.received.Load(); n > 0 {
		m.bytes.WithLabelValues("out").Add(float64(n))
	}
}

func (m *metrics) upstreamLatency(kind string, d time.Duration) {
	if m != nil {
		m.latency.WithLabelValues(kind).Observe(d.Seconds())
	}
}

func (m *metrics) tunnelOpen(kind string, delta float64) {
	if m != nil {
		m.tunnels.WithLabelValues(kind).Add(delta)
	}
}

func (m *metrics) upstreamFailure(reason string) {
	if m != nil {
		m.failures.WithLabelValues(reason).Inc()
	}
}

func (m *metrics) retry() {
	if m != nil {
		m.retries.Inc()
	}
}

func (m *metrics) targetOutcome(kind pharox.OutcomeKind) {
	if m != nil {
		m.targetOutcomes.WithLabelValues(string(kind)).Inc()
	}
}

func (m *metrics) targetMiss() {
	if m != nil {
		m.targetMisses.Inc()
	}
}

// usage counts what a release reports.
func (m *metrics) usage(pool string, u *pharox.Usage) {
	if m == nil || u == nil || u.IsZero() {
		return
	}
	if u.BytesSent > 0 {
		m.usageBytes.WithLabelValues(pool, "sent").Add(float64(u.BytesSent))
	}
	if u.BytesReceived > 0 {
		m.usageBytes.WithLabelValues(pool, "received").Add(float64(u.BytesReceived))
	}
	if u.Requests > 0 {
		m.usageRequests.WithLabelValues(pool).Add(float64(u.Requests))
	}
}

func (m *metrics) quotaRefusal(subject, limit string) {
	if m != nil {
		m.quotaRefusals.WithLabelValues(subject, limit).Inc()
	}
}
