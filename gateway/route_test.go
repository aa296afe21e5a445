package gateway

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
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
		{"pool-latam~2Dresidential-country-ar", "", Route{Pool: "latam-residential", Country: "AR"}},
		{"pool-z~C3~BCrich", "", Route{Pool: "zürich"}},
		{"pool-zürich", "", Route{Pool: "zürich"}},
		{"pool-my pool", "", Route{Pool: "my pool"}},
		{"pool-100%25", "", Route{Pool: "100%25"}},
		{"pool-100~7E", "", Route{Pool: "100~"}},
		{"pool-country", "", Route{Pool: "country"}},
		{"city-new_york~5Fx", "", Route{City: "new york_x"}},
		{"poolid-6ba7b810-9dad-11d1-80b4-00c04fd430c8-country-us", "", Route{PoolID: uuid.MustParse("6ba7b810-9dad-11d1-80b4-00c04fd430c8"), Country: "US"}},
		{"poolid-6ba7b8109dad11d180b400c04fd430c8", "", Route{PoolID: uuid.MustParse("6ba7b810-9dad-11d1-80b4-00c04fd430c8")}},
		{"poolid-6ba7b810~2D9dad~2D11d1~2D80b4~2D00c04fd430c8", "", Route{PoolID: uuid.MustParse("6ba7b810-9dad-11d1-80b4-00c04fd430c8")}},
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
		{"pool-ma\tin", "", "control characters"},
		{"pool-ma~0Ain", "", "control characters"},
		{"pool-100~", "", "must start an escape"},
		{"pool-a~2", "", "must start an escape"},
		{"pool-a~zz", "", "must start an escape"},
		{"pool-a-poolid-6ba7b810-9dad-11d1-80b4-00c04fd430c8", "", "not both"},
		{"poolid-main", "", "not a pool id"},
		{"poolid-6ba7b810-9dad-11d1-80b4", "", "not a pool id"},
		{"pool-latam-residential", "", "~2D"},
		{"ttl-60", "", "ttl needs a session"},
		{"session-x-ttl-0", "", "whole seconds"},
		{"session-x-ttl-1.5", "", "whole seconds"},
		{"session-x-ttl-99999999999", "", "whole seconds"},
		{"other-pool-a", "acme", "must be"},
		{"acmepool-a", "acme", "must be"},
		{strings.Repeat("a", 3000), "", "longer than"},
	}
	for _, tc := range bad {
		_, err := ParseRoute(tc.user, tc.prefix)
		if err == nil || !errors.Is(err, errRoute) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("ParseRoute(%q, %q) = %v, want an error mentioning %q", tc.user, tc.prefix, err, tc.msg)
		}
	}
}

func TestNewValidatesConfig(t *testing.T) {
	l := Leaser(NewLocalLeaser(nil))
	for name, cfg := range map[string]Config{
		"no leaser":             {},
		"bad strategy":          {Leaser: l, Strategy: "fastest"},
		"bad ban status":        {Leaser: l, BanStatuses: []int{42}},
		"dash in user":          {Leaser: l, User: "a-b", Password: "p"},
		"user without password": {Leaser: l, User: "acme"},
		"short lease":           {Leaser: l, LeaseDuration: time.Millisecond},
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

// FormatRoute writes every route ParseRoute reads back as it was, for
// values with any bytes a name may hold.
func TestFormatRouteRoundTrips(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		want := Route{Pool: randomName(rng), City: randomName(rng), Source: randomName(rng), Session: randomName(rng)}
		if rng.IntN(2) == 0 {
			want.SessionTTL = time.Duration(1+rng.IntN(3600)) * time.Second
		}
		if rng.IntN(3) == 0 {
			want.Pool, want.PoolID = "", uuid.New()
		}
		user := FormatRoute(want, "acme")
		got, err := ParseRoute(user, "acme")
		if err != nil {
			t.Fatalf("ParseRoute(FormatRoute(%+v) = %q): %v", want, user, err)
		}
		if got != want {
			t.Fatalf("FormatRoute(%+v) = %q, read back as %+v", want, user, got)
		}
	}
	if got := FormatRoute(Route{Pool: "main", Country: "US", Session: "abc"}, ""); got != "pool-main-country-US-session-abc" {
		t.Fatalf("the common case reads %q", got)
	}
}

// randomName is a name the API accepts, drawn to include what
// routing syntax stumbles on: dashes, digits, '%', ':', '_', spaces,
// non-ASCII letters and whole routing keys.
func randomName(rng *rand.Rand) string {
	pieces := []string{"-", "--", "pool", "country", "session", "ttl", "poolid", "-pool-", "main", "us", "7", "42",
		"%", "%2D", "~", "~2D", ":", "_", " ", ".", "~", "é", "ü", "日本", "Ωμέγα", "🙂", "a", "Z", "x-y", "@", "/", "+", "'", "\"\""}
	var b strings.Builder
	for n := 1 + rng.IntN(8); n > 0 || strings.TrimSpace(b.String()) == ""; n-- {
		b.WriteString(pieces[rng.IntN(len(pieces))])
	}
	// The API trims the names it is given.
	return strings.TrimSpace(b.String())
}
