// Package server is the pharox HTTP service: a JSON API over a
// [pharox.Manager] and its store. It keeps no business rules of its own:
// handlers decode and check the wire format, call the Manager or the store,
// and map the root package's sentinel errors to status codes in one place.
//
// The API honours the wire contract of the Python pharox service (paths
// with their exact trailing slashes, {"detail": ...} errors, timestamps
// with a +00:00 offset, 409 "No proxy available") and extends it with
// consumers, sticky sessions, waiting acquisitions, renewals, outcome
// reports, lease listings, stats, imports and health sweeps. Every route
// comes from one table that both registers handlers and produces the
// OpenAPI document served at /openapi.json.
//
// Requests carry an API key in the X-API-Key header: a bootstrap key of
// the Options (AdminKeys, ConsumerKeys) or a key kept in the store
// ([pharox.KeyStore]), created, rotated and revoked through /v1/keys/ and
// seen by every server sharing the store within a few seconds. Admin keys
// may do everything; viewer keys every read but keys and the audit log;
// consumer keys may lease (acquire, read, renew, release, report
// outcomes), ensure and list consumers and read pools and stats. A stored
// consumer key acts only as its consumers, on their leases (404 for
// others'), from its pools (403 otherwise), and reads its consumers' usage
// and quotas; bootstrap consumer keys may use a bounded number of consumer
// names (Options.MaxConsumersPerKey) and read no usage or quotas. Admin
// changes go to the store's audit log (/v1/audit/).
//
// Releases may report the traffic the lease carried; /v1/usage totals it
// and /v1/quotas/ limits consumers, pools and proxies. An acquisition over
// a quota is answered 429 with Retry-After, a detail naming the quota and
// an [api.QuotaRefusal]; the reaper purges usage buckets older than
// Options.UsageRetention. /healthz, /readyz and
// /openapi.json need no key; /metrics needs one of any role unless
// Options.MetricsPublic.
//
// The operator dashboard is served at /ui/ (package ui): its static files
// need no key, and the pages read the API with an admin or viewer key.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/internal/keyauth"
	"github.com/pharox/pharox/server/ui"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults for Options fields left zero, and limits of list queries.
const (
	// DefaultMaxWait caps how long an acquisition may wait for a proxy.
	DefaultMaxWait = 30 * time.Second
	// DefaultMaxBodyBytes caps request bodies.
	DefaultMaxBodyBytes = 1 << 20
	// DefaultMaxImportBytes caps proxy import bodies.
	DefaultMaxImportBytes = 16 << 20
	// DefaultReapInterval is how often expired leases are reclaimed.
	DefaultReapInterval = 5 * time.Second
	// DefaultLeaseRetention is how long ended leases are kept.
	DefaultLeaseRetention = 24 * time.Hour
	// DefaultListLimit is how many leases a listing returns by default.
	DefaultListLimit = 1000
	// MaxListLimit is the largest limit a lease listing accepts.
	MaxListLimit = 10000
	// DefaultMaxConsumersPerKey is how many consumer names one consumer
	// key may use when Options.MaxConsumersPerKey is zero.
	DefaultMaxConsumersPerKey = 1000
	// DefaultUISampleInterval is how often the dashboard's charts sample.
	DefaultUISampleInterval = 5 * time.Second
	// uiSeriesLength is how many samples the dashboard's charts keep.
	uiSeriesLength = 360
)

// SweepFunc probes every proxy of a pool and applies the results. target
// overrides the configured probe URL when not empty. It is injected so
// that the server does not depend on a particular health checker.
type SweepFunc func(ctx context.Context, pool string, target string) (api.SweepResult, error)

