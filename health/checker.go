package health

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/pharox/pharox"
)

// ErrorKind classifies why a probe failed. The empty kind means success.
type ErrorKind string

// Error kinds. They are stored as HealthCheckResult.ErrorKind.
const (
	// KindNone: the probe succeeded.
	KindNone ErrorKind = ""
	// KindRefused: a TCP connection was refused (the proxy is not listening).
	KindRefused ErrorKind = "refused"
	// KindTimeout: the probe did not finish within the timeout.
	KindTimeout ErrorKind = "timeout"
	// KindReset: the peer reset or closed the connection mid-exchange.
	KindReset ErrorKind = "reset"
	// KindProxyAuth: the proxy demanded or rejected credentials (HTTP 407,
	// SOCKS authentication failure).
	KindProxyAuth ErrorKind = "proxy_auth"
	// KindProxyError: the proxy answered but would not relay the request
	// (CONNECT refused with a status other than 407, SOCKS request rejected).
	KindProxyError ErrorKind = "proxy_error"
	// KindTLS: a TLS handshake failed, to the proxy or through it.
	KindTLS ErrorKind = "tls"
	// KindDNS: a host name could not be resolved.
	KindDNS ErrorKind = "dns"
	// KindUnexpectedStatus: the target answered with a status code that is
	// neither expected nor a ban code.
	KindUnexpectedStatus ErrorKind = "unexpected_status"
	// KindBanned: the target answered with a ban status code or a ban page.
	KindBanned ErrorKind = "banned"
	// KindCanceled: the caller's context ended; the result says nothing
	// about the proxy and should not be applied.
	KindCanceled ErrorKind = "canceled"
	// KindInvalid: the proxy record cannot be probed (unknown protocol).
	KindInvalid ErrorKind = "invalid"
	// KindOther: any other failure.
	KindOther ErrorKind = "error"
)

// Defaults applied by NewChecker.
const (
	DefaultTimeout = 10 * time.Second
	// DefaultUserAgent is sent when Headers has no User-Agent.
	DefaultUserAgent = "pharox-health/1"
	// maxBanBody bounds how much of a response body is searched for
	// BanBodyContains patterns.
	maxBanBody = 64 << 10
)

// DefaultBanStatusCodes are the target answers a probe treats as a ban when
// CheckerOptions.BanStatusCodes is nil. 403 is deliberately absent: many
// targets answer it for reasons that have nothing to do with the proxy.
var DefaultBanStatusCodes = []int{429}

// CheckerOptions configures a Checker.
type CheckerOptions struct {
	// TargetURL is the http or https URL every probe requests. Required.
	TargetURL string
	// Method is the request method; empty means GET.
	Method string
	// ExpectedStatus lists the status codes that count as healthy; empty
	// means any 2xx.
	ExpectedStatus []int
	// Timeout bounds one whole probe (connect, handshakes, response
	// headers, body); zero means DefaultTimeout.
	Timeout time.Duration
	// InsecureSkipVerify disables certificate verification, both of HTTPS
	// proxies and of https targets.
	InsecureSkipVerify bool
	// TLSConfig is the base TLS configuration (for example RootCAs); it is
	// cloned, never modified.
	TLSConfig *tls.Config
	// Headers are sent with every probe request. A Host header sets the
	// request's Host.
	Headers http.Header
	// SlowThreshold classifies a healthy proxy as slow when the response
	// headers took longer; zero disables it.
	SlowThreshold time.Duration
	// BanStatusCodes are target answers that mean the proxy is banned. Nil
	// means DefaultBanStatusCodes; an empty, non-nil slice disables ban
	// detection by status.
	BanStatusCodes []int
	// BanBodyContains marks a response with an expected status as a ban
	// when its body (first 64 KiB, case-insensitive) contains any of these
	// strings, for targets that answer 200 with a captcha page.
	BanBodyContains []string
	// Clock stamps CheckedAt; nil means time.Now. Latency is always
	// measured with the monotonic clock.
	Clock func() time.Time
}

