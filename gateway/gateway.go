package gateway

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/client"
	"github.com/pharox/pharox/internal/outage"
)

// ReasonHeader carries the gateway's reason on the answers it makes itself
// (407, 400, 502, 503), so clients can tell them from the target's.
const ReasonHeader = "X-Pharox-Reason"

// Defaults applied by New.
const (
	DefaultConsumer         = "gateway"
	DefaultLeaseDuration    = 60 * time.Second
	DefaultDialTimeout      = 10 * time.Second
	DefaultMaxTransports    = 256
	DefaultMaxIdlePerTarget = 64
	// DefaultIdleTimeout closes a tunnel that carried no byte either way
	// this long, releasing its lease.
	DefaultIdleTimeout = 5 * time.Minute
	// DefaultMaxConns caps the requests and tunnels served at once.
	DefaultMaxConns = 4096
	// DefaultResponseHeaderTimeout bounds the wait for an upstream's
	// response header once a plain request is sent.
	DefaultResponseHeaderTimeout = 60 * time.Second
	// releaseTimeout bounds a release or report made after the client
	// went away.
	releaseTimeout = 10 * time.Second
	// socksHandshakeTimeout bounds a SOCKS5 client's greeting and request.
	socksHandshakeTimeout = 30 * time.Second
	// halfCloseGrace is how long a tunnel waits for the client to finish
	// after the upstream side has ended.
	halfCloseGrace = 10 * time.Second
	copyBufferSize = 32 << 10
)

// Config configures a Gateway. Only Leaser is required.
type Config struct {
	// Leaser is where upstream proxies come from.
	Leaser Leaser
	// DefaultPool is used when the user name names no pool. Without it, a
	// request must name one.
	DefaultPool string
	// User and Password, when either is set, require inbound proxy auth:
	// the password must match and, with User set, the user name must be
	// User or start with User followed by '-' and routing parameters.
	// Without them any (or no) credentials are accepted and the user name
	// still carries routing parameters.
	User, Password string
	// Keys, when set, makes the proxy password an API key (instead of
	// Password, which must then be empty): the key's user takes leases
	// for its own consumer, only from its pools (403 otherwise), and a
	// viewer key cannot lease. The user name still carries the routing
	// (starting with User when it is set). Unknown, revoked and expired
	// keys are answered 407.
	Keys KeyChecker
	// Consumer is the consumer name leases are taken for; default "gateway".
	Consumer string
	// Strategy orders candidate proxies; default round_robin, so traffic
	// rotates across the pool.
	Strategy pharox.Strategy
	// LeaseDuration is the lease length per request; tunnels renew their
	// lease at half of it while open. Default 60s.
	LeaseDuration time.Duration
	// AcquireWait is how long a request waits for a free upstream slot
	// before answering 503. Zero answers at once.
	AcquireWait time.Duration
	// BanStatuses are answers that mean the upstream is banned by the
	// target: reported as bans and retried on another upstream when safe.
	// Nil means 429, and 403 too for a request whose site is known (see
	// DisableTargetHealth): the ban then counts for that site only, and
	// many sites answer 403 to an address they block. An empty non-nil
	// slice disables ban detection.
	BanStatuses []int
	// BanMarkers are phrases of block pages ("captcha", "access denied"):
	// an answer with status 400 or above whose first 4 KiB of body
	// contain one (compared case-insensitively) is a ban too. Only plain
	// HTTP requests are read; a CONNECT tunnel is opaque. Nil or empty
	// reads no body.
	BanMarkers []string
	// DisableTargetHealth stops keeping health per site (target). By
	// default the gateway takes each request's site (the registrable
	// domain of its host, see pharox.NormalizeTarget), leases only
	// upstreams not cooling down for it, and reports bans for that site
	// only, so an upstream one site blocks keeps serving the others.
	// Failures of an upstream itself (unreachable, refused its
	// credentials, broke the exchange) count everywhere either way. With a
	// lease source that keeps no per-site health the gateway turns it off
	// by itself and bans count everywhere, as with this set.
	DisableTargetHealth bool
	// DisableMetering stops counting traffic per lease. By default each
	// lease's release reports what it carried (pharox.Usage): for a
	// forwarded request, its request and response bytes on the connection
	// to the upstream proxy; for a CONNECT or SOCKS5 tunnel, the payload
	// each way once the tunnel is open; one request per forwarded request
	// or tunnel. The lease source adds it to its usage aggregates and
	// quota counters (see pharox.UsageStore) as part of the release.
	DisableMetering bool
	// DialTimeout bounds reaching an upstream, including its TLS and proxy
	// handshake. Default 10s.
	DialTimeout time.Duration
	// UpstreamTLS verifies HTTPS upstream proxies (and https targets of
	// absolute-form requests); nil uses the system roots.
	UpstreamTLS *tls.Config
	// MaxTransports caps the cached per-upstream HTTP transports (least
	// recently used ones are closed). Default 256.
	MaxTransports int
	// MaxIdleConnsPerUpstream caps idle keep-alive connections per upstream
	// and target. Default 64.
	MaxIdleConnsPerUpstream int
	// IdleTimeout closes a tunnel (CONNECT or SOCKS5) through which no
	// byte went either way for this long, and releases its lease. Zero
	// means DefaultIdleTimeout (5m); negative never closes idle tunnels.
	IdleTimeout time.Duration
	// MaxConns caps the requests and tunnels served at once; past it the
	// gateway answers 503 (a SOCKS5 client gets "connection not allowed").
	// Zero means DefaultMaxConns (4096); negative sets no cap.
	MaxConns int
	// ResponseHeaderTimeout bounds how long a plain request waits for the
	// upstream's response header after it was sent (502 past it). Zero
	// means DefaultResponseHeaderTimeout (60s); negative waits as long as
	// the client does.
	ResponseHeaderTimeout time.Duration
	// SuccessReportInterval spaces out success reports: a success is
	// reported when the proxy looked unhealthy at acquisition, when a
	// failure was reported through this gateway since, or when the last
	// success report for the proxy is this old; otherwise it is skipped, so
	// steady traffic does not cost a store write (or a service call) per
	// request. Zero means 10s; negative reports every success.
	SuccessReportInterval time.Duration
	// Registerer receives the gateway's metrics; nil disables them.
	Registerer prometheus.Registerer
	// Logger receives access logs (Info) and errors; nil is slog.Default().
	// Credentials and the Proxy-Authorization header are never logged.
	Logger *slog.Logger
	// DisableAccessLog turns the per-request log lines off.
	DisableAccessLog bool
}

