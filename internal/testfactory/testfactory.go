package testfactory

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// seq numbers the defaults (names, hosts, ports) so that records made by
// different calls, tests or parallel subtests never collide.
var seq atomic.Int64

func next() int64 { return seq.Add(1) }

// PoolOpts overrides a pool's defaults (a unique name "pool-N", no
// description).
type PoolOpts struct {
	Name        *string
	Description *string
}

// Pool creates a pool in s.
func Pool(ctx context.Context, tb testing.TB, s pharox.Storage, opts *PoolOpts) *pharox.Pool {
	tb.Helper()
	if opts == nil {
		opts = &PoolOpts{}
	}
	p := pharox.Pool{Name: valueOr(opts.Name, fmt.Sprintf("pool-%d", next()))}
	p.Description = valueOr(opts.Description, "")
	out, err := s.CreatePool(ctx, p)
	if err != nil {
		tb.Fatalf("testfactory: CreatePool(%q): %v", p.Name, err)
	}
	return out
}

// ProxyOpts overrides a proxy's defaults: a unique 10.x.y.z host and port,
// http, active, unlimited concurrency, no country, location or credentials.
// Each nil field keeps its default.
type ProxyOpts struct {
	Host           *string
	Port           *int
	Protocol       *pharox.Protocol
	Status         *pharox.ProxyStatus
	MaxConcurrency *int
	Country        *string
	Latitude       *float64
	Longitude      *float64
	Credentials    *pharox.Credentials
	Tags           []string
}

// ProxyInput returns the proxy ProxyOpts describes for poolID without
// storing it: the input of an AddProxies call a test makes itself.
func ProxyInput(poolID uuid.UUID, opts *ProxyOpts) pharox.Proxy {
	if opts == nil {
		opts = &ProxyOpts{}
	}
	n := next()
	p := pharox.Proxy{
		PoolID:         poolID,
		Host:           valueOr(opts.Host, fmt.Sprintf("10.%d.%d.%d", n>>16&255, n>>8&255, n&255)),
		Port:           valueOr(opts.Port, 1024+int(n%60000)),
		Protocol:       valueOr(opts.Protocol, pharox.ProtocolHTTP),
		Status:         valueOr(opts.Status, pharox.StatusActive),
		MaxConcurrency: copyPtr(opts.MaxConcurrency),
		Country:        valueOr(opts.Country, ""),
		Latitude:       copyPtr(opts.Latitude),
		Longitude:      copyPtr(opts.Longitude),
		Credentials:    copyPtr(opts.Credentials),
		Tags:           append([]string(nil), opts.Tags...),
	}
	return p
}

// Proxy stores one proxy in poolID.
func Proxy(ctx context.Context, tb testing.TB, s pharox.Storage, poolID uuid.UUID, opts *ProxyOpts) *pharox.Proxy {
	tb.Helper()
	return Proxies(ctx, tb, s, poolID, 1, opts)[0]
}

// Proxies stores n proxies in poolID, each with the defaults opts leaves,
// in one AddProxies call, and returns the stored copies in order. Host and
// Port are overridden only for n == 1 (n proxies must be distinct); use
// ProxiesFunc for per-proxy values.
func Proxies(ctx context.Context, tb testing.TB, s pharox.Storage, poolID uuid.UUID, n int, opts *ProxyOpts) []*pharox.Proxy {
	tb.Helper()
	return ProxiesFunc(ctx, tb, s, poolID, n, func(int) *ProxyOpts {
		if opts == nil || n == 1 {
			return opts
		}
		o := *opts
		o.Host, o.Port = nil, nil
		return &o
	})
}

