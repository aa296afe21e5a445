package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/socks4"
)

// Transport is an http.RoundTripper that sends each request through a
// proxy leased for it from a pool, and gives the lease back when the
// response body has been read to its end or closed (or the request
// failed). Use it as an http.Client's Transport; it is safe for
// concurrent use and meant to be shared.
//
// Each attempt's response is classified (see Classifier); a failure or a
// ban is reported to the pool at once, successes when the body ends (see
// WithSuccessReportInterval). After a ban or a failure a request is sent
// again through another proxy, up to WithMaxRetries times, when that is
// safe: its body can be sent again (none, or Request.GetBody set) and
// either nothing of it reached the target (the proxy could not be
// reached, or refused its credentials) or it is idempotent (GET, HEAD,
// OPTIONS, TRACE, or an Idempotency-Key header, as net/http judges it). A
// retry takes another proxy only if one is free at once; otherwise, and
// when no retry is left, the last attempt's response or error is
// returned. A non-idempotent request that may have reached the target is
// never sent again.
//
// A request waits for a free proxy up to WithMaxWait, and never past its
// context's deadline; a request that got none fails with an error
// wrapping pharox.ErrNoProxyAvailable.
//
// While the body is being read the lease is renewed, so a long download
// keeps its proxy; a body nobody reads for about a lease duration lets its
// lease expire.
type Transport struct {
	leaser       Leaser
	pool         string
	defaults     pharox.AcquireOptions
	maxWait      time.Duration
	maxRetries   int
	classify     Classifier
	base         *http.Transport
	maxProxies   int
	successEvery time.Duration
	observer     Observer
	log          *slog.Logger
	noTargetOpt  bool // WithoutTargetHealth
	noMetering   bool // WithoutMetering

	proxies     *proxyCache
	lastSuccess sync.Map // proxy id -> unix nanoseconds of the last success reported
	noPredicate atomic.Bool
	noTargets   atomic.Bool // the lease source keeps no per-site health
}

var _ http.RoundTripper = (*Transport)(nil)

// New returns a Transport that leases from pool through leaser (Local for
// a Manager in this process, Remote for a pharox service).
func New(leaser Leaser, pool string, opts ...Option) (*Transport, error) {
	if leaser == nil {
		return nil, fmt.Errorf("transport: %w: leaser is nil", pharox.ErrInvalidArgument)
	}
	if err := pharox.ValidateName("pool name", pool); err != nil {
		return nil, fmt.Errorf("transport: %w", err)
	}
	t := &Transport{
		leaser:       leaser,
		pool:         pool,
		defaults:     pharox.AcquireOptions{Strategy: pharox.RoundRobin},
		maxWait:      DefaultMaxWait,
		maxRetries:   DefaultMaxRetries,
		classify:     DefaultClassifier,
		maxProxies:   DefaultMaxProxyTransports,
		successEvery: DefaultSuccessReportInterval,
		observer:     nopObserver{},
		log:          slog.Default(),
	}
	for _, o := range opts {
		if err := o(t); err != nil {
			return nil, fmt.Errorf("transport: %w", err)
		}
	}
	if t.base == nil {
		t.base = defaultBase()
	}
	var wrap func(context.Context, net.Conn) net.Conn
	if !t.noMetering {
		wrap = meterConn
	}
	t.proxies = newProxyCache(t.base, t.maxProxies, wrap)
	return t, nil
}

// defaultBase is http.DefaultTransport's settings, with room for more idle
// connections per proxy.
func defaultBase() *http.Transport {
	var b *http.Transport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		b = dt.Clone()
	} else {
		b = &http.Transport{ForceAttemptHTTP2: true, IdleConnTimeout: 90 * time.Second,
			TLSHandshakeTimeout: 10 * time.Second, ExpectContinueTimeout: time.Second}
	}
	b.Proxy = nil
	b.MaxIdleConnsPerHost = DefaultMaxIdleConnsPerProxy
	return b
}

// CloseIdleConnections closes the idle connections of every proxy's
// transport. http.Client.CloseIdleConnections calls it.
func (t *Transport) CloseIdleConnections() { t.proxies.closeIdle() }

// RoundTrip sends req through a leased proxy. See Transport.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	pool, opts := t.resolve(ctx)
	opts, err := t.withRequestTarget(req, opts)
	if err != nil {
		closeBody(req)
		t.observer.ObserveRequest(pool, 0, err)
		return nil, err
	}
	resp, attempts, err := t.roundTrip(ctx, req, pool, opts)
	t.observer.ObserveRequest(pool, attempts, err)
	return resp, err
}