// Gateway is a rotating forward proxy: HTTP (absolute-form requests and
// CONNECT) and SOCKS5 in, a leased upstream proxy per request or tunnel
// out. It is an http.Handler; Serve and ServeSOCKS run it on listeners.
type Gateway struct {
	cfg        Config
	leaser     Leaser
	banned     map[int]bool // ban statuses of a request without a site
	siteBanned map[int]bool // ban statuses of a request with one
	markers    [][]byte
	dialer     net.Dialer
	transports *transportCache
	rp         *httputil.ReverseProxy
	metrics    *metrics
	log        *slog.Logger
	bufs       sync.Pool
	socksAuth  socksAuthMethods

	// base ends when the gateway is closed; SOCKS tunnels, which have no
	// request context, open under it.
	base       context.Context
	cancelBase context.CancelFunc

	// lastSuccess maps proxy id to the time of its last success report.
	lastSuccess sync.Map
	// poolNames maps the ids of pools found by id to a cachedPoolName.
	poolNames sync.Map

	// noPredicate is set once the leaser turned down a filter predicate.
	noPredicate atomic.Bool
	// noTargets is set once the leaser turned down a target.
	noTargets atomic.Bool
	// active counts the requests and tunnels being served (Config.MaxConns).
	active atomic.Int64

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	servers   map[*http.Server]struct{}
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup // hijacked tunnels and SOCKS connections
	serveWG   sync.WaitGroup // accept loops
}

