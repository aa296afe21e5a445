package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

// recorder captures what the access log and metrics need.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	role   Role
	key    string // the key's name, never the key
}

func (w *recorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// accessLog wraps the mux: it recovers panics, counts requests and logs one
// line per request with the route pattern, never the query string, headers
// or body, which may hold keys and passwords.
func (s *Server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("pharox server: panic in handler", "method", r.Method, "route", routeOf(r),
					"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				if rec.status == 0 {
					writeJSON(rec, http.StatusInternalServerError, api.Error{Detail: "Internal server error"})
				}
			}
			if rec.status == 0 {
				rec.status = http.StatusOK
			}
			elapsed := time.Since(start)
			route := routeOf(r)
			s.metrics.observe(r.Method, route, rec.status, elapsed)
			if s.opts.AccessLog {
				s.log.LogAttrs(r.Context(), slog.LevelInfo, "http request",
					slog.String("method", r.Method),
					slog.String("route", route),
					slog.Int("status", rec.status),
					slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
					slog.Int64("bytes", rec.bytes),
					slog.String("role", rec.role.String()),
					slog.String("key", rec.key),
					slog.String("remote", r.RemoteAddr),
				)
			}
		}()
		next.ServeHTTP(rec, r)
	})
}

// routeOf is the matched pattern without its method, or "unmatched":
// bounded label values for metrics and logs.
func routeOf(r *http.Request) string {
	p := r.Pattern
	if _, path, ok := strings.Cut(p, " "); ok {
		p = path
	}
	if p == "" || p == "/" {
		return "unmatched"
	}
	return strings.TrimSuffix(p, "{$}")
}

// register installs one route of the table on the mux.
func (s *Server) register(rt *route) {
	need := rt.Role
	if rt.ID == "metrics" && s.opts.MetricsPublic {
		need = RolePublic
	}
	limit := s.opts.MaxBodyBytes
	if rt.Import {
		limit = s.opts.MaxImportBytes
	}
	h := func(w http.ResponseWriter, r *http.Request) {
		c, err := s.authorize(r, rt, need)
		if rec, ok := w.(*recorder); ok && c != nil {
			rec.role, rec.key = c.role, c.id.Name
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		r = withCaller(r, c)
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, limit)
		}
		if rt.Long {
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(longRouteTimeout))
		}
		echoIdempotencyKey(w, r, rt)
		if rt.raw != nil {
			rt.raw(s, w, r)
			return
		}
		body, err := rt.api(s, r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, rt.Status, body)
	}
	s.mux.HandleFunc(rt.pattern(), h)
	// Like FastAPI, answer a collection path without its trailing slash
	// with a redirect that keeps the method (307).
	if trimmed, ok := strings.CutSuffix(rt.Path, "/"); ok {
		s.mux.HandleFunc(rt.Method+" "+trimmed, func(w http.ResponseWriter, r *http.Request) {
			u := *r.URL
			u.Path += "/"
			u.RawPath = ""
			http.Redirect(w, r, u.RequestURI(), http.StatusTemporaryRedirect)
		})
	}
}

// methods that may be registered; used to tell 405 from 404.
var methods = []string{"GET", "POST", "PUT", "PATCH", "DELETE"}

// noRoute answers requests no route matched with the JSON error FastAPI
// would give: 405 with Allow when the path exists under another method,
// else 404.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range methods {
		if m == r.Method {
			continue
		}
		probe := &http.Request{Method: m, URL: r.URL, Host: r.Host, Header: http.Header{}}
		if _, p := s.mux.Handler(probe); p != "" && p != "/" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeJSON(w, http.StatusMethodNotAllowed, api.Error{Detail: "Method Not Allowed"})
		return
	}
	writeJSON(w, http.StatusNotFound, api.Error{Detail: "Not Found"})
}

// bufPool recycles response buffers: every answer is encoded whole before
// it is written, so a failed encoding can still become a clean 500.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// writeJSON writes v as the JSON body; nil writes no body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	if v == nil {
		w.WriteHeader(status)
		return
	}
	buf := bufPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 64<<10 {
			buf.Reset()
			bufPool.Put(buf)
		}
	}()
	buf.Reset()
	h := w.Header()
	h["Content-Type"] = jsonContentType
	enc := json.NewEncoder(buf)
	// Details quote what the user sent (a pool named "R&D") and state
	// limits (">= 0"): curl should show them as written, not as \u0026.
	// The API serves application/json with nosniff, never HTML.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only a bug can get here: every body is a plain wire type.
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, `{"detail":"Internal server error"}`)
		return
	}
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

var jsonContentType = []string{"application/json"}

// writeError maps err to its status and detail and writes it. Errors that
// are not the client's fault are logged, and the client gets a generic
// detail.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, detail, internal := errorStatus(err)
	switch {
	case status == http.StatusServiceUnavailable:
		// An outage fails every request at once: a warning each, and
		// the client is told when to try again.
		s.log.Warn("pharox server: storage unavailable", "method", r.Method, "route", routeOf(r), "err", err)
		w.Header().Set("Retry-After", strconv.Itoa(RetryAfterSeconds))
	case internal:
		s.log.Error("pharox server: request failed", "method", r.Method, "route", routeOf(r), "err", err)
	}
	body := api.Error{Detail: detail}
	if status == http.StatusTooManyRequests {
		if qe, ok := errors.AsType[*pharox.QuotaError](err); ok {
			// The detail says it in a sentence; the header and the quota
			// field say it to programs.
			refusal := api.FromQuotaError(qe)
			w.Header().Set("Retry-After", strconv.FormatInt(refusal.RetryAfterSeconds, 10))
			body.Quota = &refusal
		}
	}
	writeJSON(w, status, body)
}

// decodeBody decodes the JSON body into dst. Unknown fields are ignored,
// as FastAPI does. An empty body is an error unless optional.
func decodeBody(r *http.Request, dst any, optional bool) error {
	b, err := readBody(r)
	if err != nil {
		return err
	}
	return decodeBytes(b, dst, optional)
}

// readBody reads the whole body, within the route's size limit.
func readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, err
		}
		return nil, badRequest("Could not read the request body")
	}
	return b, nil
}

func decodeBytes(b []byte, dst any, optional bool) error {
	if len(bytes.TrimSpace(b)) == 0 {
		if optional {
			return nil
		}
		return unprocessable("Request body is required (JSON object)")
	}
	if err := json.Unmarshal(b, dst); err != nil {
		return jsonError(err)
	}
	return nil
}

// jsonError turns a decoding error into a client error with a clear detail.
func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return err
	case errors.As(err, &syn):
		return badRequest("Malformed JSON at byte %d: %s", syn.Offset, syn.Error())
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return unprocessable("Request body must be a JSON %s, got %s", strings.TrimPrefix(strings.TrimPrefix(typeName(typ.Type.Kind().String()), "an "), "a "), typ.Value)
		}
		return unprocessable("Field %q must be %s, got %s", field, typeName(typ.Type.Kind().String()), typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("Malformed JSON: unexpected end of input")
	}
	// Errors from UnmarshalJSON methods (timestamps, UUIDs) and the like.
	return unprocessable("Invalid request body: %s", err.Error())
}

func typeName(kind string) string {
	switch kind {
	case "struct", "map":
		return "an object"
	case "slice", "array":
		return "an array"
	case "float64", "float32", "int", "int64", "int32", "uint", "uint64":
		return "a number"
	case "bool":
		return "a boolean"
	case "string":
		return "a string"
	}
	return "a " + kind
}