// Checker probes proxies. It is safe for concurrent use; every probe opens
// its own connections, so results never ride on a connection another probe
// established.
type Checker struct {
	opts     CheckerOptions
	target   *url.URL
	site     string // the target's site (pharox.NormalizeTarget)
	method   string
	banBody  [][]byte
	tlsBase  *tls.Config
	dialer   *net.Dialer
	expected func(int) bool
}

// NewChecker validates opts, applies defaults and returns a Checker.
func NewChecker(opts CheckerOptions) (*Checker, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: health checker: "+format, append([]any{pharox.ErrInvalidArgument}, args...)...)
	}
	if strings.TrimSpace(opts.TargetURL) == "" {
		return nil, bad("target URL is empty")
	}
	u, err := url.Parse(opts.TargetURL)
	if err != nil {
		return nil, bad("target URL %q: %v", opts.TargetURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, bad("target URL %q: scheme must be http or https", opts.TargetURL)
	}
	if u.Host == "" {
		return nil, bad("target URL %q has no host", opts.TargetURL)
	}
	if opts.Timeout < 0 {
		return nil, bad("negative timeout %v", opts.Timeout)
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.SlowThreshold < 0 {
		return nil, bad("negative slow threshold %v", opts.SlowThreshold)
	}
	for _, c := range slices.Concat(opts.ExpectedStatus, opts.BanStatusCodes) {
		if c < 100 || c > 999 {
			return nil, bad("status code %d out of range 100-999", c)
		}
	}
	if opts.BanStatusCodes == nil {
		opts.BanStatusCodes = DefaultBanStatusCodes
	}
	opts.ExpectedStatus = slices.Clone(opts.ExpectedStatus)
	opts.BanStatusCodes = slices.Clone(opts.BanStatusCodes)
	opts.Headers = opts.Headers.Clone()
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	method := strings.ToUpper(strings.TrimSpace(opts.Method))
	if method == "" {
		method = http.MethodGet
	}
	site, err := pharox.NormalizeTarget(u.Host)
	if err != nil {
		return nil, bad("target URL %q: %v", opts.TargetURL, err)
	}
	c := &Checker{
		opts:   opts,
		target: u,
		site:   site,
		method: method,
		dialer: &net.Dialer{KeepAlive: -1},
	}
	for _, s := range opts.BanBodyContains {
		if s = strings.TrimSpace(s); s != "" {
			c.banBody = append(c.banBody, bytes.ToLower([]byte(s)))
		}
	}
	if opts.TLSConfig != nil {
		c.tlsBase = opts.TLSConfig.Clone()
	} else {
		c.tlsBase = &tls.Config{}
	}
	if opts.InsecureSkipVerify {
		c.tlsBase.InsecureSkipVerify = true
	}
	if len(opts.ExpectedStatus) == 0 {
		c.expected = func(code int) bool { return code >= 200 && code < 300 }
	} else {
		c.expected = func(code int) bool { return slices.Contains(c.opts.ExpectedStatus, code) }
	}
	return c, nil
}

// Options returns a copy of the options the Checker runs with, defaults
// applied.
func (c *Checker) Options() CheckerOptions {
	o := c.opts
	o.ExpectedStatus = slices.Clone(o.ExpectedStatus)
	o.BanStatusCodes = slices.Clone(o.BanStatusCodes)
	o.Headers = o.Headers.Clone()
	return o
}

// Result is the detailed outcome of one probe.
type Result struct {
	pharox.HealthCheckResult
	// Kind is the failure class, KindNone on success. It equals
	// HealthCheckResult.ErrorKind.
	Kind ErrorKind `json:"kind,omitempty"`
	// Err is the underlying error, with any proxy password removed; nil on
	// success.
	Err error `json:"-"`
}

// OK reports whether the probe found the proxy healthy (active or slow).
func (r *Result) OK() bool { return r.Kind == KindNone }

// Check probes p and returns the result to store; see Probe.
func (c *Checker) Check(ctx context.Context, p *pharox.Proxy) pharox.HealthCheckResult {
	return c.Probe(ctx, p).HealthCheckResult
}

// Probe sends one request to the target through p and classifies the
// outcome. It never returns an error: failures are the result. When ctx
// ends before the probe finishes, Kind is KindCanceled and the result
// should be discarded rather than stored.
func (c *Checker) Probe(ctx context.Context, p *pharox.Proxy) Result {
	if p == nil {
		return c.fail(Result{}, KindInvalid, errors.New("proxy is nil"), nil)
	}
	res := Result{HealthCheckResult: pharox.HealthCheckResult{
		ProxyID:   p.ID,
		Protocol:  p.Protocol,
		Attempts:  1,
		CheckedAt: c.opts.Clock().UTC(),
		Target:    c.site,
	}}
	tr, err := c.transport(p)
	if err != nil {
		return c.fail(res, KindInvalid, err, p)
	}
	defer tr.CloseIdleConnections()
	return c.roundTrip(ctx, tr, res, p)
}

// CheckDirect requests the target without any proxy. The orchestrator uses
// it before a sweep: when the target itself is down, every proxy would look
// dead.
func (c *Checker) CheckDirect(ctx context.Context) Result {
	res := Result{HealthCheckResult: pharox.HealthCheckResult{Attempts: 1, CheckedAt: c.opts.Clock().UTC()}}
	tr := c.baseTransport()
	tr.DialContext = c.dialer.DialContext
	defer tr.CloseIdleConnections()
	return c.roundTrip(ctx, tr, res, nil)
}

func (c *Checker) baseTransport() *http.Transport {
	return &http.Transport{
		TLSClientConfig:        c.tlsBase.Clone(),
		TLSHandshakeTimeout:    c.opts.Timeout,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
		ForceAttemptHTTP2:      false,
	}
}

// transport builds a one-probe transport that reaches the target through p.
func (c *Checker) transport(p *pharox.Proxy) (*http.Transport, error) {
	if p.Host == "" || p.Port < 1 || p.Port > 65535 {
		return nil, fmt.Errorf("proxy address %q is invalid", p.Address())
	}
	tr := c.baseTransport()
	switch p.Protocol {
	case pharox.ProtocolHTTP, pharox.ProtocolHTTPS:
		proxyURL, err := url.Parse(p.URL())
		if err != nil {
			return nil, fmt.Errorf("proxy URL: %v", redactErr(err, p))
		}
		tr.Proxy = http.ProxyURL(proxyURL)
		tr.DialContext = c.dialer.DialContext
		if h := c.opts.Headers.Get("User-Agent"); h != "" {
			tr.ProxyConnectHeader = http.Header{"User-Agent": {h}}
		}
		tr.OnProxyConnectResponse = func(_ context.Context, _ *url.URL, _ *http.Request, resp *http.Response) error {
			if resp.StatusCode != http.StatusOK {
				return &connectError{code: resp.StatusCode, status: resp.Status}
			}
			return nil
		}
	case pharox.ProtocolSOCKS5:
		d, err := socks5Dialer(p, c.dialer)
		if err != nil {
			return nil, err
		}
		tr.DialContext = d
	case pharox.ProtocolSOCKS4:
		tr.DialContext = socks4Dialer(p, c.dialer)
	default:
		return nil, fmt.Errorf("unknown protocol %q", p.Protocol)
	}
	return tr, nil
}

func (c *Checker) roundTrip(ctx context.Context, tr *http.Transport, res Result, p *pharox.Proxy) Result {
	pctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(pctx, c.method, c.target.String(), nil)
	if err != nil {
		return c.fail(res, KindInvalid, err, p)
	}
	for k, vs := range c.opts.Headers {
		if http.CanonicalHeaderKey(k) == "Host" {
			if len(vs) > 0 {
				req.Host = vs[0]
			}
			continue
		}
		req.Header[http.CanonicalHeaderKey(k)] = slices.Clone(vs)
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", DefaultUserAgent)
	}
	start := time.Now()
	resp, err := tr.RoundTrip(req)
	res.Latency = time.Since(start)
	if err != nil {
		if ctx.Err() != nil {
			return c.fail(res, KindCanceled, ctx.Err(), p)
		}
		kind := classifyError(err)
		var ce *connectError
		if errors.As(err, &ce) {
			res.StatusCode = ce.code
		}
		return c.fail(res, kind, err, p)
	}
	defer resp.Body.Close()
	res.StatusCode = resp.StatusCode
	switch {
	case resp.StatusCode == http.StatusProxyAuthRequired && p != nil && (p.Protocol == pharox.ProtocolHTTP || p.Protocol == pharox.ProtocolHTTPS):
		return c.fail(res, KindProxyAuth, errors.New("proxy answered 407 Proxy Authentication Required"), p)
	case slices.Contains(c.opts.BanStatusCodes, resp.StatusCode):
		return c.fail(res, KindBanned, fmt.Errorf("target answered %s: ban status", resp.Status), p)
	case !c.expected(resp.StatusCode):
		return c.fail(res, KindUnexpectedStatus, fmt.Errorf("target answered %s, not an expected status", resp.Status), p)
	}
	if len(c.banBody) > 0 {
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxBanBody))
		if err != nil && ctx.Err() != nil {
			return c.fail(res, KindCanceled, ctx.Err(), p)
		}
		if err != nil {
			return c.fail(res, classifyError(err), fmt.Errorf("read body: %w", err), p)
		}
		body = bytes.ToLower(body)
		for _, pat := range c.banBody {
			if bytes.Contains(body, pat) {
				return c.fail(res, KindBanned, fmt.Errorf("target answered a ban page (body contains %q)", pat), p)
			}
		}
	}
	res.Status = classify(KindNone, res.Latency, c.opts.SlowThreshold)
	if res.Status == pharox.StatusSlow {
		// Kind stays KindNone (the proxy works), but the stored reason says
		// why it ranks after faster ones.
		res.Error = fmt.Sprintf("slow: answered in %v, over the %v threshold", res.Latency.Round(time.Millisecond), c.opts.SlowThreshold)
	}
	return res
}

