package pharox

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestKeyRoleValid(t *testing.T) {
	for _, r := range []KeyRole{KeyRoleAdmin, KeyRoleConsumer, KeyRoleViewer} {
		if !r.Valid() {
			t.Errorf("%q not valid", r)
		}
	}
	for _, r := range []KeyRole{"", "Admin", "root"} {
		if r.Valid() {
			t.Errorf("%q valid", r)
		}
	}
}

func TestAPIKeyValidate(t *testing.T) {
	d := APIKeyDigest("phx_x")
	good := []APIKey{
		{Name: "ops", Role: KeyRoleAdmin},
		{Name: "dash", Role: KeyRoleViewer},
		{Name: "scraper", Role: KeyRoleConsumer},
		{Name: "scraper", Role: KeyRoleConsumer, Consumers: []string{"a", "b"}, Pools: []string{"eu"}},
	}
	for _, k := range good {
		k.Digest = d
		if err := k.Validate(); err != nil {
			t.Errorf("%+v: %v", k, err)
		}
	}
	bad := []struct {
		key  APIKey
		want string
	}{
		{APIKey{Role: KeyRoleAdmin}, "key name is empty"},
		{APIKey{Name: "a\nb", Role: KeyRoleAdmin}, "key name contains control characters"},
		{APIKey{Name: "k"}, `unknown role ""`},
		{APIKey{Name: "k", Role: "root"}, `unknown role "root"`},
		{APIKey{Name: "k", Role: KeyRoleAdmin, Consumers: []string{"a"}}, "only consumer keys can be bound to consumers"},
		{APIKey{Name: "k", Role: KeyRoleViewer, Pools: []string{"a"}}, "only consumer keys can be bound to pools"},
		{APIKey{Name: "k", Role: KeyRoleConsumer, Consumers: []string{""}}, "consumer name is empty"},
		{APIKey{Name: "k", Role: KeyRoleConsumer, Consumers: []string{"a", "a"}}, `consumer "a" listed twice`},
		{APIKey{Name: "k", Role: KeyRoleConsumer, Pools: []string{" "}}, "pool name is empty"},
		{APIKey{Name: "k", Role: KeyRoleConsumer, Pools: []string{"p", "p"}}, `pool "p" listed twice`},
		{APIKey{Name: "k", Role: KeyRoleAdmin, Hint: strings.Repeat("x", 65)}, "hint longer than 64 bytes"},
	}
	noDigest := APIKey{Name: "k", Role: KeyRoleAdmin}
	if err := noDigest.Validate(); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), `key "k" has no secret digest`) {
		t.Errorf("no digest: %v", err)
	}
	for _, c := range bad {
		c.key.Digest = d
		err := c.key.Validate()
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want ErrInvalidArgument containing %q", c.key, err, c.want)
		}
	}
}

func TestAPIKeyUsable(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	later, earlier := now.Add(time.Second), now.Add(-time.Second)
	cases := []struct {
		name string
		key  APIKey
		want error
	}{
		{"plain", APIKey{Name: "k"}, nil},
		{"expires later", APIKey{Name: "k", ExpiresAt: &later}, nil},
		{"expires now", APIKey{Name: "k", ExpiresAt: &now}, ErrKeyExpired},
		{"expired", APIKey{Name: "k", ExpiresAt: &earlier}, ErrKeyExpired},
		{"revoked", APIKey{Name: "k", RevokedAt: &earlier}, ErrKeyRevoked},
		{"revoked and expired", APIKey{Name: "k", RevokedAt: &earlier, ExpiresAt: &earlier}, ErrKeyRevoked},
		{"revoked in the future", APIKey{Name: "k", RevokedAt: &later}, ErrKeyRevoked},
	}
	for _, c := range cases {
		err := c.key.Usable(now)
		if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
		if err != nil && !strings.Contains(err.Error(), `key "k"`) {
			t.Errorf("%s: %q does not name the key", c.name, err)
		}
	}
}

func TestAPIKeyMayUse(t *testing.T) {
	admin := &APIKey{Name: "ops", Role: KeyRoleAdmin}
	viewer := &APIKey{Name: "dash", Role: KeyRoleViewer}
	own := &APIKey{Name: "scraper", Role: KeyRoleConsumer}
	bound := &APIKey{Name: "team", Role: KeyRoleConsumer, Consumers: []string{"a", "b"}, Pools: []string{"eu", "us"}}
	cases := []struct {
		key            *APIKey
		name           string
		consumer, pool bool
	}{
		{admin, "anything", true, true},
		{viewer, "anything", false, false},
		{viewer, "dash", false, false},
		{own, "scraper", true, true},
		{own, "other", false, true},
		{bound, "a", true, false},
		{bound, "b", true, false},
		{bound, "team", false, false},
		{bound, "eu", false, true},
		{bound, "us", false, true},
		{bound, "asia", false, false},
	}
	for _, c := range cases {
		if got := c.key.MayUseConsumer(c.name); got != c.consumer {
			t.Errorf("%s.MayUseConsumer(%q) = %v", c.key.Name, c.name, got)
		}
		if got := c.key.MayUsePool(c.name); got != c.pool {
			t.Errorf("%s.MayUsePool(%q) = %v", c.key.Name, c.name, got)
		}
	}
	if got := own.DefaultConsumer(); got != "scraper" {
		t.Errorf("own default consumer %q", got)
	}
	if got := bound.DefaultConsumer(); got != "a" {
		t.Errorf("bound default consumer %q", got)
	}
}