// New returns a Gateway for cfg.
func New(cfg Config) (*Gateway, error) {
	if cfg.Leaser == nil {
		return nil, fmt.Errorf("%w: gateway: Leaser is required", pharox.ErrInvalidArgument)
	}
	if cfg.Consumer == "" {
		cfg.Consumer = DefaultConsumer
	}
	if cfg.Strategy == "" {
		cfg.Strategy = pharox.RoundRobin
	}
	if !cfg.Strategy.Valid() {
		return nil, fmt.Errorf("%w: gateway: unknown strategy %q", pharox.ErrInvalidArgument, cfg.Strategy)
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = DefaultLeaseDuration
	}
	if cfg.LeaseDuration < 2*time.Second || cfg.LeaseDuration > pharox.MaxLeaseDuration {
		return nil, fmt.Errorf("%w: gateway: lease duration %v out of range [2s, %v]", pharox.ErrInvalidArgument, cfg.LeaseDuration, pharox.MaxLeaseDuration)
	}
	if cfg.AcquireWait < 0 {
		return nil, fmt.Errorf("%w: gateway: negative acquire wait", pharox.ErrInvalidArgument)
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.DialTimeout < 0 {
		return nil, fmt.Errorf("%w: gateway: negative dial timeout", pharox.ErrInvalidArgument)
	}
	if cfg.SuccessReportInterval == 0 {
		cfg.SuccessReportInterval = 10 * time.Second
	}
	if cfg.MaxTransports <= 0 {
		cfg.MaxTransports = DefaultMaxTransports
	}
	if cfg.MaxIdleConnsPerUpstream <= 0 {
		cfg.MaxIdleConnsPerUpstream = DefaultMaxIdlePerTarget
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.ResponseHeaderTimeout == 0 {
		cfg.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	}
	if cfg.Keys != nil && cfg.Password != "" {
		return nil, fmt.Errorf("%w: gateway: with Keys the proxy password is an API key: leave Password empty", pharox.ErrInvalidArgument)
	}
	if cfg.User != "" && cfg.Password == "" && cfg.Keys == nil {
		return nil, fmt.Errorf("%w: gateway: a user without a password would accept any password: set Password too", pharox.ErrInvalidArgument)
	}
	if cfg.User != "" && strings.Contains(cfg.User, "-") {
		return nil, fmt.Errorf("%w: gateway: user %q must not contain '-' (it separates routing parameters)", pharox.ErrInvalidArgument, cfg.User)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	g := &Gateway{
		cfg:        cfg,
		leaser:     cfg.Leaser,
		banned:     map[int]bool{},
		siteBanned: map[int]bool{},
		dialer:     net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second},
		log:        cfg.Logger,
		listeners:  map[net.Listener]struct{}{},
		servers:    map[*http.Server]struct{}{},
		conns:      map[net.Conn]struct{}{},
	}
	var err error
	bans, siteBans := cfg.BanStatuses, cfg.BanStatuses
	if bans == nil {
		bans, siteBans = []int{http.StatusTooManyRequests}, pharox.DefaultTargetBanStatusCodes()
	}
	for _, c := range bans {
		if c < 100 || c > 599 {
			return nil, fmt.Errorf("%w: gateway: ban status %d is not an HTTP status", pharox.ErrInvalidArgument, c)
		}
		g.banned[c] = true
	}
	for _, c := range siteBans {
		g.siteBanned[c] = true
	}
	if g.markers, err = normalizeMarkers(cfg.BanMarkers); err != nil {
		return nil, err
	}
	g.bufs.New = func() any { b := make([]byte, copyBufferSize); return &b }
	g.transports = newTransportCache(cfg.MaxTransports, g.newTransport)
	if g.metrics, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	g.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// A forward proxy sends the request where the client asked.
			pr.Out.Host = pr.In.Host
		},
		Transport:    roundTripFunc(g.forward),
		BufferPool:   bufferPool{g},
		ErrorHandler: g.forwardError,
		ErrorLog:     log.New(io.Discard, "", 0),
	}
	g.socksAuth = g.newSOCKSAuth()
	g.base, g.cancelBase = context.WithCancel(context.Background())
	return g, nil
}

