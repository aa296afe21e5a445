package gateway

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseRoute(t *testing.T) {
	ok := []struct {
		user, prefix string
		want         Route
	}{
		{"", "", Route{}},
		{"pool-latam-country-ar-session-abc123-ttl-600", "", Route{Pool: "latam", Country: "AR", Session: "abc123", SessionTTL: 600 * time.Second}},
		{"city-buenos_aires-source-list.v2", "", Route{City: "buenos aires", Source: "list.v2"}},
		{"POOL-main-Country-de", "", Route{Pool: "main", Country: "DE"}},
		{"acme", "acme", Route{}},
		{"acme-pool-eu-session-x", "acme", Route{Pool: "eu", Session: "x"}},
		{"session-s1", "", Route{Session: "s1"}},
	}
	for _, tc := range ok {
		got, err := ParseRoute(tc.user, tc.prefix)
		if err != nil {
			t.Errorf("ParseRoute(%q, %q): %v", tc.user, tc.prefix, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseRoute(%q, %q) = %+v, want %+v", tc.user, tc.prefix, got, tc.want)
		}
	}
	bad := []struct{ user, prefix, msg string }{
		{"pool", "", "has no value"},
		{"pool-main-colour-red", "", `unknown key "colour"`},
		{"pool-a-pool-b", "", "given twice"},
		{"pool--country-ar", "", "empty value"},
		{"pool-ma in", "", "letters, digits"},
		{"ttl-60", "", "ttl needs a session"},
		{"session-x-ttl-0", "", "whole seconds"},
		{"session-x-ttl-1.5", "", "whole seconds"},
		{"session-x-ttl-99999999999", "", "whole seconds"},
		{"other-pool-a", "acme", "must be"},
		{"acmepool-a", "acme", "must be"},
		{strings.Repeat("a", 600), "", "longer than"},
	}
	for _, tc := range bad {
		_, err := ParseRoute(tc.user, tc.prefix)
		if err == nil || !errors.Is(err, errRoute) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("ParseRoute(%q, %q) = %v, want an error mentioning %q", tc.user, tc.prefix, err, tc.msg)
		}
	}
}

func TestNewValidatesConfig(t *testing.T) {
	var l Leaser = NewLocalLeaser(nil)
	for name, cfg := range map[string]Config{
		"no leaser":      {},
		"bad strategy":   {Leaser: l, Strategy: "fastest"},
		"bad ban status": {Leaser: l, BanStatuses: []int{42}},
		"dash in user":   {Leaser: l, User: "a-b"},
		"short lease":    {Leaser: l, LeaseDuration: time.Millisecond},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
}

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
