package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"

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

func notFound(detail string) error { return &httpError{http.StatusNotFound, detail} }

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
	case errors.Is(err, pharox.ErrPoolNotFound):
		return http.StatusNotFound, "Pool not found", false
	case errors.Is(err, pharox.ErrProxyNotFound):
		return http.StatusNotFound, "Proxy not found", false
	case errors.Is(err, pharox.ErrLeaseNotFound):
		return http.StatusNotFound, "Lease not found", false
	case errors.Is(err, pharox.ErrConsumerNotFound):
		return http.StatusNotFound, "Consumer not found", false
	case errors.Is(err, pharox.ErrAlreadyExists),
		errors.Is(err, pharox.ErrInUse),
		errors.Is(err, pharox.ErrLeaseNotActive):
		return http.StatusConflict, err.Error(), false
	case errors.Is(err, pharox.ErrInvalidArgument):
		return http.StatusUnprocessableEntity, err.Error(), false
	case errors.Is(err, pharox.ErrUnsupported):
		return http.StatusNotImplemented, err.Error(), false
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

// Error returns an error that the server answers with this status and
// detail, for injected functions such as Options.Sweep that need a status
// the root package's sentinels do not express.
func Error(status int, detail string) error { return &httpError{status, detail} }
