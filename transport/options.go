package transport

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/pharox/pharox"
)

// Defaults of the options.
const (
	// DefaultMaxWait is the longest a request waits for a free proxy when
	// its context has no deadline.
	DefaultMaxWait = 30 * time.Second
	// DefaultMaxRetries is how many times a request is retried on another
	// proxy after a ban or a connection failure.
	DefaultMaxRetries = 2
	// DefaultMaxProxyTransports caps the per-proxy transports kept (each
	// with its own idle connections); the least recently used go first.
	DefaultMaxProxyTransports = 256
	// DefaultMaxIdleConnsPerProxy is the idle keep-alive connections kept
	// per proxy (and target, for tunnels) by the default base transport.
	DefaultMaxIdleConnsPerProxy = 16
	// DefaultSuccessReportInterval spaces out success reports of a healthy
	// proxy (see WithSuccessReportInterval).
	DefaultSuccessReportInterval = 10 * time.Second
)

// Option configures a Transport.
type Option func(*Transport) error

// WithConsumer names the consumer the leases are taken for; empty means
// pharox.DefaultConsumerName.
func WithConsumer(name string) Option {
	return func(t *Transport) error {
		if name != "" {
			if err := pharox.ValidateName("consumer name", name); err != nil {
				return err
			}
		}
		t.defaults.Consumer = name
		return nil
	}
}

// WithFilters narrows the proxies leased (country, tags, ...).
func WithFilters(f *pharox.Filters) Option {
	return func(t *Transport) error {
		if !f.IsZero() {
			if err := f.NormalizedClone().Validate(); err != nil {
				return err
			}
		}
		t.defaults.Filters = f
		return nil
	}
}

// WithStrategy chooses how a proxy is picked among the candidates. The
// default is pharox.RoundRobin, so that requests rotate over the pool
// (first_available would send every request through the same proxy while
// it has a free slot).
func WithStrategy(s pharox.Strategy) Option {
	return func(t *Transport) error {
		if !s.OrDefault().Valid() {
			return fmt.Errorf("%w: unknown strategy %q (want first_available, least_used, round_robin or random)", pharox.ErrInvalidArgument, s)
		}
		t.defaults.Strategy = s
		return nil
	}
}

// WithLeaseDuration sets how long each lease lasts before it must be
// renewed; a response body still being read renews it. Zero means
// pharox.DefaultLeaseDuration.
func WithLeaseDuration(d time.Duration) Option {
	return func(t *Transport) error {
		if d < 0 || d > pharox.MaxLeaseDuration {
			return fmt.Errorf("%w: lease duration must be in [0, %v], got %v", pharox.ErrInvalidArgument, pharox.MaxLeaseDuration, d)
		}
		t.defaults.Duration = d
		return nil
	}
}

// WithSessionTTL sets how long a sticky session binding lives after each
// use (see WithSession); zero means pharox.DefaultSessionTTL.
func WithSessionTTL(d time.Duration) Option {
	return func(t *Transport) error {
		if d < 0 || d > pharox.MaxLeaseDuration {
			return fmt.Errorf("%w: session ttl must be in [0, %v], got %v", pharox.ErrInvalidArgument, pharox.MaxLeaseDuration, d)
		}
		t.defaults.SessionTTL = d
		return nil
	}
}

// WithMaxWait bounds how long a request waits for a free proxy. The
// request's own deadline cuts the wait shorter: the wait ends a little
// before it, so the request fails with pharox.ErrNoProxyAvailable rather
// than with its timeout. Zero never waits. The default is DefaultMaxWait.
func WithMaxWait(d time.Duration) Option {
	return func(t *Transport) error {
		if d < 0 {
			return fmt.Errorf("%w: max wait must not be negative, got %v", pharox.ErrInvalidArgument, d)
		}
		t.maxWait = d
		return nil
	}
}

// WithMaxRetries sets how many times a request may be retried on another
// proxy (see Transport for which requests are). Zero never retries.
func WithMaxRetries(n int) Option {
	return func(t *Transport) error {
		if n < 0 {
			return fmt.Errorf("%w: max retries must not be negative, got %d", pharox.ErrInvalidArgument, n)
		}
		t.maxRetries = n
		return nil
	}
}

// WithClassifier replaces DefaultClassifier, which decides what a response
// says about the proxy it came through. A classifier may fall back on
// DefaultClassifier for the responses it has no opinion on.
func WithClassifier(c Classifier) Option {
	return func(t *Transport) error {
		if c == nil {
			return fmt.Errorf("%w: classifier is nil", pharox.ErrInvalidArgument)
		}
		t.classify = c
		return nil
	}
}

// WithBaseTransport sets the template every per-proxy transport is cloned
// from: timeouts, TLS to the targets (TLSClientConfig, also used for
// HTTPS proxies), HTTP/2, idle connection limits. Its DialContext, if
// set, dials the proxies; its Proxy, Dial, DialTLS and DialTLSContext are
// ignored, since every connection goes through the leased proxy. The
// default is
// http.DefaultTransport's settings with MaxIdleConnsPerHost
// DefaultMaxIdleConnsPerProxy. The template must not be changed after.
func WithBaseTransport(base *http.Transport) Option {
	return func(t *Transport) error {
		if base == nil {
			return fmt.Errorf("%w: base transport is nil", pharox.ErrInvalidArgument)
		}
		t.base = base
		return nil
	}
}

// WithMaxProxyTransports caps the per-proxy transports kept; see
// DefaultMaxProxyTransports.
func WithMaxProxyTransports(n int) Option {
	return func(t *Transport) error {
		if n < 1 {
			return fmt.Errorf("%w: max proxy transports must be at least 1, got %d", pharox.ErrInvalidArgument, n)
		}
		t.maxProxies = n
		return nil
	}
}