func (t *Transport) roundTrip(ctx context.Context, req *http.Request, pool string, opts *pharox.AcquireOptions) (*http.Response, int, error) {
	if req.URL == nil {
		closeBody(req)
		return nil, 0, fmt.Errorf("transport: %w: request has no URL", pharox.ErrInvalidArgument)
	}
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	idempotent := isIdempotent(req)
	var exclude []uuid.UUID
	var prev *attempt
	for n := 1; ; n++ {
		lease, err := t.acquire(ctx, pool, opts, exclude)
		if prev != nil {
			// The failed lease was held until now, so that the pool could
			// not hand its proxy back.
			if err != nil {
				// No other proxy free: answer with what the last one said.
				resp, err := t.giveUp(ctx, prev, pool, opts)
				return resp, n - 1, err
			}
			t.discard(context.WithoutCancel(ctx), prev)
		}
		if err != nil {
			closeBody(req)
			return nil, n - 1, fmt.Errorf("transport: %w", err)
		}
		out := req
		if n > 1 {
			out = new(http.Request)
			*out = *req
			if req.GetBody != nil {
				body, err := req.GetBody()
				if err != nil {
					t.release(context.WithoutCancel(ctx), lease, nil)
					return nil, n - 1, fmt.Errorf("transport: replay the request body for a retry: %w", err)
				}
				out.Body = body
			}
		}
		a := t.try(ctx, out, lease, pool, opts.Target)
		if !a.retry || n > t.maxRetries || !replayable || !(a.unsent || idempotent) || ctx.Err() != nil {
			resp, err := t.giveUp(ctx, a, pool, opts)
			return resp, n, err
		}
		exclude = append(exclude, lease.ProxyID)
		prev = a
	}
}

// isIdempotent reports whether req may be sent twice, as net/http judges
// it for its own retries.
func isIdempotent(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	if _, ok := req.Header["Idempotency-Key"]; ok {
		return true
	}
	_, ok := req.Header["X-Idempotency-Key"]
	return ok
}

// waitFor is how long an acquisition for ctx may wait: up to MaxWait,
// ending a little before ctx's deadline, so the caller sees a miss rather
// than its own timeout (http.Client replaces the error of a request that
// ran out of Client.Timeout).
func (t *Transport) waitFor(ctx context.Context) time.Duration {
	w := t.maxWait
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		left -= min(left/10, 100*time.Millisecond)
		w = min(w, left)
	}
	return max(w, 0)
}

// acquire leases a proxy for a request, avoiding the proxies in exclude
// (those that already failed it).
func (t *Transport) acquire(ctx context.Context, pool string, opts *pharox.AcquireOptions, exclude []uuid.UUID) (*pharox.Lease, error) {
	started := time.Now()
	l, err := t.lease(ctx, pool, opts, exclude)
	t.observer.ObserveLeaseWait(pool, time.Since(started), err)
	return l, err
}

func (t *Transport) lease(ctx context.Context, pool string, opts *pharox.AcquireOptions, exclude []uuid.UUID) (*pharox.Lease, error) {
	if len(exclude) == 0 {
		return t.leaseFor(ctx, pool, opts, t.waitFor(ctx))
	}
	// A retry takes a proxy that is free now; it does not wait for one.
	if !t.noPredicate.Load() {
		var f pharox.Filters
		if opts.Filters != nil {
			f = *opts.Filters
		}
		own := f.Predicate
		f.Predicate = func(p *pharox.Proxy) bool {
			return !slices.Contains(exclude, p.ID) && (own == nil || own(p))
		}
		o := *opts
		o.Filters = &f
		// With the failed proxy no candidate, a sticky session fails over
		// and re-binds to the proxy it gets.
		l, err := t.leaseFor(ctx, pool, &o, 0)
		if !errors.Is(err, pharox.ErrUnsupported) {
			return l, err
		}
		t.noPredicate.Store(true)
	}
	if opts.Filters.HasPredicate() {
		return nil, fmt.Errorf("%w: a filter predicate runs only with an in-process store", pharox.ErrUnsupported)
	}
	// The lease source cannot run a predicate: take leases until one lands
	// on another proxy, holding those on excluded proxies so the source
	// moves on, then give them back. A session binding would keep
	// answering with its proxy, so choose without it.
	o := *opts
	o.SessionKey, o.SessionTTL = "", 0
	if o.Strategy.OrDefault() == pharox.FirstAvailable {
		o.Strategy = pharox.RoundRobin
	}
	var held []*pharox.Lease
	defer func() {
		for _, l := range held {
			t.release(context.WithoutCancel(ctx), l, nil) // they carried nothing
		}
	}()
	for range 3 {
		l, err := t.leaseFor(ctx, pool, &o, 0)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(exclude, l.ProxyID) {
			return l, nil
		}
		held = append(held, l)
	}
	return nil, fmt.Errorf("no other proxy free in pool %q: %w", pool, pharox.ErrNoProxyAvailable)
}

