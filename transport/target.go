package transport

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/pharox/pharox"
)

// withRequestTarget returns opts with the request's site as the target
// (RequestOptions.Target, or the registrable domain of the URL's host),
// unless per-site health is off. opts is not modified. An explicit target
// that names no site is an error; a URL host that names none (the proxy
// judges such a request) leases without a target.
func (t *Transport) withRequestTarget(req *http.Request, opts *pharox.AcquireOptions) (*pharox.AcquireOptions, error) {
	if t.noTargetOpt || t.noTargets.Load() || req.URL == nil {
		if opts.Target == "" {
			return opts, nil
		}
		o := *opts
		o.Target = ""
		return &o, nil
	}
	if opts.Target != "" {
		target, err := pharox.NormalizeTarget(opts.Target)
		if err != nil {
			return nil, fmt.Errorf("transport: %w", err)
		}
		o := *opts
		o.Target = target
		return &o, nil
	}
	target, err := pharox.NormalizeTarget(req.URL.Host)
	if err != nil || target == "" {
		return opts, nil
	}
	o := *opts
	o.Target = target
	return &o, nil
}

// leaseFor acquires through the leaser. When the lease source keeps no
// per-site health (ErrUnsupported for an acquisition with a target and no
// predicate, the other thing a source may not support) the Transport stops
// asking for it and acquires without a target.
func (t *Transport) leaseFor(ctx context.Context, pool string, opts *pharox.AcquireOptions, wait time.Duration) (*pharox.Lease, error) {
	if opts.Target != "" && t.noTargets.Load() {
		o := *opts
		o.Target = ""
		opts = &o
	}
	l, err := t.leaser.Acquire(ctx, pool, opts, wait)
	if opts.Target != "" && !opts.Filters.HasPredicate() && errors.Is(err, pharox.ErrUnsupported) {
		t.dropTargets(err)
		o := *opts
		o.Target = ""
		return t.leaser.Acquire(ctx, pool, &o, wait)
	}
	return l, err
}

// dropTargets turns per-site health off for good, once, saying why.
func (t *Transport) dropTargets(err error) {
	if !t.noTargets.Swap(true) {
		t.log.Warn("transport: the lease source keeps no per-site (target) health; bans count against proxies everywhere", "err", err)
	}
}

// addTarget gives an outcome about the site the request went to (a
// success or a ban) that site, the target it was leased for. Failures
// count against the proxy everywhere: the classifier's failures are the
// proxy's own (it refused its credentials), like those of reaching it.
func (t *Transport) addTarget(target string, o *pharox.Outcome) {
	if target != "" && !t.noTargets.Load() && (o.Kind == pharox.OutcomeSuccess || o.Kind == pharox.OutcomeBanned) {
		o.Target = target
	}
}