// Serve accepts HTTP proxy connections on ln until Shutdown or Close; it
// then returns nil.
func (g *Gateway) Serve(ln net.Listener) error {
	srv := &http.Server{
		Handler:           g,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		ln.Close()
		return nil
	}
	g.servers[srv] = struct{}{}
	g.serveWG.Add(1)
	g.mu.Unlock()
	defer g.serveWG.Done()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, lets open requests and tunnels finish until
// ctx ends, then closes whatever is still open.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	g.closed = true
	servers := make([]*http.Server, 0, len(g.servers))
	for s := range g.servers {
		servers = append(servers, s)
	}
	for ln := range g.listeners {
		ln.Close()
	}
	g.mu.Unlock()

	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Go(func() {
			if err := s.Shutdown(ctx); err != nil {
				s.Close()
			}
		})
	}
	wg.Wait()
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		g.cancelBase()
		g.mu.Lock()
		for c := range g.conns {
			c.Close()
		}
		g.mu.Unlock()
		<-done
	}
	g.serveWG.Wait()
	g.cancelBase()
	g.transports.closeAll()
	return err
}

// Close stops the gateway at once, closing open requests and tunnels.
func (g *Gateway) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// track registers a connection the http.Server no longer manages (hijacked
// or SOCKS), so shutdown can close it; it reports false once closed.
func (g *Gateway) track(c net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.conns[c] = struct{}{}
	g.wg.Add(1)
	return true
}

func (g *Gateway) untrack(c net.Conn) {
	g.mu.Lock()
	delete(g.conns, c)
	g.mu.Unlock()
	g.wg.Done()
}

// reqState follows one request or tunnel for the access log and metrics.
type reqState struct {
	kind   string // http, connect or socks5
	start  time.Time
	client string
	method string
	host   string
	path   string
	route  Route
	pool   string
	target string // the site, "" without per-site health
	// user and secret are the API key of the request (Config.Keys).
	user     *KeyUser
	secret   string
	proxyID  uuid.UUID
	upstream string
	attempts int
	status   int
	reason   string
	entered  bool         // holds a Config.MaxConns place (SOCKS5)
	sent     atomic.Int64 // payload from the client
	received atomic.Int64 // payload to the client
}

type stateKey struct{}

func stateFrom(ctx context.Context) *reqState {
	st, _ := ctx.Value(stateKey{}).(*reqState)
	return st
}

// statusClientGone marks a request given up because its client went away
// (nginx's 499): nothing is answered and the connection is closed.
const statusClientGone = 499

// abort ends a request whose client went away by closing its connection
// (http.ErrAbortHandler): returning without an answer would have net/http
// send 200 OK, which a client still listening takes for a tunnel or an
// empty page.
func abort(st *reqState, reason string) {
	if st != nil {
		st.status, st.reason = statusClientGone, reason
	}
	panic(http.ErrAbortHandler)
}

// gwError is an answer the gateway makes itself.
type gwError struct {
	status int
	reason string
	// retryAfter, when positive, is sent as Retry-After (whole seconds,
	// rounded up); a 503 without one says 1.
	retryAfter time.Duration
}

func (e *gwError) Error() string { return e.reason }

// ServeHTTP serves one proxy request: absolute-form requests are forwarded,
// CONNECT opens a tunnel. Anything else is answered 400.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := &reqState{kind: "http", start: time.Now(), client: r.RemoteAddr, method: r.Method, host: r.Host}
	if r.Method == http.MethodConnect {
		st.kind = "connect"
	} else {
		st.host, st.path = r.URL.Host, r.URL.Path
	}
	rw := &responseRecorder{ResponseWriter: w, st: st}
	defer g.finish(st)
	if !g.enter() {
		g.writeError(rw, g.fullError())
		return
	}
	defer g.leave()
	route, err := g.authenticate(r.Context(), st, r.Header.Get("Proxy-Authorization"))
	if err != nil {
		g.writeError(rw, err)
		return
	}
	st.route = route
	if st.secret != "" {
		// A remote lease source acts with the user's key.
		r = r.WithContext(client.ContextWithAPIKey(r.Context(), st.secret))
	}
	if st.pool, err = g.routePool(r.Context(), route); err != nil {
		g.writeError(rw, err)
		return
	}
	if st.user != nil {
		if err := st.user.mayUse(st.pool); err != nil {
			g.writeError(rw, err)
			return
		}
	}
	if r.Method == http.MethodConnect {
		g.serveConnect(rw, r, st)
		return
	}
	if !r.URL.IsAbs() || r.URL.Host == "" || (r.URL.Scheme != "http" && r.URL.Scheme != "https") {
		g.writeError(rw, &gwError{status: http.StatusBadRequest, reason: "this is a forward proxy: send absolute-form http(s) requests or CONNECT"})
		return
	}
	st.target = g.targetOf(r.URL.Host)
	g.rp.ServeHTTP(rw, r.WithContext(context.WithValue(r.Context(), stateKey{}, st)))
}