// attempt is one try of a request through one leased proxy.
type attempt struct {
	lease   *pharox.Lease
	m       *meter // nil without metering
	pt      *proxyTransport
	resp    *http.Response
	err     error
	outcome pharox.Outcome
	// retry: the attempt failed in a way another proxy may not.
	retry bool
	// unsent: nothing of the request reached the target.
	unsent bool
}

// try sends out once through the lease's proxy, classifies what came back
// and reports a failure or a ban; target is the site it was leased for.
func (t *Transport) try(ctx context.Context, out *http.Request, lease *pharox.Lease, pool, target string) *attempt {
	a := &attempt{lease: lease}
	pt, err := t.proxies.get(lease.Proxy)
	if err != nil {
		closeBody(out)
		a.err = err
		return a
	}
	a.pt = pt
	out, a.m = t.metered(out)
	started := time.Now()
	resp, err := pt.tr.RoundTrip(out)
	latency := time.Since(started)
	if err != nil {
		a.err = err
		t.classifyError(ctx, a)
	} else {
		a.resp = resp
		a.outcome = t.classifyResponse(ctx, resp, lease, a.m)
		if a.outcome.Kind != "" && a.outcome.StatusCode == 0 {
			a.outcome.StatusCode = resp.StatusCode
		}
		t.addTarget(target, &a.outcome)
		a.retry = a.outcome.Kind == pharox.OutcomeFailure || a.outcome.Kind == pharox.OutcomeBanned
		// A 407 to a forwarded request comes from the proxy itself.
		a.unsent = resp.StatusCode == http.StatusProxyAuthRequired && out.URL.Scheme == "http" &&
			(lease.Proxy.Protocol == pharox.ProtocolHTTP || lease.Proxy.Protocol == pharox.ProtocolHTTPS)
	}
	if a.outcome.Kind != "" && a.outcome.Latency == 0 {
		a.outcome.Latency = latency
	}
	a.outcome.Reason = scrub(a.outcome.Reason, lease.Proxy)
	t.observer.ObserveOutcome(pool, a.outcome)
	if a.outcome.Kind == pharox.OutcomeFailure || a.outcome.Kind == pharox.OutcomeBanned {
		t.report(context.WithoutCancel(ctx), lease, a.outcome)
	}
	return a
}

// classifyResponse runs the classifier; if it panics, the response and
// the lease are given back before the panic goes on.
func (t *Transport) classifyResponse(ctx context.Context, resp *http.Response, lease *pharox.Lease, m *meter) pharox.Outcome {
	defer func() {
		if p := recover(); p != nil {
			resp.Body.Close()
			t.release(context.WithoutCancel(ctx), lease, m)
			panic(p)
		}
	}()
	return t.classify(resp)
}

// classifyError judges a round trip that failed without a response.
func (t *Transport) classifyError(ctx context.Context, a *attempt) {
	fail := func(code int, reason string) {
		a.outcome = pharox.Outcome{Kind: pharox.OutcomeFailure, StatusCode: code, Reason: reason}
		a.retry = true
	}
	err := a.err
	if ctx.Err() != nil {
		// The caller gave up: nobody's fault.
		return
	}
	// Nothing went out when connecting through the proxy failed: net/http
	// reports a failed dial or TLS handshake to an HTTP(S) proxy as a
	// "proxyconnect" error, a refused CONNECT comes back as the hook's
	// connectRefusedError, a failed SOCKS dial as a socksDialError.
	var op *net.OpError
	var refused *connectRefusedError
	var socks *socksDialError
	isRefused, isSOCKS := errors.As(err, &refused), errors.As(err, &socks)
	if !isRefused && !isSOCKS && !(errors.As(err, &op) && op.Op == "proxyconnect") {
		// The exchange broke after the request went out.
		fail(0, "exchange through the proxy failed: "+err.Error())
		return
	}
	a.unsent = true
	msg := err.Error()
	var unreachable *proxyUnreachableError
	reached := !errors.As(err, &unreachable)
	switch {
	case isRefused && refused.status == http.StatusProxyAuthRequired:
		fail(refused.status, "proxy answered CONNECT with 407: it refused its credentials")
	case isRefused && refused.status == http.StatusTooManyRequests:
		a.outcome = pharox.Outcome{Kind: pharox.OutcomeBanned, StatusCode: refused.status, Reason: "proxy answered CONNECT with 429"}
		a.retry = true
	case isRefused && (refused.status == http.StatusBadGateway || refused.status == http.StatusServiceUnavailable ||
		refused.status == http.StatusGatewayTimeout):
		// The proxy works but could not reach the target: not its fault,
		// and another proxy would most likely fail the same way.
	case isRefused:
		fail(refused.status, fmt.Sprintf("proxy answered CONNECT with %d", refused.status))
	case isSOCKS && reached && (errors.Is(err, socks4.ErrIdent) || strings.Contains(msg, "authentication failed")):
		fail(0, "SOCKS proxy refused its credentials")
	case isSOCKS && reached && (errors.Is(err, socks4.ErrRejected) ||
		strings.Contains(msg, "host unreachable") || strings.Contains(msg, "network unreachable") ||
		strings.Contains(msg, "unknown error connection refused") || strings.Contains(msg, "TTL expired")):
		// The SOCKS proxy answered that it could not reach the target.
	default:
		fail(0, "connecting through the proxy failed: "+msg)
	}
}

