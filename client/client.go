// Package client is a typed Go client of the pharox HTTP service.
//
// It speaks the wire types of package api and hands back the model types
// of package pharox, so code written against a local [pharox.Manager] moves
// to a remote service with few changes:
//
//	c, err := client.New("http://pharox:8080", client.WithAPIKey(key))
//	err = c.WithLease(ctx, api.AcquireRequest{PoolName: "main"}, func(ctx context.Context, l *pharox.Lease) error {
//		return fetchThrough(ctx, l.Proxy.URL())
//	})
//
// Error responses become errors that wrap the pharox sentinels
// (errors.Is(err, pharox.ErrNoProxyAvailable)) and an [*APIError] with the
// status code and the server's detail (errors.As).
//
// Transient failures (connection errors, 429, 502, 503, 504) are retried
// with jittered exponential backoff, honouring the server's Retry-After,
// within the request's context, but only when a retry cannot do something
// twice. A 429 from a quota is not retried: it is returned at once as an
// error wrapping a [*pharox.QuotaError] (errors.Is
// [pharox.ErrQuotaExceeded]) with RetryAfter from the answer's header;
// to wait for a slot or a request token, acquire with WaitSeconds. Reads, releases and renewals are retried on any of them.
// Acquisitions carry an Idempotency-Key, the same on every attempt, and are
// retried after a 503 or a lost answer once the server has shown that it
// honours keys (it repeats the key on its answers), so a retry gets the
// same lease rather than a second one. Other requests that change state
// are retried only when they certainly never reached the server (the
// connection could not be made, or the server answered 429). A 503 that
// outlasts the retries is an error wrapping [pharox.ErrUnavailable].
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pharox/pharox"
)

// Default retry settings: up to DefaultMaxRetries retries after the first
// attempt, waiting about DefaultBaseBackoff, then twice as long each time,
// at most MaxBackoff.
const (
	DefaultMaxRetries  = 3
	DefaultBaseBackoff = 100 * time.Millisecond
	MaxBackoff         = 5 * time.Second
	// ReleaseTimeout bounds the release WithLease runs after its context
	// was cancelled.
	ReleaseTimeout = 15 * time.Second
	// maxErrorBody bounds how much of an error response is read.
	maxErrorBody = 64 << 10
)

// APIKeyHeader carries the API key.
const APIKeyHeader = "X-API-Key"

// IdempotencyKeyHeader carries an acquisition's idempotency key.
const IdempotencyKeyHeader = "Idempotency-Key"

// Client talks to one pharox service. It is safe for concurrent use.
type Client struct {
	base       *url.URL
	apiKey     string
	http       *http.Client
	maxRetries int
	backoff    time.Duration
	userAgent  string
	// keysHonoured is set once the server has repeated an
	// Idempotency-Key on an answer.
	keysHonoured atomic.Bool
}

// Option configures a Client.
type Option func(*Client) error

// WithAPIKey sends key in the X-API-Key header of every request.
func WithAPIKey(key string) Option {
	return func(c *Client) error {
		if strings.ContainsAny(key, "\r\n") {
			return errors.New("client: API key contains a line break")
		}
		c.apiKey = key
		return nil
	}
}

// WithHTTPClient uses hc for requests instead of a client with default
// settings. The Client keeps its own copy of hc, so that it can strip the
// API key from redirects to other hosts.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) error {
		if hc == nil {
			return errors.New("client: nil http.Client")
		}
		copied := *hc
		c.http = &copied
		return nil
	}
}

// WithRetry sets how many times a failed request is retried (0 disables
// retries) and the first backoff, which doubles on every retry up to
// MaxBackoff, with jitter.
func WithRetry(maxRetries int, baseBackoff time.Duration) Option {
	return func(c *Client) error {
		if maxRetries < 0 || baseBackoff < 0 {
			return fmt.Errorf("client: retry settings must not be negative (got %d, %v)", maxRetries, baseBackoff)
		}
		c.maxRetries, c.backoff = maxRetries, baseBackoff
		return nil
	}
}

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) Option {
	return func(c *Client) error {
		if strings.ContainsAny(ua, "\r\n") {
			return errors.New("client: user agent contains a line break")
		}
		c.userAgent = ua
		return nil
	}
}

