package gateway

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
)

// keyFor stores an API key and returns its secret.
func keyFor(t *testing.T, e *env, k pharox.APIKey) string {
	t.Helper()
	secret, err := pharox.NewAPIKeySecret()
	if err != nil {
		t.Fatal(err)
	}
	k.Digest, k.Hint = pharox.APIKeyDigest(secret), pharox.APIKeyHint(secret)
	if _, err := e.store.CreateAPIKey(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	return secret
}

// TestKeyAuth: with Config.Keys the proxy password is an API key, over
// HTTP, CONNECT and SOCKS5 alike: a consumer key's leases are its
// consumer's, a pool outside its scope is refused (403 over HTTP, refused
// at SOCKS5), and unknown keys get 407. No secret reaches the log.
func TestKeyAuth(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) { c.Keys = NewStoreKeys(c.Leaser.(localLeaser).m.Storage(), nil, nil) })
	e.add(0, nil, startHTTPUpstream(t, "127.0.0.2", false))
	mine := keyFor(t, e, pharox.APIKey{Name: "scraper", Role: pharox.KeyRoleConsumer, Consumers: []string{"scraper-1"}, Pools: []string{"main"}})
	elsewhere := keyFor(t, e, pharox.APIKey{Name: "other-team", Role: pharox.KeyRoleConsumer, Pools: []string{"other"}})

	var transports []*http.Transport
	httpClient := func(pass string) *http.Client {
		u := &url.URL{Scheme: "http", Host: e.addr, User: url.UserPassword("pool-main", pass)}
		tr := &http.Transport{Proxy: http.ProxyURL(u),
			TLSClientConfig: e.tg.TLS.Client().Transport.(*http.Transport).TLSClientConfig.Clone()}
		transports = append(transports, tr)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	if status, _, reason := get(t, httpClient(mine), e.tg.Plain.URL+"/"); status != http.StatusOK {
		t.Fatalf("HTTP with the key: %d (%s)", status, reason)
	}
	if status, _, reason := get(t, httpClient(mine), e.tg.TLS.URL+"/"); status != http.StatusOK {
		t.Fatalf("CONNECT with the key: %d (%s)", status, reason)
	}
	if status, _, reason := get(t, httpClient(elsewhere), e.tg.Plain.URL+"/"); status != http.StatusForbidden || !strings.Contains(reason, `"other"`) {
		t.Fatalf("HTTP with a key for another pool: %d (%s), want 403 naming its pool", status, reason)
	}
	if status, _, reason := get(t, httpClient("phx_wrong"), e.tg.Plain.URL+"/"); status != http.StatusProxyAuthRequired || !strings.Contains(reason, "unknown API key") {
		t.Fatalf("HTTP with an unknown key: %d (%s), want 407", status, reason)
	}

	socksClient := func(pass string) *http.Client {
		d, err := proxy.SOCKS5("tcp", e.socks, &proxy.Auth{User: "pool-main", Password: pass}, proxy.Direct)
		if err != nil {
			t.Fatal(err)
		}
		tr := &http.Transport{DialContext: d.(proxy.ContextDialer).DialContext}
		transports = append(transports, tr)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	if status, _, _ := get(t, socksClient(mine), e.tg.Plain.URL+"/via-socks"); status != http.StatusOK {
		t.Fatalf("SOCKS5 with the key: %d", status)
	}
	for _, pass := range []string{elsewhere, "phx_wrong"} {
		if _, err := socksClient(pass).Get(e.tg.Plain.URL + "/"); err == nil {
			t.Fatal("SOCKS5 with a refused key went through")
		}
	}
	for _, tr := range transports {
		tr.CloseIdleConnections()
	}
	e.waitNoLeases()
	leases, err := e.store.ListLeases(context.Background(), pharox.LeaseQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 3 {
		t.Fatalf("%d leases, want 3 (HTTP, CONNECT, SOCKS5)", len(leases))
	}
	for _, l := range leases {
		if l.ConsumerName != "scraper-1" {
			t.Fatalf("a lease for %q, want the key's consumer scraper-1", l.ConsumerName)
		}
	}
	e.waitLog(func(m map[string]any) bool { return m["kind"] == "socks5" && m["key"] == "scraper" })
	if logs := e.logs.String(); strings.Contains(logs, mine) || strings.Contains(logs, elsewhere) {
		t.Fatal("a key reached the log")
	}
}

func TestKeyAuthExcludesPassword(t *testing.T) {
	_, err := New(Config{Leaser: localLeaser{}, Keys: &StoreKeys{}, Password: "pw"})
	if !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("Keys with a Password: %v, want ErrInvalidArgument", err)
	}
}