// fail fills in a failed result. The error text loses any proxy password.
func (c *Checker) fail(res Result, kind ErrorKind, err error, p *pharox.Proxy) Result {
	res.Kind = kind
	res.ErrorKind = string(kind)
	res.Status = classify(kind, res.Latency, c.opts.SlowThreshold)
	err = redactErr(err, p)
	res.Err = err
	res.Error = err.Error()
	return res
}

// classify maps a probe outcome to a proxy status: healthy probes are active
// or, over the slow threshold, slow; ban answers are banned; everything
// else is inactive.
func classify(kind ErrorKind, latency, slow time.Duration) pharox.ProxyStatus {
	switch kind {
	case KindNone:
		if slow > 0 && latency > slow {
			return pharox.StatusSlow
		}
		return pharox.StatusActive
	case KindBanned:
		return pharox.StatusBanned
	}
	return pharox.StatusInactive
}

// connectError is a CONNECT answered with something other than 200.
type connectError struct {
	code   int
	status string
}

func (e *connectError) Error() string {
	return "proxy refused CONNECT: " + e.status
}

// redactedError replaces an error whose text contained a secret.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redactErr removes p's password (raw and URL-escaped) from err's text,
// keeping the chain for errors.Is.
func redactErr(err error, p *pharox.Proxy) error {
	if err == nil || p == nil || p.Credentials == nil || p.Credentials.Password == "" {
		return err
	}
	msg := err.Error()
	out := msg
	for _, secret := range []string{p.Credentials.Password, url.QueryEscape(p.Credentials.Password), url.PathEscape(p.Credentials.Password)} {
		out = strings.ReplaceAll(out, secret, "***")
	}
	if out == msg {
		return err
	}
	return &redactedError{msg: out, err: err}
}
