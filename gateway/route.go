package gateway

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pharox/pharox"
)

// Route is what one inbound request asks for: the pool, filters and sticky
// session, parsed from the proxy-auth user name (see [ParseRoute]).
type Route struct {
	// Pool is the pool to lease from; empty means the gateway's default.
	Pool string
	// Country, City and Source filter the pool's proxies.
	Country string
	City    string
	Source  string
	// Session is the sticky session key; SessionTTL how long it lives
	// (zero: the Manager's default).
	Session    string
	SessionTTL time.Duration
}

// errRoute marks a user name that does not follow the routing grammar.
var errRoute = errors.New("bad routing parameters")

// maxRouteLength bounds the user name the gateway parses.
const maxRouteLength = 512

// ParseRoute parses routing parameters from a proxy-auth user name:
// key-value pairs joined by '-', such as
//
//	pool-latam-country-ar-city-buenos_aires-session-abc123-ttl-600
//
// Keys are pool, country, city, source, session and ttl (session lifetime
// in whole seconds; it needs a session). Values may hold letters, digits,
// '_' and '.', never '-'; in a city '_' stands for a space. Each key may
// appear once. When prefix is not empty the user name must start with it,
// as "<prefix>" alone or "<prefix>-key-value...": that is the gateway's
// inbound user. An empty user name (or the bare prefix) routes to the
// default pool without filters. Unknown keys are an error, never ignored,
// so a typo does not silently widen the choice of proxies.
func ParseRoute(user, prefix string) (Route, error) {
	var r Route
	if len(user) > maxRouteLength {
		return r, fmt.Errorf("%w: user name longer than %d bytes", errRoute, maxRouteLength)
	}
	rest := user
	if prefix != "" {
		switch {
		case user == prefix:
			return r, nil
		case strings.HasPrefix(user, prefix+"-"):
			rest = user[len(prefix)+1:]
		default:
			return r, fmt.Errorf("%w: user name must be %q or start with %q", errRoute, prefix, prefix+"-")
		}
	}
	if rest == "" {
		return r, nil
	}
	parts := strings.Split(rest, "-")
	if len(parts)%2 != 0 {
		return r, fmt.Errorf("%w: %q is not key-value pairs joined by '-' (key %q has no value)", errRoute, rest, parts[len(parts)-1])
	}
	seen := make(map[string]bool, len(parts)/2)
	var ttl string
	for i := 0; i < len(parts); i += 2 {
		key, val := strings.ToLower(parts[i]), parts[i+1]
		if seen[key] {
			return r, fmt.Errorf("%w: key %q given twice", errRoute, key)
		}
		seen[key] = true
		if val == "" {
			return r, fmt.Errorf("%w: key %q has an empty value", errRoute, key)
		}
		if !validValue(val) {
			return r, fmt.Errorf("%w: value of %q may hold only letters, digits, '_' and '.'", errRoute, key)
		}
		switch key {
		case "pool":
			r.Pool = val
		case "country":
			r.Country = strings.ToUpper(val)
		case "city":
			r.City = strings.ReplaceAll(val, "_", " ")
		case "source":
			r.Source = val
		case "session":
			r.Session = val
		case "ttl":
			ttl = val
		default:
			return r, fmt.Errorf("%w: unknown key %q (want pool, country, city, source, session or ttl)", errRoute, key)
		}
	}
	if ttl != "" {
		if r.Session == "" {
			return r, fmt.Errorf("%w: ttl needs a session", errRoute)
		}
		secs, err := strconv.Atoi(ttl)
		if err != nil || secs <= 0 || secs > int(pharox.MaxLeaseDuration/time.Second) {
			return r, fmt.Errorf("%w: ttl %q must be whole seconds between 1 and %d", errRoute, ttl, int(pharox.MaxLeaseDuration/time.Second))
		}
		r.SessionTTL = time.Duration(secs) * time.Second
	}
	return r, nil
}

func validValue(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// filters returns the route's filters, or nil when it has none.
func (r *Route) filters() *pharox.Filters {
	if r.Country == "" && r.City == "" && r.Source == "" {
		return nil
	}
	return &pharox.Filters{Country: r.Country, City: r.City, Source: r.Source}
}