// giveUp ends a request with its last attempt: its response, whose body
// holds the lease, or its error, after releasing the lease.
func (t *Transport) giveUp(ctx context.Context, a *attempt, pool string, opts *pharox.AcquireOptions) (*http.Response, error) {
	if a.resp != nil {
		return t.deliver(ctx, a, pool, opts), nil
	}
	t.release(context.WithoutCancel(ctx), a.lease, a.m)
	if a.pt != nil && a.pt.retired.Load() {
		a.pt.tr.CloseIdleConnections()
	}
	if a.lease.Proxy == nil {
		return nil, a.err
	}
	return nil, fmt.Errorf("transport: through proxy %s: %w", a.lease.Proxy, a.err)
}

// discard ends an attempt that is retried. ctx is not cancelled with the
// request.
func (t *Transport) discard(ctx context.Context, a *attempt) {
	if a.resp != nil {
		// A little draining lets the connection be reused; more is not
		// worth it.
		_, _ = io.CopyN(io.Discard, a.resp.Body, 4<<10)
		a.resp.Body.Close()
	}
	t.release(ctx, a.lease, a.m)
	if a.pt != nil && a.pt.retired.Load() {
		a.pt.tr.CloseIdleConnections()
	}
}

// report feeds an outcome into the proxy's health and drops the proxy's
// transport when the proxy is gone or no longer leasable. ctx is not
// cancelled with the request.
func (t *Transport) report(ctx context.Context, lease *pharox.Lease, o pharox.Outcome) {
	if o.Kind != pharox.OutcomeSuccess {
		// The next success must be reported, to end the failure streak.
		t.lastSuccess.Delete(lease.ProxyID)
	}
	p, err := t.leaser.ReportOutcome(ctx, lease, o)
	if o.Target != "" && errors.Is(err, pharox.ErrUnsupported) {
		// The lease source keeps no per-site health: count it everywhere.
		t.dropTargets(err)
		o.Target = ""
		p, err = t.leaser.ReportOutcome(ctx, lease, o)
	}
	switch {
	case errors.Is(err, pharox.ErrProxyNotFound):
		t.proxies.retire(lease.ProxyID, nil)
	case err != nil:
		t.log.Warn("transport: report outcome failed", "lease", lease.ID, "proxy", lease.ProxyID, "err", err)
	case p != nil && !p.Status.Leasable():
		t.proxies.retire(lease.ProxyID, nil)
	}
}

// reportSuccess reports a success unless one was reported for the proxy
// within successEvery and the proxy was healthy when leased; an error
// answer of a site is always reported.
func (t *Transport) reportSuccess(ctx context.Context, lease *pharox.Lease, o pharox.Outcome) {
	// An error answer for a site always goes: the lease source's per-site
	// policy may count it as a ban for the site (pharox.TargetPolicy's
	// BanStatusCodes: a plain 403 by default).
	if every := t.successEvery; every > 0 && (o.Target == "" || o.StatusCode < 400) {
		p := lease.Proxy
		healthy := p != nil && p.Status == pharox.StatusActive && p.FailureStreak == 0
		now := time.Now().UnixNano()
		if last, ok := t.lastSuccess.Load(lease.ProxyID); ok && healthy && now-last.(int64) < int64(every) {
			return
		}
		t.lastSuccess.Store(lease.ProxyID, now)
	}
	t.report(ctx, lease, o)
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// withheldReason replaces a reason that contains a short password.
const withheldReason = "proxy error (details withheld: they could contain the proxy password)"

// scrub keeps a proxy's password out of a reason that is stored as the
// proxy's last error, whatever an error message embeds. A password too
// short to replace without mangling the text withholds the whole reason
// when it appears in it.
func scrub(reason string, p *pharox.Proxy) string {
	if reason == "" || p == nil || p.Credentials == nil || p.Credentials.Password == "" {
		return reason
	}
	pw := p.Credentials.Password
	if len(pw) < 3 {
		if strings.Contains(reason, pw) {
			return withheldReason
		}
		return reason
	}
	return strings.ReplaceAll(reason, pw, "xxxxx")
}