// ProxiesFunc stores n proxies in poolID, the i-th described by opts(i),
// in one AddProxies call, and returns the stored copies in order.
func ProxiesFunc(ctx context.Context, tb testing.TB, s pharox.Storage, poolID uuid.UUID, n int, opts func(i int) *ProxyOpts) []*pharox.Proxy {
	tb.Helper()
	in := make([]pharox.Proxy, n)
	for i := range in {
		in[i] = ProxyInput(poolID, opts(i))
	}
	out, err := s.AddProxies(ctx, in)
	if err != nil {
		tb.Fatalf("testfactory: AddProxies(%d proxies): %v", n, err)
	}
	if len(out) != n {
		tb.Fatalf("testfactory: AddProxies(%d proxies) returned %d", n, len(out))
	}
	return out
}

// PoolWithProxies creates a pool (named by poolOpts) holding n proxies
// described by proxyOpts: the usual seed of a test.
func PoolWithProxies(ctx context.Context, tb testing.TB, s pharox.Storage, poolOpts *PoolOpts, n int, proxyOpts *ProxyOpts) (*pharox.Pool, []*pharox.Proxy) {
	tb.Helper()
	p := Pool(ctx, tb, s, poolOpts)
	if n == 0 {
		return p, nil
	}
	return p, Proxies(ctx, tb, s, p.ID, n, proxyOpts)
}

// ConsumerOpts overrides a consumer's default (a unique name
// "consumer-N").
type ConsumerOpts struct {
	Name *string
}

// Consumer ensures a consumer in s.
func Consumer(ctx context.Context, tb testing.TB, s pharox.Storage, opts *ConsumerOpts) *pharox.Consumer {
	tb.Helper()
	if opts == nil {
		opts = &ConsumerOpts{}
	}
	name := valueOr(opts.Name, fmt.Sprintf("consumer-%d", next()))
	c, err := s.EnsureConsumer(ctx, name)
	if err != nil {
		tb.Fatalf("testfactory: EnsureConsumer(%q): %v", name, err)
	}
	return c
}

// LeaseOpts overrides an acquisition's defaults: one minute,
// first_available, no session or filters. PoolName has no default; Lease
// creates a consumer when Consumer is nil.
type LeaseOpts struct {
	PoolName   *string
	Consumer   *pharox.Consumer
	Duration   *time.Duration
	Strategy   *pharox.Strategy
	SessionKey *string
	// SessionTTL defaults to ten minutes when SessionKey is set.
	SessionTTL *time.Duration
	Filters    *pharox.Filters
}

// AcquireRequest returns the request opts describes, without acquiring.
func AcquireRequest(opts *LeaseOpts) pharox.AcquireRequest {
	if opts == nil {
		opts = &LeaseOpts{}
	}
	r := pharox.AcquireRequest{
		PoolName:   valueOr(opts.PoolName, ""),
		Duration:   valueOr(opts.Duration, time.Minute),
		Strategy:   valueOr(opts.Strategy, pharox.FirstAvailable),
		SessionKey: valueOr(opts.SessionKey, ""),
		Filters:    copyPtr(opts.Filters),
	}
	if r.SessionKey != "" {
		r.SessionTTL = valueOr(opts.SessionTTL, 10*time.Minute)
	}
	if opts.Consumer != nil {
		r.ConsumerID, r.ConsumerName = opts.Consumer.ID, opts.Consumer.Name
	}
	return r
}

// Lease acquires a lease in s. opts.PoolName is required; a nil
// opts.Consumer means a fresh consumer.
func Lease(ctx context.Context, tb testing.TB, s pharox.Storage, opts *LeaseOpts) *pharox.Lease {
	tb.Helper()
	if opts == nil || opts.PoolName == nil {
		tb.Fatal("testfactory: Lease needs LeaseOpts.PoolName")
		return nil
	}
	o := *opts
	if o.Consumer == nil {
		o.Consumer = Consumer(ctx, tb, s, nil)
	}
	req := AcquireRequest(&o)
	l, err := s.AcquireLease(ctx, req)
	if err != nil {
		tb.Fatalf("testfactory: AcquireLease(pool %q): %v", req.PoolName, err)
	}
	return l
}

func valueOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func copyPtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}