// New returns a client of the service at baseURL, such as
// "http://127.0.0.1:8080" (a path prefix is kept: "https://host/pharox").
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(strings.TrimSpace(baseURL))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("client: server URL %q must be an absolute http or https URL", redactURL(baseURL))
	}
	if u.User != nil {
		return nil, errors.New("client: server URL must not carry credentials; use WithAPIKey")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawQuery, u.Fragment = "", ""
	c := &Client{
		base:       u,
		http:       &http.Client{},
		maxRetries: DefaultMaxRetries,
		backoff:    DefaultBaseBackoff,
		userAgent:  "pharox-go-client",
	}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	next := c.http.CheckRedirect
	c.http.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		// net/http strips Authorization on a redirect to another host but
		// knows nothing of X-API-Key: do the same for it.
		if len(via) > 0 && req.URL.Host != via[0].URL.Host {
			req.Header.Del(APIKeyHeader)
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	return c, nil
}

// BaseURL returns the service URL the client talks to.
func (c *Client) BaseURL() string { return c.base.String() }

// redactURL hides a password in a URL for error messages.
func redactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		return u.Redacted()
	}
	if i := strings.LastIndex(raw, "@"); i >= 0 {
		return "***" + raw[i:]
	}
	return raw
}

// retryMode says when a request may be sent again.
type retryMode int

const (
	// retrySafe: the request is safe or idempotent in effect (GET, PATCH
	// to a status, ensure-consumer by name, renew): retried on any
	// transient failure.
	retrySafe retryMode = iota
	// retryUnsent: the request changes state and is not idempotent
	// (acquire, import, outcome, create): retried only when it certainly
	// did not reach the server.
	retryUnsent
)

// call describes one API call.
type call struct {
	method string
	path   string
	query  url.Values
	body   any
	out    any
	mode   retryMode
	// notFound is the sentinel a 404 maps to when the detail does not say
	// which resource was missing.
	notFound error
	// idempotencyKey, when set, is sent as Idempotency-Key on every
	// attempt; a server that honours it makes the request safe to repeat.
	idempotencyKey string
}

// attemptInfo tells the caller whether an earlier attempt may have acted.
type attemptInfo struct {
	mayHaveActed bool
}

// do runs c with retries and decodes the answer into c.out.
func (cl *Client) do(ctx context.Context, c call) (attemptInfo, error) {
	var info attemptInfo
	var payload []byte
	if c.body != nil {
		var err error
		if payload, err = json.Marshal(c.body); err != nil {
			return info, fmt.Errorf("client: encode %s %s: %w", c.method, c.path, err)
		}
	}
	u := *cl.base
	u.Path = cl.base.Path + c.path
	if len(c.query) > 0 {
		u.RawQuery = c.query.Encode()
	}
	target := u.String()
	for attempt := 0; ; attempt++ {
		resp, sent, err := cl.send(ctx, c.method, target, payload, c.idempotencyKey)
		var retryAfter time.Duration
		if err == nil {
			if c.idempotencyKey != "" && resp.Header.Get(IdempotencyKeyHeader) == c.idempotencyKey {
				cl.keysHonoured.Store(true)
			}
			if resp.StatusCode >= 200 && resp.StatusCode < 300 {
				err = decode(resp, c.out)
				if err != nil {
					err = fmt.Errorf("client: %s %s: %w", c.method, c.path, err)
				}
				return info, err
			}
			err = readAPIError(resp, c.method, c.path, c.notFound)
			retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"))
		}
		mode := c.mode
		if c.idempotencyKey != "" && cl.keysHonoured.Load() {
			mode = retrySafe
		}
		if !cl.retryable(mode, err, sent) || attempt >= cl.maxRetries || ctx.Err() != nil {
			if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
				err = fmt.Errorf("%w (%w)", err, ctxErr)
			}
			return info, err
		}
		wait := cl.backoffFor(attempt)
		if retryAfter > wait {
			wait = min(retryAfter, MaxBackoff)
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			// No time left to wait and try again: fail now with the
			// real error rather than a deadline error later.
			return info, err
		}
		if sent && !isStatus(err, http.StatusTooManyRequests) {
			// The attempt we are about to repeat may have done its work.
			info.mayHaveActed = true
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return info, fmt.Errorf("%w (%w)", err, ctx.Err())
		case <-t.C:
		}
	}
}