// enter takes one of the Config.MaxConns places, or reports false when
// none is free.
func (g *Gateway) enter() bool {
	if n := g.active.Add(1); g.cfg.MaxConns > 0 && n > int64(g.cfg.MaxConns) {
		g.active.Add(-1)
		return false
	}
	return true
}

func (g *Gateway) leave() { g.active.Add(-1) }

func (g *Gateway) fullError() *gwError {
	return &gwError{status: http.StatusServiceUnavailable, reason: fmt.Sprintf("gateway busy: it serves at most %d requests and tunnels at once (--max-conns)", g.cfg.MaxConns)}
}

// authenticate checks the Proxy-Authorization header and parses the route
// from its user name; with Config.Keys it notes the key's user in st.
func (g *Gateway) authenticate(ctx context.Context, st *reqState, header string) (Route, error) {
	required := g.cfg.User != "" || g.cfg.Password != "" || g.cfg.Keys != nil
	if header == "" {
		if g.cfg.Keys != nil {
			return Route{}, &gwError{status: http.StatusProxyAuthRequired, reason: "proxy authentication required: the password is your API key"}
		}
		if required {
			return Route{}, &gwError{status: http.StatusProxyAuthRequired, reason: "proxy authentication required"}
		}
		return Route{}, nil
	}
	scheme, cred, _ := strings.Cut(header, " ")
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if !strings.EqualFold(scheme, "Basic") || err != nil {
		return Route{}, &gwError{status: http.StatusProxyAuthRequired, reason: "proxy authentication must be Basic"}
	}
	user, pass, _ := strings.Cut(string(raw), ":")
	return g.checkCredentials(ctx, st, user, pass)
}

// checkCredentials checks a user name and password and parses the route;
// with Config.Keys the password is an API key, whose user goes into st.
func (g *Gateway) checkCredentials(ctx context.Context, st *reqState, user, pass string) (Route, error) {
	if g.cfg.Keys != nil {
		if pass == "" {
			return Route{}, &gwError{status: http.StatusProxyAuthRequired, reason: "proxy authentication required: the password is your API key"}
		}
		u, err := g.cfg.Keys.CheckKey(ctx, pass)
		if err != nil {
			return Route{}, keyError(err)
		}
		st.user, st.secret = u, pass
	}
	if g.cfg.Password != "" && subtle.ConstantTimeCompare([]byte(pass), []byte(g.cfg.Password)) != 1 {
		return Route{}, &gwError{status: http.StatusProxyAuthRequired, reason: "bad proxy credentials"}
	}
	r, err := ParseRoute(user, g.cfg.User)
	if err != nil {
		if g.cfg.User != "" && user != g.cfg.User && !strings.HasPrefix(user, g.cfg.User+"-") {
			// Do not echo a wrong user name's expected value.
			return Route{}, &gwError{status: http.StatusProxyAuthRequired, reason: "bad proxy credentials"}
		}
		return Route{}, &gwError{status: http.StatusProxyAuthRequired, reason: err.Error()}
	}
	return r, nil
}