// Options configures a Server. The zero value serves nothing to anyone
// (no keys); set AdminKeys, ConsumerKeys or DisableAuth.
type Options struct {
	// AdminKeys and ConsumerKeys are the bootstrap API keys per role,
	// accepted beside the keys the store keeps (when it implements
	// pharox.KeyStore). Bootstrap consumer keys are not bound to consumers.
	AdminKeys    []string
	ConsumerKeys []string
	// DisableAuth serves every route without a key, as admin. For tests
	// and trusted sockets only.
	DisableAuth bool

	// Logger receives the access log and errors. Nil means slog.Default().
	Logger *slog.Logger
	// AccessLog logs one line per request at Info level.
	AccessLog bool

	// MaxWait caps an acquisition's wait_seconds (DefaultMaxWait).
	MaxWait time.Duration
	// MaxBodyBytes caps request bodies (DefaultMaxBodyBytes);
	// MaxImportBytes caps proxy imports (DefaultMaxImportBytes).
	MaxBodyBytes   int64
	MaxImportBytes int64

	// Sweep runs a health sweep of one pool; nil answers 501 to
	// POST /v1/pools/{pool_id}/health-check and disables periodic sweeps.
	Sweep SweepFunc
	// SweepInterval, when positive, sweeps every pool periodically in Run
	// or Serve.
	SweepInterval time.Duration
	// HealthTarget is the probe URL Sweep uses when a request gives none,
	// or empty when it has none; the dashboard shows it, and asks for a
	// target before sweeping when there is none.
	HealthTarget string

	// ReapInterval is how often expired leases are reclaimed in Run or
	// Serve (DefaultReapInterval; negative disables).
	ReapInterval time.Duration
	// LeaseRetention is how long ended leases are kept before the reaper
	// purges them (DefaultLeaseRetention; negative keeps them forever).
	LeaseRetention time.Duration
	// UsageRetention is how long the hourly usage buckets are kept: the
	// reaper purges older ones once an hour (DefaultUsageRetention;
	// negative keeps them forever).
	UsageRetention time.Duration

	// Gatherer is served at /metrics; nil serves the HTTP metrics only.
	Gatherer prometheus.Gatherer
	// Registerer receives the server's own HTTP metrics; nil uses a
	// private registry that /metrics also serves.
	Registerer prometheus.Registerer
	// MetricsPublic serves /metrics without a key. By default /metrics
	// needs a key of any role: metrics name pools and, when the recorder
	// labels them so, consumers.
	MetricsPublic bool

	// MaxConsumersPerKey caps how many distinct consumer names one
	// bootstrap consumer key may use (acquiring as, or ensuring, a
	// consumer) in this process: a key past it gets 403 for a new name. It
	// bounds the consumer rows and metric series one key can make. Zero
	// means DefaultMaxConsumersPerKey; negative means no limit. Admin keys
	// are not limited; stored consumer keys use only their own consumers.
	MaxConsumersPerKey int

	// ShutdownTimeout bounds how long Serve waits for in-flight requests
	// after its context ends (default MaxWait + 10s).
	ShutdownTimeout time.Duration

	// UISampleInterval is how often Run or Serve samples acquisitions and
	// proxy health for the dashboard's charts at /ui/
	// (DefaultUISampleInterval; negative disables).
	UISampleInterval time.Duration
}

// Server serves the pharox HTTP API.
type Server struct {
	mgr     *pharox.Manager
	store   pharox.Storage
	opts    Options
	log     *slog.Logger
	auth    *keyauth.Authenticator
	mux     *http.ServeMux
	routes  []route
	handler http.Handler
	metrics *httpMetrics
	gather  prometheus.Gatherer

	// stopping ends waiting acquisitions when the server shuts down, so
	// that shutdown need not wait out their full wait.
	stopping context.Context
	stop     context.CancelFunc

	// pools caches pool names by id: the Manager leases by name, the
	// Python contract names pools by id, and a pool never changes its
	// name. A deleted and recreated pool is caught after the acquisition
	// (see acquire).
	pools sync.Map // uuid.UUID -> string
	// poolNames holds the names of pools known to exist, so that an
	// acquisition by pool name can check the pool before it creates a
	// consumer without asking the store each time (see knownPool).
	poolNames sync.Map // string -> uuid.UUID
	// consumers caches consumer names by id, for requests that name the
	// consumer by id: the Manager acquires by name, and a consumer never
	// changes its name. Misses go to the store (see consumerName).
	consumers sync.Map // uuid.UUID -> string
	// expiries lets a release skip reading the lease first (see release).
	expiries expiryHints
	// owners lets ownership checks skip reading the lease (see checkOwner).
	owners leaseOwners

	// keyConsumers holds the consumer names each consumer key has used,
	// to enforce Options.MaxConsumersPerKey.
	keyConsumers keyConsumers

	metricsOnce    sync.Once
	metricsHandler http.Handler

	openapiOnce sync.Once
	openapiDoc  []byte

	// ui keeps the dashboard's history and sweeps in flight.
	ui *ui.Recorder

	// usagePurgeMu guards nextUsagePurge, when the reaper next purges
	// usage buckets (see purgeUsage).
	usagePurgeMu   sync.Mutex
	nextUsagePurge time.Time
}