// send runs one attempt. sent reports whether the request may have reached
// the server: false only when no byte of it was written.
func (cl *Client) send(ctx context.Context, method, target string, payload []byte, idempotencyKey string) (*http.Response, bool, error) {
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	// The trace callbacks run on the transport's goroutines, which may
	// outlive Do's return on a failure: hence the atomic.
	var wrote atomic.Bool
	trace := &httptrace.ClientTrace{
		WroteHeaderField: func(string, []string) { wrote.Store(true) },
		WroteHeaders:     func() { wrote.Store(true) },
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), method, target, body)
	if err != nil {
		return nil, false, fmt.Errorf("client: build request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key := cl.keyFor(ctx); key != "" {
		req.Header.Set(APIKeyHeader, key)
	}
	if cl.userAgent != "" {
		req.Header.Set("User-Agent", cl.userAgent)
	}
	if idempotencyKey != "" {
		req.Header.Set(IdempotencyKeyHeader, idempotencyKey)
	}
	resp, err := cl.http.Do(req)
	if err != nil {
		sent := wrote.Load() && !isDialError(err)
		return nil, sent, &TransportError{Method: method, Err: err, Sent: sent}
	}
	return resp, true, nil
}

// TransportError is a request that got no HTTP answer: the connection
// failed, timed out or was cut.
type TransportError struct {
	Method string
	// Sent is false when the request certainly never reached the server.
	Sent bool
	Err  error
}

// Error implements error. The underlying *url.Error already names the URL
// without its password.
func (e *TransportError) Error() string { return "client: " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *TransportError) Unwrap() error { return e.Err }

// isDialError reports whether err happened before a connection existed.
func isDialError(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// retryable decides whether err may be retried under mode.
func (cl *Client) retryable(mode retryMode, err error, sent bool) bool {
	var te *TransportError
	if errors.As(err, &te) {
		// A cancelled or expired ctx is caught by the caller; a deadline
		// error with a live ctx is the http.Client's own Timeout, which is
		// as transient as any other cut connection.
		var certErr *tls.CertificateVerificationError
		if errors.As(err, &certErr) {
			return false
		}
		return mode == retrySafe || !sent
	}
	var ae *APIError
	if !errors.As(err, &ae) {
		return false
	}
	switch ae.StatusCode {
	case http.StatusTooManyRequests:
		// Rate limited: the server refused before doing anything. A
		// quota's refusal is the caller's to handle (it may last until
		// the day ends; acquisitions wait for a slot with WaitSeconds).
		return !errors.Is(err, pharox.ErrQuotaExceeded)
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		// The server (or a proxy in front) may have acted before failing.
		return mode == retrySafe
	}
	return false
}

func isStatus(err error, code int) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.StatusCode == code
}

// backoffFor returns the jittered wait before retry number attempt+1:
// uniformly in [d/2, d] with d = base * 2^attempt, capped at MaxBackoff.
func (cl *Client) backoffFor(attempt int) time.Duration {
	d := cl.backoff
	for i := 0; i < attempt && d < MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, MaxBackoff)
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d/2+1)
}

// parseRetryAfter reads a Retry-After header given in seconds.
func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return time.Until(t)
	}
	return 0
}

func decode(resp *http.Response, out any) error {
	defer resp.Body.Close()
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %d response: %w", resp.StatusCode, err)
	}
	return nil
}