// writeError answers with the gateway's own status and reason.
func (g *Gateway) writeError(w http.ResponseWriter, err error) {
	var ge *gwError
	if !errors.As(err, &ge) {
		ge = &gwError{status: http.StatusBadGateway, reason: err.Error()}
	}
	h := w.Header()
	h.Set(ReasonHeader, headerSafe(ge.reason))
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	if ge.status == http.StatusProxyAuthRequired {
		h.Set("Proxy-Authenticate", `Basic realm="pharox"`)
	}
	switch {
	case ge.retryAfter > 0:
		h.Set("Retry-After", strconv.FormatInt(retryAfterSeconds(ge.retryAfter), 10))
	case ge.status == http.StatusServiceUnavailable:
		h.Set("Retry-After", "1")
	}
	w.WriteHeader(ge.status)
	_, _ = io.WriteString(w, "pharox gateway: "+ge.reason+"\n")
}

// retryAfterSeconds is d in whole seconds, rounded up, at least 1.
func retryAfterSeconds(d time.Duration) int64 {
	return max(int64((d+time.Second-1)/time.Second), 1)
}

// headerSafe keeps a reason within one header line.
func headerSafe(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}

// poolIDCacheTTL is how long a pool id's name is remembered: pools are
// not renamed, but one deleted and created again gets a new id.
const poolIDCacheTTL = 30 * time.Second

type cachedPoolName struct {
	name    string
	expires time.Time
}

// routePool returns the name of the pool a route asks for: its pool, the
// pool with its poolid, or the default pool.
func (g *Gateway) routePool(ctx context.Context, route Route) (string, error) {
	if route.Pool != "" {
		return route.Pool, nil
	}
	if route.PoolID == uuid.Nil {
		if g.cfg.DefaultPool == "" {
			return "", &gwError{status: http.StatusProxyAuthRequired, reason: "no pool given in the user name and no default pool configured"}
		}
		return g.cfg.DefaultPool, nil
	}
	if c, ok := g.poolNames.Load(route.PoolID); ok && time.Now().Before(c.(cachedPoolName).expires) {
		return c.(cachedPoolName).name, nil
	}
	lookup, ok := g.leaser.(PoolLookup)
	if !ok {
		return "", &gwError{status: http.StatusProxyAuthRequired, reason: "this gateway's lease source cannot find pools by id: name the pool with pool-NAME"}
	}
	p, err := lookup.PoolByID(ctx, route.PoolID)
	switch {
	case errors.Is(err, pharox.ErrPoolNotFound):
		return "", &gwError{status: http.StatusServiceUnavailable, reason: fmt.Sprintf("no pool has id %s", route.PoolID)}
	case err != nil:
		return "", acquireError(route.PoolID.String(), err)
	}
	g.poolNames.Store(route.PoolID, cachedPoolName{name: p.Name, expires: time.Now().Add(poolIDCacheTTL)})
	return p.Name, nil
}

// acquireError turns a failed acquisition into an answer.
func acquireError(pool string, err error) *gwError {
	switch {
	case errors.Is(err, pharox.ErrQuotaExceeded):
		return quotaRefusal(err)
	case errors.Is(err, pharox.ErrNoProxyAvailable):
		return &gwError{status: http.StatusServiceUnavailable, reason: fmt.Sprintf("no upstream available in pool %q", pool)}
	case errors.Is(err, pharox.ErrPoolNotFound):
		return &gwError{status: http.StatusServiceUnavailable, reason: fmt.Sprintf("pool %q not found", pool)}
	case errors.Is(err, pharox.ErrInvalidArgument):
		return &gwError{status: http.StatusBadRequest, reason: "bad routing parameters: " + err.Error()}
	case errors.Is(err, client.ErrForbidden):
		// The server refused the user's key this pool or consumer.
		detail := "the API key may not lease from pool " + fmt.Sprintf("%q", pool)
		var ae *client.APIError
		if errors.As(err, &ae) && ae.Detail != "" {
			detail = ae.Detail
		}
		return &gwError{status: http.StatusForbidden, reason: detail}
	case errors.Is(err, client.ErrUnauthorized):
		return &gwError{status: http.StatusProxyAuthRequired, reason: "bad proxy credentials: the lease source refused the API key"}
	case errors.Is(err, context.Canceled):
		return &gwError{status: statusClientGone, reason: "client went away"}
	case outage.Is(err):
		// The store (or the service in front of it) is down for now:
		// retryable, unlike a failure of the gateway's own.
		return &gwError{status: http.StatusServiceUnavailable, reason: "lease source unavailable: " + outage.Reason(err) + "; retry later"}
	}
	return &gwError{status: http.StatusBadGateway, reason: "lease source failed: " + err.Error()}
}