// New returns a Server over mgr.
func New(mgr *pharox.Manager, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxWait <= 0 {
		opts.MaxWait = DefaultMaxWait
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.MaxImportBytes <= 0 {
		opts.MaxImportBytes = DefaultMaxImportBytes
	}
	if opts.ReapInterval == 0 {
		opts.ReapInterval = DefaultReapInterval
	}
	if opts.LeaseRetention == 0 {
		opts.LeaseRetention = DefaultLeaseRetention
	}
	if opts.UsageRetention == 0 {
		opts.UsageRetention = DefaultUsageRetention
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = opts.MaxWait + 10*time.Second
	}
	if opts.UISampleInterval == 0 {
		opts.UISampleInterval = DefaultUISampleInterval
	}
	if opts.MaxConsumersPerKey == 0 {
		opts.MaxConsumersPerKey = DefaultMaxConsumersPerKey
	}
	s := &Server{
		mgr:   mgr,
		store: mgr.Storage(),
		opts:  opts,
		log:   opts.Logger,
		auth:  keyauth.New(mgr.Storage(), opts.AdminKeys, opts.ConsumerKeys),
		mux:   http.NewServeMux(),
	}
	s.ui = ui.NewRecorder(uiSeriesLength, max(s.opts.UISampleInterval, 0))
	if s.opts.Sweep != nil {
		s.opts.Sweep = s.trackSweep(s.opts.Sweep)
	}
	s.stopping, s.stop = context.WithCancel(context.Background())
	s.metrics, s.gather = newHTTPMetrics(opts.Registerer, opts.Gatherer)
	if s.auth.Empty() && !opts.DisableAuth {
		s.log.Warn("pharox server: no API keys configured; every authenticated route answers 401")
	}
	s.routes = routeTable()
	for i := range s.routes {
		s.register(&s.routes[i])
	}
	// The dashboard's static files carry no data: they need no key, and
	// the pages read everything from the API with the operator's key.
	s.mux.Handle("GET /ui/", http.StripPrefix("/ui", ui.Handler()))
	s.mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	s.mux.HandleFunc("/", s.noRoute)
	s.handler = s.accessLog(s.mux)
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// Handler returns the server as an http.Handler.
func (s *Server) Handler() http.Handler { return s.handler }

// HTTPServer returns an http.Server for the handler with timeouts that fit
// the API: the write timeout outlasts the longest wait for a proxy.
func (s *Server) HTTPServer(addr string) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      s.opts.MaxWait + 30*time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

// Serve serves ln until ctx ends, running the background jobs (reaper,
// periodic sweeps) alongside. Then it stops accepting connections, ends
// waiting acquisitions early, and waits up to ShutdownTimeout for
// in-flight requests to finish. It returns nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := s.HTTPServer(ln.Addr().String())
	bgCtx, bgCancel := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { s.RunBackground(bgCtx) })
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()

	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		s.stop()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.ShutdownTimeout)
		err = hs.Shutdown(sctx)
		cancel()
		if serveErr := <-errc; !errors.Is(serveErr, http.ErrServerClosed) && err == nil {
			err = serveErr
		}
	}
	bgCancel()
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// ListenAndServe listens on addr and calls Serve. ready, when not nil, is
// called with the bound address before serving (useful with port 0).
func (s *Server) ListenAndServe(ctx context.Context, addr string, ready func(net.Addr)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("pharox server: listen on %s: %w", addr, err)
	}
	if ready != nil {
		ready(ln.Addr())
	}
	return s.Serve(ctx, ln)
}

// Close ends waiting acquisitions. Serve calls it on shutdown; call it
// yourself when you serve the Handler with your own http.Server.
func (s *Server) Close() { s.stop() }

