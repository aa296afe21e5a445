package observe

import (
	"context"
	"errors"
	"sync"

	"github.com/pharox/pharox"
	"github.com/prometheus/client_golang/prometheus"
)

// Acquisition results, the status label of the acquire metrics.
const (
	StatusHit   = "hit"
	StatusMiss  = "miss"
	StatusError = "error"
	// StatusRefused is an acquisition a quota refused (429 on the wire):
	// the consumer or pool is over its limit, nothing failed.
	StatusRefused = "refused"
)

// unknownPool labels attempts on pools that do not exist, so that clients
// naming random pools cannot grow the label set without bound.
const unknownPool = "_unknown"

// PrometheusOptions tunes the recorder.
type PrometheusOptions struct {
	// Namespace prefixes every metric; empty means "pharox".
	Namespace string
	// ConsumerLabels fills the consumer label of the acquire and release
	// metrics with the consumer's name; without it the label is empty.
	// Every consumer name then adds its own series, so turn it on only
	// when consumer names are few and not chosen by untrusted clients.
	ConsumerLabels bool
	// AcquireBuckets and LeaseBuckets override the histogram buckets (in
	// seconds) of acquire_duration_seconds and lease_duration_seconds.
	AcquireBuckets []float64
	LeaseBuckets   []float64
}

// Prometheus records the Manager's events as Prometheus metrics:
//
//	pharox_acquire_total{pool,consumer,selector,status}        counter
//	pharox_acquire_duration_seconds{pool,consumer,selector,status} histogram
//	pharox_release_total{pool,consumer}                        counter
//	pharox_lease_duration_seconds{pool}                        histogram
//	pharox_pool_proxies_available{pool}                        gauge
//	pharox_pool_proxies_active{pool}                           gauge
//	pharox_pool_proxies_leased{pool}                           gauge
//	pharox_pool_leases_active{pool}                            gauge
//	pharox_pool_proxies{pool,status}                           gauge
//	pharox_health_checks_total{pool,status}                    counter
//	pharox_target_acquire_total{pool,status}                   counter
//	pharox_quota_refusals_total{subject,limit}                 counter
//	pharox_usage_bytes_total{pool,direction}                   counter
//	pharox_usage_requests_total{pool}                          counter
//
// target_acquire_total counts the acquisitions that named a site (target),
// with no label per site, which would grow with traffic.
// quota_refusals_total counts acquisitions refused by a quota, by subject
// (consumer or pool) and limit (max_concurrent_leases, requests_per_minute,
// bytes_per_day, bytes_per_month). usage_bytes_total (direction sent or
// received) and usage_requests_total add up the usage reported at release;
// their only label is the pool, never the consumer or the target.
// status of acquire is hit, miss, refused (by a quota) or error; consumer is empty unless
// PrometheusOptions.ConsumerLabels. The pool gauges follow the
// PoolStats snapshot carried by each event.
type Prometheus struct {
	opts            PrometheusOptions
	acquireTotal    *prometheus.CounterVec
	acquireDuration *prometheus.HistogramVec
	releaseTotal    *prometheus.CounterVec
	leaseDuration   *prometheus.HistogramVec
	available       *prometheus.GaugeVec
	active          *prometheus.GaugeVec
	leased          *prometheus.GaugeVec
	leases          *prometheus.GaugeVec
	byStatus        *prometheus.GaugeVec
	healthChecks    *prometheus.CounterVec
	targetAcquire   *prometheus.CounterVec
	quotaRefusals   *prometheus.CounterVec
	usageBytes      *prometheus.CounterVec
	usageRequests   *prometheus.CounterVec
	pools           sync.Map // pool name -> *poolGauges
}