// acquire leases an upstream for st, avoiding the proxies in exclude (those
// that already failed this request).
func (g *Gateway) acquire(ctx context.Context, st *reqState, exclude []uuid.UUID) (*pharox.Lease, error) {
	consumer := g.cfg.Consumer
	if st.user != nil {
		consumer = st.user.consumer(consumer)
	}
	opts := &pharox.AcquireOptions{
		Consumer:   consumer,
		Duration:   g.cfg.LeaseDuration,
		Filters:    st.route.filters(),
		Strategy:   g.cfg.Strategy,
		SessionKey: st.route.Session,
		SessionTTL: st.route.SessionTTL,
		Target:     st.target,
	}
	if len(exclude) == 0 {
		return g.leaseFor(ctx, st.pool, opts, g.cfg.AcquireWait)
	}
	if !g.noPredicate.Load() {
		var f pharox.Filters
		if opts.Filters != nil {
			f = *opts.Filters
		}
		f.Predicate = func(p *pharox.Proxy) bool { return !slices.Contains(exclude, p.ID) }
		o := *opts
		o.Filters = &f
		// With the failed proxy no candidate, a sticky session rebinds.
		l, err := g.leaseFor(ctx, st.pool, &o, 0)
		if !errors.Is(err, pharox.ErrUnsupported) {
			return l, err
		}
		g.noPredicate.Store(true)
	}
	// The store cannot run a predicate: take leases until one lands on
	// another proxy, holding those on excluded proxies so that the store
	// moves on, then give them back. A session binding would keep
	// answering with its proxy, so choose without it.
	var held []*pharox.Lease
	defer func() {
		for _, l := range held {
			g.release(ctx, l, nil) // they carried nothing
		}
	}()
	o := *opts
	o.SessionKey, o.SessionTTL = "", 0
	if o.Strategy == pharox.FirstAvailable {
		o.Strategy = pharox.RoundRobin
	}
	for range 3 {
		l, err := g.leaseFor(ctx, st.pool, &o, 0)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(exclude, l.ProxyID) {
			return l, nil
		}
		held = append(held, l)
	}
	return nil, fmt.Errorf("gateway: no other upstream in pool %q: %w", st.pool, pharox.ErrNoProxyAvailable)
}

// release gives a lease back with a context that survives the client,
// reporting what m counted (nothing when m is nil) unless metering is off.
func (g *Gateway) release(ctx context.Context, l *pharox.Lease, m *meter) {
	var usage *pharox.Usage
	if !g.cfg.DisableMetering {
		usage = m.usage()
		g.metrics.usage(l.PoolName, usage)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := g.leaser.Release(rctx, l.ID, usage); err != nil {
		g.log.Error("gateway: release lease failed", "lease", l.ID, "pool", l.PoolName, "err", err)
	}
}

// report feeds an outcome back, with a context that survives the client.
func (g *Gateway) report(ctx context.Context, l *pharox.Lease, o pharox.Outcome) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	err := g.leaser.ReportOutcome(rctx, l, o)
	if o.Target != "" && errors.Is(err, pharox.ErrUnsupported) {
		// The lease source keeps no per-site health: count it everywhere.
		g.dropTargets(err)
		o.Target = ""
		err = g.leaser.ReportOutcome(rctx, l, o)
	}
	if err == nil && o.Target != "" {
		g.metrics.targetOutcome(o.Kind)
	}
	if err != nil && !errors.Is(err, pharox.ErrProxyNotFound) {
		g.log.Warn("gateway: report outcome failed", "lease", l.ID, "proxy", l.ProxyID, "err", err)
	}
}

// failed records and reports a failed attempt.
func (g *Gateway) failed(ctx context.Context, st *reqState, l *pharox.Lease, e *attemptError) {
	st.reason = e.reason
	g.metrics.upstreamFailure(e.metricReason())
	if o, ok := e.outcome(); ok {
		// The next success must be reported, to end the failure streak.
		g.lastSuccess.Delete(l.ProxyID)
		g.report(ctx, l, g.withTarget(st, o))
	}
}