func TestAPIKeyClone(t *testing.T) {
	ts := time.Unix(100, 0)
	k := &APIKey{Name: "k", Consumers: []string{"a"}, Pools: []string{"p"}, ExpiresAt: &ts, RevokedAt: &ts, LastUsedAt: &ts}
	c := k.Clone()
	c.Consumers[0], c.Pools[0] = "x", "x"
	*c.ExpiresAt, *c.RevokedAt, *c.LastUsedAt = time.Time{}, time.Time{}, time.Time{}
	if k.Consumers[0] != "a" || k.Pools[0] != "p" || !k.ExpiresAt.Equal(ts) || !k.RevokedAt.Equal(ts) || !k.LastUsedAt.Equal(ts) {
		t.Fatalf("clone shares state with the original: %+v", k)
	}
}

func TestNewAPIKeySecret(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		s, err := NewAPIKeySecret()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(s, "phx_") || len(s) != 47 {
			t.Fatalf("secret %q: want phx_ and 43 characters", s)
		}
		if strings.Trim(s[4:], "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			t.Fatalf("secret %q is not base64url", s)
		}
		if seen[s] {
			t.Fatalf("secret %q repeated", s)
		}
		seen[s] = true
		if h := APIKeyHint(s); h != s[:8] {
			t.Fatalf("hint %q", h)
		}
	}
	if h := APIKeyHint("abc"); h != "abc" {
		t.Fatalf("short hint %q", h)
	}
}

func TestAPIKeyDigest(t *testing.T) {
	// sha256("phx_test"), computed with sha256sum.
	const want = "8ee44936f3b1c80173d2860f716f56dc44bd078df2ff5c4cb9fb4aed6f26860d"
	d := APIKeyDigest("phx_test")
	if got := hex.EncodeToString(d[:]); got != want {
		t.Fatalf("digest %s, want %s", got, want)
	}
	if d == APIKeyDigest("phx_tesT") {
		t.Fatal("different secrets share a digest")
	}
	if d != APIKeyDigest("phx_test") {
		t.Fatal("digest not deterministic")
	}
}

func TestAPIKeyJSONHidesDigest(t *testing.T) {
	k := APIKey{ID: uuid.New(), Name: "k", Role: KeyRoleAdmin, Digest: APIKeyDigest("phx_secret"), Hint: "phx_secr"}
	b, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ToLower(string(b)), "digest") {
		t.Fatalf("digest in JSON: %s", b)
	}
}

func TestAuditEntryValidate(t *testing.T) {
	ok := AuditEntry{Actor: "ops", Action: "pool.create"}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		e    AuditEntry
		want string
	}{
		{AuditEntry{Action: "a"}, "audit actor is empty"},
		{AuditEntry{Actor: "a"}, "audit action is empty"},
		{AuditEntry{Actor: "a", Action: "b", TargetID: strings.Repeat("x", 201)}, "audit target longer than 200 bytes"},
		{AuditEntry{Actor: "a", Action: "b", Detail: strings.Repeat("x", 1001)}, "audit detail longer than 1000 bytes"},
	}
	for _, c := range bad {
		err := c.e.Validate()
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want %q", c.e, err, c.want)
		}
	}
}

func TestAuditQuery(t *testing.T) {
	for _, c := range []struct{ in, want int }{{0, 100}, {1, 1}, {1000, 1000}, {5000, 1000}} {
		q := AuditQuery{Limit: c.in}
		if got, err := q.EffectiveLimit(); err != nil || got != c.want {
			t.Errorf("limit %d: got %d, %v", c.in, got, err)
		}
	}
	q := AuditQuery{Limit: -1}
	if _, err := q.EffectiveLimit(); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("negative limit: %v", err)
	}
	t0 := time.Unix(1000, 0)
	e := &AuditEntry{At: t0, Actor: "ops", Action: "pool.create"}
	cases := []struct {
		q    AuditQuery
		want bool
	}{
		{AuditQuery{}, true},
		{AuditQuery{Since: t0}, true},
		{AuditQuery{Since: t0.Add(time.Nanosecond)}, false},
		{AuditQuery{Until: t0}, false},
		{AuditQuery{Until: t0.Add(time.Nanosecond)}, true},
		{AuditQuery{Actor: "ops"}, true},
		{AuditQuery{Actor: "other"}, false},
		{AuditQuery{Action: "pool.create"}, true},
		{AuditQuery{Action: "pool.delete"}, false},
	}
	for _, c := range cases {
		if got := c.q.Matches(e); got != c.want {
			t.Errorf("%+v: got %v", c.q, got)
		}
	}
}
