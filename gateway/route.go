package gateway

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// Route is what one inbound request asks for: the pool, filters and sticky
// session, parsed from the proxy-auth user name (see [ParseRoute]).
type Route struct {
	// Pool is the pool to lease from by name; PoolID by id. Both empty
	// means the gateway's default pool; at most one is set.
	Pool   string
	PoolID uuid.UUID
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

// maxRouteLength bounds the user name the gateway parses: room for a
// 200-byte pool name with every byte escaped, and the other keys.
const maxRouteLength = 2048

// ParseRoute parses routing parameters from a proxy-auth user name:
// key-value pairs joined by '-', such as
//
//	pool-latam-country-ar-city-buenos_aires-session-abc123-ttl-600
//
// Keys are pool (a pool's name), poolid (a pool's id, written with or
// without its dashes), country, city, source, session and ttl (session
// lifetime in whole seconds; it needs a session). Keys are
// case-insensitive; each may appear once, and pool and poolid exclude
// each other.
//
// A value may hold any byte but '-' (the separator), '~' (the escape) and
// control characters; ~XX stands for the byte with hex value XX, so every
// name a pool may have is addressable: "pool-latam~2Dresidential" routes
// to pool "latam-residential", "pool-z~C3~BCrich" and "pool-zürich" both
// to "zürich". '~' is the escape rather than '%' because proxy URLs,
// curl's -U and most clients percent-decode the user name before they
// send it, while '~' passes every layer unchanged. In a city '_' stands
// for a space (~5F for an underscore). [FormatRoute] writes a user name
// in this form.
//
// When prefix is not empty the user name must start with it, as
// "<prefix>" alone or "<prefix>-key-value...": that is the gateway's
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
	seen := make(map[string]bool, len(parts)/2)
	var ttl string
	for i := 0; i < len(parts); i += 2 {
		if i+1 == len(parts) {
			return r, fmt.Errorf("%w: %q is not key-value pairs joined by '-' (key %q has no value; write '-' inside a value as ~2D)",
				errRoute, rest, parts[i])
		}
		key, raw := strings.ToLower(parts[i]), parts[i+1]
		if key == "poolid" && i+5 < len(parts) {
			// A pool id may keep its own dashes: 8-4-4-4-12 hex digits.
			if id := strings.Join(parts[i+1:i+6], "-"); len(id) == 36 {
				if _, err := uuid.Parse(id); err == nil {
					raw = id
					i += 4
				}
			}
		}
		if seen[key] {
			return r, fmt.Errorf("%w: key %q given twice", errRoute, key)
		}
		seen[key] = true
		if raw == "" {
			return r, fmt.Errorf("%w: key %q has an empty value", errRoute, key)
		}
		if key == "city" {
			// '_' is a space; an escaped ~5F stays an underscore.
			raw = strings.ReplaceAll(raw, "_", " ")
		}
		val, err := unescapeValue(raw)
		if err != nil {
			return r, fmt.Errorf("%w: value of %q: %v", errRoute, key, err)
		}
		switch key {
		case "pool":
			r.Pool = val
		case "poolid":
			id, err := uuid.Parse(val)
			if err != nil {
				return r, fmt.Errorf("%w: poolid %q is not a pool id (a UUID)", errRoute, val)
			}
			r.PoolID = id
		case "country":
			r.Country = strings.ToUpper(val)
		case "city":
			r.City = val
		case "source":
			r.Source = val
		case "session":
			r.Session = val
		case "ttl":
			ttl = val
		default:
			return r, fmt.Errorf("%w: unknown key %q (want pool, poolid, country, city, source, session or ttl)", errRoute, key)
		}
	}
	if seen["pool"] && seen["poolid"] {
		return r, fmt.Errorf("%w: give pool or poolid, not both", errRoute)
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

// unescapeValue decodes a value's ~XX escapes. Control characters are
// refused, written plainly or escaped: no pool name holds them (see
// pharox.ValidateName) and they have no place in a filter.
func unescapeValue(s string) (string, error) {
	if !strings.Contains(s, "~") {
		if hasControl(s) {
			return "", errors.New("control characters are not allowed")
		}
		return s, nil
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '~' {
			b = append(b, c)
			continue
		}
		if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			return "", errors.New("'~' must start an escape like ~2D (write a '~' itself as ~7E)")
		}
		b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
		i += 2
	}
	if hasControl(string(b)) {
		return "", errors.New("control characters are not allowed")
	}
	return string(b), nil
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// FormatRoute writes r as a user name [ParseRoute] reads back, starting
// with prefix (the gateway's inbound user) when it is not empty. Values
// keep letters, digits, '_' and '.' as they are and escape every other
// byte as ~XX, so the result is plain ASCII that needs no escaping in a
// proxy URL either.
func FormatRoute(r Route, prefix string) string {
	var b strings.Builder
	b.WriteString(prefix)
	add := func(key, val string) {
		if val == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte('-')
		}
		b.WriteString(key)
		b.WriteByte('-')
		for i := 0; i < len(val); i++ {
			c := val[i]
			switch {
			case key == "city" && c == ' ':
				b.WriteByte('_')
			case key == "city" && c == '_':
				b.WriteString("~5F")
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.':
				b.WriteByte(c)
			default:
				fmt.Fprintf(&b, "~%02X", c)
			}
		}
	}
	add("pool", r.Pool)
	if r.PoolID != uuid.Nil {
		// The id's dashes separate nothing (see ParseRoute); escaped, they
		// would make it unreadable.
		if b.Len() > 0 {
			b.WriteByte('-')
		}
		b.WriteString("poolid-" + r.PoolID.String())
	}
	add("country", r.Country)
	add("city", r.City)
	add("source", r.Source)
	add("session", r.Session)
	if r.SessionTTL > 0 {
		add("ttl", strconv.Itoa(int(r.SessionTTL/time.Second)))
	}
	return b.String()
}

// filters returns the route's filters, or nil when it has none.
func (r *Route) filters() *pharox.Filters {
	if r.Country == "" && r.City == "" && r.Source == "" {
		return nil
	}
	return &pharox.Filters{Country: r.Country, City: r.City, Source: r.Source}
}
