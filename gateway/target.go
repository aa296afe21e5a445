package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/pharox/pharox"
)

// banMarkerPeekBytes is how much of an error answer's body is searched
// for Config.BanMarkers.
const banMarkerPeekBytes = 4 << 10

// targetOf is the site (see pharox.NormalizeTarget) a request or tunnel
// to host (a host or host:port) goes to, or "" when the gateway keeps no
// per-site health: turned off, not supported by the lease source, or a
// host that names no site (the upstream judges such a request).
func (g *Gateway) targetOf(host string) string {
	if g.cfg.DisableTargetHealth || g.noTargets.Load() {
		return ""
	}
	t, err := pharox.NormalizeTarget(host)
	if err != nil {
		return ""
	}
	return t
}

// leaseFor acquires through the leaser with opts. When the lease source
// keeps no per-site health (ErrUnsupported for an acquisition with a
// target and no predicate, which is the other thing a source may not
// support) the gateway stops asking for it and acquires without a target.
func (g *Gateway) leaseFor(ctx context.Context, pool string, opts *pharox.AcquireOptions, wait time.Duration) (*pharox.Lease, error) {
	if opts.Target != "" && g.noTargets.Load() {
		o := *opts
		o.Target = ""
		opts = &o
	}
	l, err := g.leaser.Acquire(ctx, pool, opts, wait)
	if opts.Target != "" && !opts.Filters.HasPredicate() && errors.Is(err, pharox.ErrUnsupported) {
		g.dropTargets(err)
		o := *opts
		o.Target = ""
		return g.leaser.Acquire(ctx, pool, &o, wait)
	}
	if opts.Target != "" && errors.Is(err, pharox.ErrNoProxyAvailable) {
		g.metrics.targetMiss()
	}
	return l, err
}

// dropTargets turns per-site health off for good, once, saying why.
func (g *Gateway) dropTargets(err error) {
	if !g.noTargets.Swap(true) {
		g.log.Warn("gateway: the lease source keeps no per-site (target) health; bans count against proxies everywhere", "err", err)
	}
}

// withTarget adds the request's site to an outcome about the site: a
// success or a ban. Failures of the upstream itself (unreachable, refused
// its credentials, broke the exchange) count against it everywhere.
func (g *Gateway) withTarget(st *reqState, o pharox.Outcome) pharox.Outcome {
	if st != nil && st.target != "" && !g.noTargets.Load() && (o.Kind == pharox.OutcomeSuccess || o.Kind == pharox.OutcomeBanned) {
		o.Target = st.target
	}
	return o
}

// banMarker returns the Config.BanMarkers phrase found at the start of an
// error answer's body (status 400 and above), or "". The body is given
// back whole to resp: the bytes read ahead are read again first.
func (g *Gateway) banMarker(resp *http.Response) string {
	if len(g.markers) == 0 || resp.StatusCode < 400 || resp.Body == nil || resp.Body == http.NoBody {
		return ""
	}
	buf := make([]byte, banMarkerPeekBytes)
	n, err := io.ReadFull(resp.Body, buf)
	head := buf[:n]
	rest := resp.Body
	resp.Body = &peekedBody{r: io.MultiReader(bytes.NewReader(head), readErr{rest, err}), c: rest}
	lower := bytes.ToLower(head)
	for _, m := range g.markers {
		if bytes.Contains(lower, m) {
			return string(m)
		}
	}
	return ""
}

// readErr reads r unless reading ahead already ended with a failure,
// which it then returns: the body must not look complete when it broke.
type readErr struct {
	r   io.Reader
	err error
}

func (e readErr) Read(p []byte) (int, error) {
	if e.err != nil && !errors.Is(e.err, io.EOF) && !errors.Is(e.err, io.ErrUnexpectedEOF) {
		return 0, e.err
	}
	return e.r.Read(p)
}

// peekedBody is a response body whose start was read ahead.
type peekedBody struct {
	r io.Reader
	c io.Closer
}

func (b *peekedBody) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b *peekedBody) Close() error               { return b.c.Close() }

// normalizeMarkers lower-cases the ban markers and refuses empty ones.
func normalizeMarkers(in []string) ([][]byte, error) {
	out := make([][]byte, 0, len(in))
	for _, m := range in {
		m = strings.ToLower(strings.TrimSpace(m))
		if m == "" {
			return nil, fmt.Errorf("%w: gateway: a ban marker is empty (it would match every answer)", pharox.ErrInvalidArgument)
		}
		if len(m) > banMarkerPeekBytes {
			return nil, fmt.Errorf("%w: gateway: ban marker longer than %d bytes: only the first %d bytes of a body are searched", pharox.ErrInvalidArgument, banMarkerPeekBytes, banMarkerPeekBytes)
		}
		out = append(out, []byte(m))
	}
	return out, nil
}

// acquireErrorFor is acquireError for st's pool, naming its site when no
// upstream was available for it, and counting quota refusals.
func (g *Gateway) acquireErrorFor(st *reqState, err error) *gwError {
	if errors.Is(err, pharox.ErrQuotaExceeded) {
		g.metrics.quotaRefusal(quotaLabels(err))
	}
	ge := acquireError(st.pool, err)
	if st.target != "" && errors.Is(err, pharox.ErrNoProxyAvailable) {
		ge.reason += fmt.Sprintf(" for %s (an upstream cooling down for a site is not used for it)", st.target)
	}
	return ge
}

// isBan reports whether an answer with this status bans the upstream, for
// a request to site ("" when unknown or without per-site health).
func (g *Gateway) isBan(site string, code int) bool {
	if site != "" && !g.noTargets.Load() {
		return g.siteBanned[code]
	}
	return g.banned[code]
}