// NewPrometheus creates the recorder and registers its metrics with reg
// (prometheus.DefaultRegisterer when nil).
func NewPrometheus(reg prometheus.Registerer, opts PrometheusOptions) (*Prometheus, error) {
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	ns := opts.Namespace
	if ns == "" {
		ns = "pharox"
	}
	acqBuckets := opts.AcquireBuckets
	if acqBuckets == nil {
		acqBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	}
	leaseBuckets := opts.LeaseBuckets
	if leaseBuckets == nil {
		leaseBuckets = []float64{.1, .5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600}
	}
	poolGauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: "pool", Name: name, Help: help}, []string{"pool"})
	}
	p := &Prometheus{
		opts: opts,
		acquireTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "acquire_total",
			Help: "Lease acquisitions by pool, consumer, selector strategy and result (hit, miss, error).",
		}, []string{"pool", "consumer", "selector", "status"}),
		acquireDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "acquire_duration_seconds",
			Help:    "Time to acquire a lease, including any wait, by pool, consumer, selector and result.",
			Buckets: acqBuckets,
		}, []string{"pool", "consumer", "selector", "status"}),
		releaseTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "release_total", Help: "Leases released by their holder, by pool and consumer.",
		}, []string{"pool", "consumer"}),
		leaseDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "lease_duration_seconds",
			Help:    "How long released leases were held, by pool.",
			Buckets: leaseBuckets,
		}, []string{"pool"}),
		available: poolGauge("proxies_available", "Leasable proxies with a free slot, per pool."),
		active:    poolGauge("proxies_active", "Proxies in a leasable status (active or slow), per pool."),
		leased:    poolGauge("proxies_leased", "Proxies holding at least one active lease, per pool."),
		leases:    poolGauge("leases_active", "Active leases, per pool."),
		byStatus: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: "pool", Name: "proxies", Help: "Proxies per pool and health status.",
		}, []string{"pool", "status"}),
		healthChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "health_checks_total",
			Help: "Proxies checked by health sweeps, by pool and resulting status.",
		}, []string{"pool", "status"}),
		targetAcquire: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "target", Name: "acquire_total",
			Help: "Acquisitions that named a site (target), by pool and result (hit; miss when no proxy was free and not cooling down for the site; error).",
		}, []string{"pool", "status"}),
		quotaRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "quota", Name: "refusals_total",
			Help: "Acquisitions refused by a quota, by subject (consumer or pool) and limit.",
		}, []string{"subject", "limit"}),
		usageBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "usage", Name: "bytes_total",
			Help: "Bytes reported at release as carried through the leased proxies, by pool and direction (sent or received).",
		}, []string{"pool", "direction"}),
		usageRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "usage", Name: "requests_total",
			Help: "Requests reported at release as sent through the leased proxies, by pool.",
		}, []string{"pool"}),
	}
	for _, c := range []prometheus.Collector{p.acquireTotal, p.acquireDuration, p.releaseTotal, p.leaseDuration,
		p.available, p.active, p.leased, p.leases, p.byStatus, p.healthChecks, p.targetAcquire,
		p.quotaRefusals, p.usageBytes, p.usageRequests} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// ManagerOptions returns the callbacks that feed the recorder.
func (p *Prometheus) ManagerOptions() []pharox.ManagerOption {
	return []pharox.ManagerOption{
		pharox.WithAcquireCallback(p.ObserveAcquire),
		pharox.WithReleaseCallback(p.ObserveRelease),
	}
}

func (p *Prometheus) consumer(name string) string {
	if !p.opts.ConsumerLabels {
		return ""
	}
	return name
}

// ObserveAcquire records one acquisition attempt.
func (p *Prometheus) ObserveAcquire(_ context.Context, ev pharox.AcquireEvent) {
	status := StatusHit
	switch {
	case ev.Err == nil:
	case errors.Is(ev.Err, pharox.ErrNoProxyAvailable):
		status = StatusMiss
	case errors.Is(ev.Err, pharox.ErrQuotaExceeded):
		status = StatusRefused
		if qe, ok := errors.AsType[*pharox.QuotaError](ev.Err); ok {
			p.quotaRefusals.WithLabelValues(string(qe.Subject), qe.Limit).Inc()
		}
	default:
		status = StatusError
	}
	pool := ev.Pool
	if errors.Is(ev.Err, pharox.ErrPoolNotFound) {
		pool = unknownPool
	}
	labels := []string{pool, p.consumer(ev.Consumer), string(ev.Strategy.OrDefault()), status}
	p.acquireTotal.WithLabelValues(labels...).Inc()
	p.acquireDuration.WithLabelValues(labels...).Observe(ev.Duration.Seconds())
	if ev.Target != "" {
		p.targetAcquire.WithLabelValues(pool, status).Inc()
	}
	p.observeStats(ev.Stats)
}

