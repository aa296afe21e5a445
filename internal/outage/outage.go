package outage

import (
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/pharox/pharox"
)

// Is reports whether err means the store is unavailable for now, so that
// the same request may succeed later. It is false for nil.
func Is(err error) bool { return Reason(err) != "" }

// Reason returns a short fixed phrase saying why the store is unavailable,
// fit for a client (it never contains an address or a password), or ""
// when err is not an outage.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	if errors.Is(err, pharox.ErrNoProxyAvailable) {
		// A wait for a free proxy that ran out of time wraps the
		// context's deadline too, which reads as a timeout below; it is
		// a miss, not a store that is down.
		return ""
	}
	if r := sqlState(err); r != "" {
		return r
	}
	if r := redisReply(err); r != "" {
		return r
	}
	if r := sqliteCode(err); r != "" {
		return r
	}
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return "the store is unreachable"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed):
		return "the connection to the store was lost"
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, syscall.ETIMEDOUT):
		return "the store did not answer in time"
	case errors.As(err, &ne) && !isFileError(ne):
		return "the connection to the store failed"
	case errors.Is(err, pharox.ErrUnavailable):
		return "the store is unavailable"
	}
	return driverMessage(err)
}

// isFileError reports whether a net.Error is a bare errno, as file system
// errors carry (*fs.PathError wraps one): syscall.Errno has the net.Error
// methods, so a missing directory or a denied permission would otherwise
// read as a store that is down for now. Network errors reach here as
// *net.OpError, found first, and the errnos of a lost connection are
// matched above.
func isFileError(ne net.Error) bool {
	_, ok := ne.(syscall.Errno)
	return ok
}

// sqlState classifies PostgreSQL errors (pgconn.PgError) by SQLSTATE.
func sqlState(err error) string {
	var pe interface{ SQLState() string }
	if !errors.As(err, &pe) {
		return ""
	}
	code := pe.SQLState()
	switch {
	case strings.HasPrefix(code, "08"): // connection exception
		return "the connection to the store was lost"
	case code == "57P01", code == "57P02": // admin_shutdown, crash_shutdown
		return "the store is restarting"
	case code == "57P03": // cannot_connect_now: starting up, shutting down, recovering
		return "the store is starting up or shutting down"
	case code == "57P05": // idle_session_timeout
		return "the connection to the store was lost"
	case code == "53300": // too_many_connections
		return "the store has too many connections"
	case strings.HasPrefix(code, "53"): // insufficient resources
		return "the store is out of resources"
	case code == "25006": // read_only_sql_transaction: a standby, or a primary being demoted
		return "the store is read-only (failing over)"
	case code == "55P03": // lock_not_available: lock_timeout
		return "the store is busy (lock timeout)"
	case code == "57014": // query_canceled: statement_timeout or a cancel request
		return "the store is busy (statement timeout)"
	case code == "40001", code == "40P01": // serialization_failure, deadlock_detected
		return "the store is busy (conflicting transactions)"
	}
	return ""
}

// redisReply classifies Redis error replies by their prefix.
func redisReply(err error) string {
	var re interface{ RedisError() }
	if !errors.As(err, &re) {
		return ""
	}
	msg := err.Error()
	// The reply may be wrapped: find the Redis error's own text.
	if e, ok := re.(error); ok {
		msg = e.Error()
	}
	msg = strings.TrimPrefix(msg, "-")
	for _, p := range []struct{ prefix, reason string }{
		{"LOADING", "the store is loading its data after a restart"},
		{"READONLY", "the store is read-only (failing over)"},
		{"MASTERDOWN", "the store's primary is down (failing over)"},
		{"CLUSTERDOWN", "the store's cluster is down"},
		{"TRYAGAIN", "the store is busy (resharding)"},
		{"NOREPLICAS", "the store has too few replicas"},
		{"BUSY", "the store is busy (a script is running)"},
		{"MISCONF", "the store cannot persist writes"},
		{"OOM", "the store is out of memory"},
		{"ERR max number of clients reached", "the store has too many connections"},
	} {
		if strings.HasPrefix(msg, p.prefix) {
			return p.reason
		}
	}
	return ""
}

// sqliteCode classifies SQLite errors (modernc.org/sqlite's *Error) by
// primary result code.
func sqliteCode(err error) string {
	var ce interface{ Code() int }
	if !errors.As(err, &ce) {
		return ""
	}
	switch ce.Code() & 0xff {
	case 5: // SQLITE_BUSY, after its busy timeout
		return "the store is busy (database locked)"
	case 6: // SQLITE_LOCKED
		return "the store is busy (table locked)"
	}
	return ""
}

// driverMessage recognises the drivers' plain errors that carry no type:
// pool timeouts and pools closed under a request.
func driverMessage(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "redis: connection pool timeout"),
		strings.Contains(msg, "redis: connection pool exhausted"):
		return "the store has no free connection"
	case strings.Contains(msg, "redis: client is closed"),
		strings.HasSuffix(msg, "closed pool"), // pgxpool (puddle.ErrClosedPool)
		strings.Contains(msg, "conn closed"):  // pgconn: the connection died under the request
		return "the connection to the store was lost"
	}
	return ""
}