// reportSuccess reports a success unless one was reported for the proxy
// recently and nothing since suggests its health changed (see
// Config.SuccessReportInterval), or it is an error answer of a site.
func (g *Gateway) reportSuccess(ctx context.Context, l *pharox.Lease, o pharox.Outcome) {
	// An error answer for a site always goes: the lease source's per-site
	// policy may count it as a ban for the site (pharox.TargetPolicy's
	// BanStatusCodes).
	if every := g.cfg.SuccessReportInterval; every > 0 && (o.Target == "" || o.StatusCode < 400) {
		healthy := l.Proxy != nil && l.Proxy.Status == pharox.StatusActive && l.Proxy.FailureStreak == 0
		now := time.Now()
		if last, ok := g.lastSuccess.Load(l.ProxyID); ok && healthy && now.Sub(last.(time.Time)) < every {
			return
		}
		g.lastSuccess.Store(l.ProxyID, now)
	}
	g.report(ctx, l, o)
}

// useLease notes the upstream an attempt goes through.
func (st *reqState) useLease(l *pharox.Lease) {
	st.attempts++
	st.proxyID = l.ProxyID
	if l.Proxy != nil {
		st.upstream = l.Proxy.Address()
	}
}

// finish writes the access log line and the metrics of one request.
func (g *Gateway) finish(st *reqState) {
	d := time.Since(st.start)
	g.metrics.done(st, d)
	if g.cfg.DisableAccessLog {
		return
	}
	attrs := make([]slog.Attr, 0, 16)
	attrs = append(attrs,
		slog.String("kind", st.kind),
		slog.String("client", st.client),
		slog.String("method", st.method),
		slog.String("host", st.host),
	)
	if st.path != "" {
		attrs = append(attrs, slog.String("path", st.path))
	}
	if st.user != nil {
		attrs = append(attrs, slog.String("key", st.user.Name))
	}
	attrs = append(attrs, slog.String("pool", st.pool))
	if st.target != "" {
		attrs = append(attrs, slog.String("site", st.target))
	}
	if st.route.Session != "" {
		attrs = append(attrs, slog.String("session", st.route.Session))
	}
	if st.proxyID != uuid.Nil {
		attrs = append(attrs, slog.String("proxy_id", st.proxyID.String()), slog.String("upstream", st.upstream))
	}
	attrs = append(attrs,
		slog.Int("status", st.status),
		slog.Int("attempts", st.attempts),
		slog.Int64("bytes_in", st.sent.Load()),
		slog.Int64("bytes_out", st.received.Load()),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
	)
	if st.reason != "" {
		attrs = append(attrs, slog.String("reason", st.reason))
	}
	// The record goes to the handler directly: Logger.LogAttrs would also
	// walk the stack for the caller's PC on every request, which only a
	// handler with AddSource reads, and it would name this line anyway.
	ctx := context.Background()
	if h := g.log.Handler(); h.Enabled(ctx, slog.LevelInfo) {
		rec := slog.NewRecord(time.Now(), slog.LevelInfo, "gateway request", 0)
		rec.AddAttrs(attrs...)
		_ = h.Handle(ctx, rec)
	}
}

// responseRecorder notes the status and bytes written to the client. It
// unwraps for http.ResponseController, so flushing and hijacking work.
type responseRecorder struct {
	http.ResponseWriter
	st          *reqState
	wroteHeader bool
}

func (r *responseRecorder) WriteHeader(code int) {
	if !r.wroteHeader && code >= 200 {
		r.wroteHeader = true
		r.st.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *responseRecorder) Write(p []byte) (int, error) {
	if !r.wroteHeader {
		r.wroteHeader = true
		r.st.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.st.received.Add(int64(n))
	return n, err
}

func (r *responseRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// bufferPool lends ReverseProxy the gateway's copy buffers.
type bufferPool struct{ g *Gateway }

func (p bufferPool) Get() []byte  { return *p.g.bufs.Get().(*[]byte) }
func (p bufferPool) Put(b []byte) { p.g.bufs.Put(&b) }
