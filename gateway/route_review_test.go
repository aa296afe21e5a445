package gateway

import (
	"errors"
	"testing"
)

// A ttl whose nanoseconds overflow int64 must be rejected, not wrap
// around into a short (here about 0.29 s) session lifetime.
func TestParseRouteTTLOverflow(t *testing.T) {
	for _, ttl := range []string{"18446744074", "9223372037", "99999999999999999"} {
		r, err := ParseRoute("session-abc-ttl-"+ttl, "")
		if !errors.Is(err, errRoute) {
			t.Errorf("ParseRoute(ttl %s) = SessionTTL %v, err %v; want a routing error", ttl, r.SessionTTL, err)
		}
	}
}
