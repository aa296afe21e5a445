package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/outage"
)

// noProxyDetail is the exact detail the Python clients match on a miss.
const noProxyDetail = "No proxy available"

// RetryAfterSeconds is the Retry-After of every 503: how long a client
// should wait before repeating a request the store could not serve. Most
// outages (a restart, a failover, a dropped connection) last seconds.
const RetryAfterSeconds = 1

// httpError is an error the handler has already classified: bad input it
// detected itself, before reaching the Manager or the store.
type httpError struct {
	status int
	detail string
}

func (e *httpError) Error() string { return e.detail }

// badRequest, unprocessable and friends build classified errors.
func badRequest(format string, args ...any) error {
	return &httpError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

func unprocessable(format string, args ...any) error {
	return &httpError{http.StatusUnprocessableEntity, fmt.Sprintf(format, args...)}
}

// detailedError gives an error that a sentinel classifies the sentence the
// client reads, written where the request's own names are known (the pool
// name as given, the proxy's address). The status still follows the
// sentinel; the wrapped error, with the stores' context, is for logs.
type detailedError struct {
	err    error
	detail string
}

func (e *detailedError) Error() string { return e.detail + " (" + e.err.Error() + ")" }
func (e *detailedError) Unwrap() error { return e.err }

// withDetail wraps err with the detail the client gets for it.
func withDetail(err error, format string, args ...any) error {
	return &detailedError{err: err, detail: fmt.Sprintf(format, args...)}
}

// sentinelDetails are the sentences for sentinel errors no handler gave a
// detail of their own. They keep the phrases the Go client maps back to
// the sentinels ("already exists", "in use", "not active").
var sentinelDetails = []struct {
	err    error
	detail string
}{
	{pharox.ErrAlreadyExists, "That name or address already exists"},
	{pharox.ErrInUse, "Still in use by active leases: release them first"},
	{pharox.ErrLeaseNotActive, "Lease is not active: it was released or has expired"},
	{pharox.ErrUnsupported, "This server's store does not support that request"},
}

// invalidDetail turns an ErrInvalidArgument chain into its innermost
// message, the one that says what was wrong ("pharox: invalid argument:
// proxy: unknown protocol ..." becomes "Unknown protocol ..."): the
// layers above it (store, package and model names) mean nothing to the
// client.
func invalidDetail(err error) string {
	msg := err.Error()
	const marker = "invalid argument: "
	if i := strings.LastIndex(msg, marker); i >= 0 {
		msg = msg[i+len(marker):]
	}
	for {
		head, rest, ok := strings.Cut(msg, ": ")
		if !ok || !layerNames[head] {
			break
		}
		msg = rest
	}
	if msg == "" || msg == strings.TrimSuffix(marker, ": ") {
		return "Invalid argument"
	}
	return upperFirst(msg)
}

// layerNames are the prefixes packages and models put before a message.
var layerNames = map[string]bool{
	"pharox": true, "sqlite": true, "memory": true, "postgres": true, "redis": true,
	"proxy": true, "pool": true, "lease": true, "consumer": true, "manager": true,
	"quota": true,
}

func lowerFirst(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	if r == utf8.RuneError {
		return s
	}
	return string(unicode.ToLower(r)) + s[n:]
}

// upperFirst starts a sentence with a capital, unless it starts with a
// wire field name (consumer_id, wait_seconds): that is spelled as the
// client spells it.
func upperFirst(s string) string {
	if word, _, _ := strings.Cut(s, " "); strings.Contains(word, "_") {
		return s
	}
	r, n := utf8.DecodeRuneInString(s)
	if r == utf8.RuneError {
		return s
	}
	return string(unicode.ToUpper(r)) + s[n:]
}

// errorStatus is the one place that maps errors to status codes and
// client-facing details. internal is true when the error is not the
// client's fault: the caller logs it and the client gets a generic detail.
func errorStatus(err error) (status int, detail string, internal bool) {
	var he *httpError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &he):
		return he.status, he.detail, false
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, fmt.Sprintf("Request body larger than %d bytes", mbe.Limit), false
	case errors.Is(err, pharox.ErrNoProxyAvailable):
		// A wait that ran out wraps both the miss and the deadline: it is
		// still a miss for the client.
		return http.StatusConflict, noProxyDetail, false
	case errors.Is(err, pharox.ErrQuotaExceeded):
		// Checked before the context errors: a wait that ran out while a
		// quota still refused joins the refusal and the deadline.
		if qe, ok := errors.AsType[*pharox.QuotaError](err); ok {
			return http.StatusTooManyRequests, quotaDetail(qe), false
		}
		return http.StatusTooManyRequests, "Over a quota", false
	case errors.Is(err, pharox.ErrQuotaNotFound):
		return http.StatusNotFound, sentinelDetailOr(err, "Quota not found"), false
	case errors.Is(err, pharox.ErrPoolNotFound):
		return http.StatusNotFound, "Pool not found", false
	case errors.Is(err, pharox.ErrProxyNotFound):
		return http.StatusNotFound, "Proxy not found", false
	case errors.Is(err, pharox.ErrLeaseNotFound):
		return http.StatusNotFound, "Lease not found", false
	case errors.Is(err, pharox.ErrConsumerNotFound):
		return http.StatusNotFound, sentinelDetailOr(err, "Consumer not found"), false
	case errors.Is(err, pharox.ErrKeyNotFound):
		return http.StatusNotFound, sentinelDetailOr(err, "API key not found"), false
	case errors.Is(err, pharox.ErrKeyRevoked):
		return http.StatusConflict, sentinelDetailOr(err, "API key is revoked"), false
	case errors.Is(err, pharox.ErrAlreadyExists),
		errors.Is(err, pharox.ErrInUse),
		errors.Is(err, pharox.ErrLeaseNotActive):
		return http.StatusConflict, sentinelDetail(err), false
	case errors.Is(err, pharox.ErrInvalidArgument):
		var de *detailedError
		if errors.As(err, &de) {
			return http.StatusUnprocessableEntity, de.detail, false
		}
		return http.StatusUnprocessableEntity, invalidDetail(err), false
	case errors.Is(err, pharox.ErrUnsupported):
		return http.StatusNotImplemented, sentinelDetail(err), false
	case errors.Is(err, context.Canceled):
		// The client went away; nobody reads this answer.
		return 499, "Request cancelled", false
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, "Storage did not answer in time", true
	}
	if reason := outage.Reason(err); reason != "" {
		return http.StatusServiceUnavailable, "Storage unavailable: " + reason + "; retry later", true
	}
	return http.StatusInternalServerError, "Internal server error", true
}

// sentinelDetail is the handler's detail for err, or the sentence for its
// sentinel.
func sentinelDetail(err error) string {
	var de *detailedError
	if errors.As(err, &de) {
		return de.detail
	}
	for _, sd := range sentinelDetails {
		if errors.Is(err, sd.err) {
			return sd.detail
		}
	}
	return "Conflict"
}

// sentinelDetailOr is the handler's detail for err, or else fallback.
func sentinelDetailOr(err error, fallback string) string {
	var de *detailedError
	if errors.As(err, &de) {
		return de.detail
	}
	return fallback
}

// Error returns an error that the server answers with this status and
// detail, for injected functions such as Options.Sweep that need a status
// the root package's sentinels do not express.
func Error(status int, detail string) error { return &httpError{status, detail} }