// WithSuccessReportInterval spaces out success reports: a success is
// reported for a proxy that was healthy when leased only if none was
// reported for it in the last d by this Transport. Failures, bans and the
// first success after them are always reported. Zero reports every
// success (one more store write per request).
func WithSuccessReportInterval(d time.Duration) Option {
	return func(t *Transport) error {
		if d < 0 {
			return fmt.Errorf("%w: success report interval must not be negative, got %v", pharox.ErrInvalidArgument, d)
		}
		t.successEvery = d
		return nil
	}
}

// WithoutTargetHealth stops keeping health per site (target). By default
// each request's site (the registrable domain of its URL's host, see
// pharox.NormalizeTarget, or RequestOptions.Target) goes with its
// acquisition, so proxies cooling down for that site are not leased for
// it, and with its success and ban reports, so a ban cools the proxy down
// for that site only and the proxy keeps serving the others. Failures
// (the proxy could not be reached, refused its credentials, broke the
// exchange) count against the proxy everywhere either way. With a lease
// source that keeps no per-site health the Transport turns it off by
// itself, as this option does, and bans count everywhere.
func WithoutTargetHealth() Option {
	return func(t *Transport) error {
		t.noTargetOpt = true
		return nil
	}
}

// WithoutMetering stops counting traffic per lease. By default each
// release reports what the lease carried (pharox.Usage: one request, and
// its bytes on the connection through the proxy, see the package doc),
// which the lease source adds to its usage aggregates and quota counters
// as part of the release.
func WithoutMetering() Option {
	return func(t *Transport) error {
		t.noMetering = true
		return nil
	}
}

// WithObserver sends the Transport's events (requests, outcomes, lease
// waits) to o, for example an observe.TransportMetrics.
func WithObserver(o Observer) Option {
	return func(t *Transport) error {
		if o == nil {
			return fmt.Errorf("%w: observer is nil", pharox.ErrInvalidArgument)
		}
		t.observer = o
		return nil
	}
}

// WithLogger sets the logger for errors the Transport cannot return (a
// failed release or report). The default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(t *Transport) error {
		if l == nil {
			return fmt.Errorf("%w: logger is nil", pharox.ErrInvalidArgument)
		}
		t.log = l
		return nil
	}
}

// RequestOptions override the Transport's options for the requests made
// with a context from WithRequestOptions. Zero fields keep the Transport's
// value.
type RequestOptions struct {
	// Pool leases from another pool.
	Pool string
	// Consumer leases for another consumer.
	Consumer string
	// Filters replace the Transport's filters.
	Filters *pharox.Filters
	// Strategy replaces the Transport's strategy.
	Strategy pharox.Strategy
	// LeaseDuration replaces the Transport's lease duration.
	LeaseDuration time.Duration
	// Session makes the request sticky (see WithSession).
	Session string
	// SessionTTL replaces the Transport's session TTL.
	SessionTTL time.Duration
	// Target names the site the requests count for (a host name,
	// host:port, IP address or URL) instead of each request's own host:
	// for example the site whose CDN host a request goes to.
	Target string
}

type requestOptionsKey struct{}

// WithRequestOptions returns a context whose requests lease with o on top
// of the Transport's options (and of options already in ctx).
func WithRequestOptions(ctx context.Context, o RequestOptions) context.Context {
	merged := o
	if prev, ok := ctx.Value(requestOptionsKey{}).(*RequestOptions); ok {
		merged = *prev
		if o.Pool != "" {
			merged.Pool = o.Pool
		}
		if o.Consumer != "" {
			merged.Consumer = o.Consumer
		}
		if o.Filters != nil {
			merged.Filters = o.Filters
		}
		if o.Strategy != "" {
			merged.Strategy = o.Strategy
		}
		if o.LeaseDuration != 0 {
			merged.LeaseDuration = o.LeaseDuration
		}
		if o.Session != "" {
			merged.Session = o.Session
		}
		if o.SessionTTL != 0 {
			merged.SessionTTL = o.SessionTTL
		}
		if o.Target != "" {
			merged.Target = o.Target
		}
	}
	return context.WithValue(ctx, requestOptionsKey{}, &merged)
}

// WithSession returns a context whose requests are sticky: while the
// session lives, requests with the same key go through the same proxy if
// it can take another lease. When it cannot (busy, unhealthy, banned, or
// a request through it failed and is retried), the session fails over to
// another proxy and stays there.
func WithSession(ctx context.Context, key string) context.Context {
	return WithRequestOptions(ctx, RequestOptions{Session: key})
}

// resolve returns the pool and acquire options for a request's context.
// Without overrides they are the Transport's own, shared: not to be
// modified.
func (t *Transport) resolve(ctx context.Context) (string, *pharox.AcquireOptions) {
	ro, ok := ctx.Value(requestOptionsKey{}).(*RequestOptions)
	if !ok {
		return t.pool, &t.defaults
	}
	pool, o := t.pool, t.defaults
	if ro.Pool != "" {
		pool = ro.Pool
	}
	if ro.Consumer != "" {
		o.Consumer = ro.Consumer
	}
	if ro.Filters != nil {
		o.Filters = ro.Filters
	}
	if ro.Strategy != "" {
		o.Strategy = ro.Strategy
	}
	if ro.LeaseDuration != 0 {
		o.Duration = ro.LeaseDuration
	}
	if ro.Session != "" {
		o.SessionKey = ro.Session
	}
	if ro.SessionTTL != 0 {
		o.SessionTTL = ro.SessionTTL
	}
	if ro.Target != "" {
		o.Target = ro.Target
	}
	return pool, &o
}