// ObserveRelease records one release.
func (p *Prometheus) ObserveRelease(_ context.Context, ev pharox.ReleaseEvent) {
	consumer := ""
	if ev.Lease != nil {
		consumer = ev.Lease.ConsumerName
	}
	p.releaseTotal.WithLabelValues(ev.Pool, p.consumer(consumer)).Inc()
	if ev.Lease != nil && ev.Lease.Usage != nil {
		u := ev.Lease.Usage
		p.usageBytes.WithLabelValues(ev.Pool, "sent").Add(float64(u.BytesSent))
		p.usageBytes.WithLabelValues(ev.Pool, "received").Add(float64(u.BytesReceived))
		p.usageRequests.WithLabelValues(ev.Pool).Add(float64(u.Requests))
	}
	if ev.LeaseDuration >= 0 {
		p.leaseDuration.WithLabelValues(ev.Pool).Observe(ev.LeaseDuration.Seconds())
	}
	p.observeStats(ev.Stats)
}

// ObserveStats sets the pool gauges from a snapshot. Events call it; call
// it yourself to refresh pools that see no traffic.
func (p *Prometheus) ObserveStats(s *pharox.PoolStats) { p.observeStats(s) }

// poolGauges are one pool's gauges, resolved once: every event sets them,
// and resolving label values costs more than setting the value.
type poolGauges struct {
	available, active, leased, leases prometheus.Gauge
	byStatus                          []prometheus.Gauge // in AllProxyStatuses order
}

func (p *Prometheus) gaugesFor(pool string) *poolGauges {
	if g, ok := p.pools.Load(pool); ok {
		return g.(*poolGauges)
	}
	g := &poolGauges{
		available: p.available.WithLabelValues(pool),
		active:    p.active.WithLabelValues(pool),
		leased:    p.leased.WithLabelValues(pool),
		leases:    p.leases.WithLabelValues(pool),
	}
	for _, st := range pharox.AllProxyStatuses {
		g.byStatus = append(g.byStatus, p.byStatus.WithLabelValues(pool, string(st)))
	}
	actual, _ := p.pools.LoadOrStore(pool, g)
	return actual.(*poolGauges)
}

func (p *Prometheus) observeStats(s *pharox.PoolStats) {
	if s == nil || s.PoolName == "" {
		return
	}
	g := p.gaugesFor(s.PoolName)
	g.available.Set(float64(s.AvailableProxies))
	g.active.Set(float64(s.ActiveProxies))
	g.leased.Set(float64(s.LeasedProxies))
	g.leases.Set(float64(s.TotalLeases))
	for i, st := range pharox.AllProxyStatuses {
		g.byStatus[i].Set(float64(s.ByStatus[st]))
	}
}

// ObserveSweep counts the proxies a health sweep of pool checked, by the
// status each ended in.
func (p *Prometheus) ObserveSweep(pool string, byStatus map[string]int) {
	for status, n := range byStatus {
		if n > 0 {
			p.healthChecks.WithLabelValues(pool, status).Add(float64(n))
		}
	}
}

// AcquireTotal, ReleaseTotal and HealthChecks expose the counters, for
// tests and for callers that add their own events.
func (p *Prometheus) AcquireTotal() *prometheus.CounterVec { return p.acquireTotal }

// ReleaseTotal is the release counter.
func (p *Prometheus) ReleaseTotal() *prometheus.CounterVec { return p.releaseTotal }

// HealthChecks is the health sweep counter.
func (p *Prometheus) HealthChecks() *prometheus.CounterVec { return p.healthChecks }

// TargetAcquire is the counter of acquisitions that named a site.
func (p *Prometheus) TargetAcquire() *prometheus.CounterVec { return p.targetAcquire }

// QuotaRefusals is the counter of acquisitions refused by a quota.
func (p *Prometheus) QuotaRefusals() *prometheus.CounterVec { return p.quotaRefusals }

// UsageBytes is the counter of bytes reported at release.
func (p *Prometheus) UsageBytes() *prometheus.CounterVec { return p.usageBytes }

// UsageRequests is the counter of requests reported at release.
func (p *Prometheus) UsageRequests() *prometheus.CounterVec { return p.usageRequests }