// RunBackground runs the reaper and, if configured, periodic health sweeps
// until ctx ends. Serve runs it; call it yourself when you serve the
// Handler with your own http.Server.
func (s *Server) RunBackground(ctx context.Context) {
	var wg sync.WaitGroup
	if s.opts.ReapInterval > 0 {
		wg.Go(func() { s.every(ctx, s.opts.ReapInterval, s.Reap) })
	}
	if s.opts.Sweep != nil && s.opts.SweepInterval > 0 {
		wg.Go(func() { s.every(ctx, s.opts.SweepInterval, s.SweepAll) })
	}
	if s.opts.UISampleInterval > 0 {
		wg.Go(func() { s.every(ctx, s.opts.UISampleInterval, s.sampleUI) })
	}
	wg.Go(func() {
		s.auth.Run(ctx, keyauth.DefaultTouchInterval, func(err error) {
			s.log.Warn("pharox server: record when API keys were last used", "err", err)
		})
	})
	wg.Wait()
}

func (s *Server) every(ctx context.Context, d time.Duration, fn func(context.Context)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn(ctx)
		}
	}
}

// Reap reclaims expired leases, purges ended leases older than the lease
// retention and, once an hour, usage buckets older than the usage
// retention. Errors are logged: the next round tries again.
func (s *Server) Reap(ctx context.Context) {
	s.expiries.prune(time.Now())
	n, err := s.mgr.CleanupExpiredLeases(ctx)
	switch {
	case err != nil && ctx.Err() == nil:
		s.log.Error("pharox server: reclaim expired leases", "err", err)
	case n > 0:
		s.log.Info("pharox server: reclaimed expired leases", "count", n)
	}
	if s.opts.LeaseRetention > 0 {
		n, err := s.store.PurgeEndedLeases(ctx, time.Now().Add(-s.opts.LeaseRetention))
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Error("pharox server: purge ended leases", "err", err)
		case n > 0:
			s.log.Info("pharox server: purged ended leases", "count", n, "retention", s.opts.LeaseRetention)
		}
	}
	s.purgeUsage(ctx, time.Now())
}

// SweepAll runs a health sweep of every pool, one after another.
func (s *Server) SweepAll(ctx context.Context) {
	if s.opts.Sweep == nil {
		return
	}
	pools, err := s.store.ListPools(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("pharox server: list pools for sweep", "err", err)
		}
		return
	}
	for _, p := range pools {
		if ctx.Err() != nil {
			return
		}
		res, err := s.opts.Sweep(ctx, p.Name, "")
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("pharox server: health sweep", "pool", p.Name, "err", err)
			}
			continue
		}
		s.log.Info("pharox server: health sweep", "pool", p.Name, "checked", res.Checked,
			"skipped", res.Skipped, "by_status", res.ByStatus, "duration_ms", res.DurationMS)
	}
}

// poolName returns the name of the pool with this id, from the cache or
// the store.
func (s *Server) poolName(ctx context.Context, id uuid.UUID) (string, error) {
	if name, ok := s.pools.Load(id); ok {
		return name.(string), nil
	}
	p, err := s.store.GetPool(ctx, id)
	if err != nil {
		return "", err
	}
	s.pools.Store(id, p.Name)
	return p.Name, nil
}

// sampleUI records one point of the dashboard's charts.
func (s *Server) sampleUI(ctx context.Context) {
	if err := s.ui.Collect(ctx, s.store); err != nil && ctx.Err() == nil {
		s.log.Warn("pharox server: sample for the dashboard", "err", err)
	}
}

// trackSweep wraps fn so that the dashboard sees sweeps in flight and
// their results. A failure is remembered by the detail its client got.
func (s *Server) trackSweep(fn SweepFunc) SweepFunc {
	return func(ctx context.Context, pool string, target string) (api.SweepResult, error) {
		done := s.ui.SweepStarted(pool)
		res, err := fn(ctx, pool, target)
		detail := ""
		if err != nil {
			_, detail, _ = errorStatus(err)
		}
		done(res, detail)
		return res, err
	}
}

func (s *Server) dashboard(r *http.Request) (any, error) {
	d, err := ui.Build(r.Context(), s.store, s.ui)
	if err != nil {
		return nil, err
	}
	d.SweepEnabled = s.opts.Sweep != nil
	d.SweepTarget = s.opts.HealthTarget
	return d, nil
}

func (s *Server) acquireCounted(r *http.Request) (any, error) {
	lease, err := s.acquire(r)
	s.ui.CountAcquire(err)
	return lease, err
}
