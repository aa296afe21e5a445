package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

// Errors for answers that no pharox sentinel describes.
var (
	// ErrUnauthorized means the server wants a valid API key (401).
	ErrUnauthorized = errors.New("client: unauthorized: missing or unknown API key")
	// ErrForbidden means the API key may not do this (403), for example a
	// consumer key on an admin route.
	ErrForbidden = errors.New("client: forbidden: the API key lacks the role for this request")
)

// APIError is an error answer of the service. It wraps the matching
// pharox sentinel when there is one, so both errors.Is(err,
// pharox.ErrPoolNotFound) and errors.As(err, &apiErr) work.
type APIError struct {
	// StatusCode is the HTTP status.
	StatusCode int
	// Detail is the server's human-readable explanation.
	Detail string
	// Method and Path name the request, without host or query.
	Method, Path string
	// sentinel is the pharox (or client) error the answer means; nil when
	// none fits.
	sentinel error
}

// Error implements error.
func (e *APIError) Error() string {
	detail := e.Detail
	if detail == "" {
		detail = http.StatusText(e.StatusCode)
	}
	return fmt.Sprintf("pharox server: %s %s: %d: %s", e.Method, e.Path, e.StatusCode, detail)
}

// Unwrap returns the sentinel the answer maps to, if any.
func (e *APIError) Unwrap() error { return e.sentinel }

// readAPIError turns an error response into an *APIError. A 429 that
// names a quota wraps a *pharox.QuotaError, as a local Manager returns.
func readAPIError(resp *http.Response, method, path string, notFound error) error {
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &APIError{StatusCode: resp.StatusCode, Method: method, Path: path, Detail: parseDetail(raw)}
	e.sentinel = sentinelFor(e.StatusCode, e.Detail, notFound)
	if e.StatusCode == http.StatusTooManyRequests {
		var body api.Error
		if json.Unmarshal(raw, &body) == nil && body.Quota != nil {
			e.sentinel = body.Quota.Model(parseRetryAfter(resp.Header.Get("Retry-After")))
		}
	}
	return e
}

// parseDetail extracts {"detail": ...}: a string as the service sends, or
// any other JSON (FastAPI validation errors are a list) as compact text.
// A body that is not such JSON is kept as short text.
func parseDetail(raw []byte) string {
	var body struct {
		Detail json.RawMessage `json:"detail"`
	}
	if err := json.Unmarshal(raw, &body); err == nil && len(body.Detail) > 0 {
		var s string
		if json.Unmarshal(body.Detail, &s) == nil {
			return s
		}
		return truncate(string(body.Detail), 500)
	}
	return truncate(strings.TrimSpace(string(raw)), 200)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// sentinelFor maps a status and detail to the error they mean.
func sentinelFor(status int, detail string, notFound error) error {
	d := strings.ToLower(detail)
	switch status {
	case http.StatusNotFound:
		for _, m := range []struct {
			phrase string
			err    error
		}{
			{"pool not found", pharox.ErrPoolNotFound},
			{"proxy not found", pharox.ErrProxyNotFound},
			{"lease not found", pharox.ErrLeaseNotFound},
			{"consumer not found", pharox.ErrConsumerNotFound},
		} {
			if strings.Contains(d, m.phrase) {
				return m.err
			}
		}
		return notFound
	case http.StatusConflict:
		switch {
		case strings.Contains(d, "no proxy available"):
			return pharox.ErrNoProxyAvailable
		case strings.Contains(d, "already exists"):
			return pharox.ErrAlreadyExists
		case strings.Contains(d, "in use"):
			return pharox.ErrInUse
		case strings.Contains(d, "not active"):
			return pharox.ErrLeaseNotActive
		case strings.Contains(d, "revoked"):
			return pharox.ErrKeyRevoked
		}
	case http.StatusBadRequest, http.StatusUnprocessableEntity, http.StatusRequestEntityTooLarge:
		return pharox.ErrInvalidArgument
	case http.StatusNotImplemented:
		return pharox.ErrUnsupported
	case http.StatusServiceUnavailable:
		// The service's store is down for now; a gateway or proxy in
		// front answering 503 means the same to the caller.
		return pharox.ErrUnavailable
	case http.StatusUnauthorized:
		return ErrUnauthorized
	case http.StatusForbidden:
		return ErrForbidden
	}
	return nil
}
