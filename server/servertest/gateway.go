package servertest

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/client"
	"github.com/pharox/pharox/gateway"
	"github.com/pharox/pharox/internal/ptrutil"
)

// Gateway users authenticate with the same API keys: the proxy password
// is a key, the user name carries the routing, and a user's leases are its
// key's consumer's, from its pools only. Checked with the gateway over the
// store in the same process and over the server.

// upstreamProxy is a stand-in upstream HTTP proxy: it answers every
// forwarded request itself, naming itself.
func upstreamProxy(t *testing.T, name string) (host string, port int) {
	t.Helper()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s answered %s", name, r.URL.String())
	}))
	t.Cleanup(hs.Close)
	u, _ := url.Parse(hs.URL)
	port, _ = strconv.Atoi(u.Port())
	return u.Hostname(), port
}

// startGateway runs a gateway with key auth over leaser and returns its
// address.
func startGateway(t *testing.T, leaser gateway.Leaser, keys gateway.KeyChecker) string {
	t.Helper()
	gw, err := gateway.New(gateway.Config{Leaser: leaser, Keys: keys, SuccessReportInterval: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gw.Serve(ln) }()
	t.Cleanup(func() { _ = gw.Close() })
	return ln.Addr().String()
}

// throughGateway sends a GET through the gateway with user and key; it
// returns the status, the body and the gateway's reason header.
func throughGateway(t *testing.T, addr, user, key string) (int, string, string) {
	t.Helper()
	proxyURL := &url.URL{Scheme: "http", Host: addr, User: url.UserPassword(user, key)}
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}, Timeout: 20 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://target.example/page")
	if err != nil {
		t.Fatalf("GET through the gateway as %s: %v", user, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header.Get(gateway.ReasonHeader)
}

// testTenantsThroughGateway: the two tenants' keys through the gateway,
// over the store in this process and over the server.
func testTenantsThroughGateway(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	tn := &tenants{e: e, poolA: e.CreatePool("pool-a"), poolB: e.CreatePool("pool-b")}
	hostA, portA := upstreamProxy(t, "upstream-a")
	hostB, portB := upstreamProxy(t, "upstream-b")
	e.AddProxy(tn.poolA, api.CreateProxyRequest{Host: hostA, Port: portA, MaxConcurrency: ptrutil.Ptr(10)})
	e.AddProxy(tn.poolB, api.CreateProxyRequest{Host: hostB, Port: portB, MaxConcurrency: ptrutil.Ptr(10)})
	tn.a = e.CreateKey(api.CreateKeyRequest{Name: "tenant-a", Role: "consumer", Consumers: []string{"team-a"}, Pools: []string{"pool-a"}})
	tn.b = e.CreateKey(api.CreateKeyRequest{Name: "tenant-b", Role: "consumer", Consumers: []string{"team-b"}, Pools: []string{"pool-b"}})
	viewer := e.CreateKey(api.CreateKeyRequest{Name: "wall", Role: "viewer"})

	c, err := client.New(e.URL, client.WithAPIKey(AdminKey), client.WithRetry(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []struct {
		name string
		addr func() string
	}{
		{"local", func() string {
			return startGateway(t, gateway.NewLocalLeaser(e.Manager), gateway.NewStoreKeys(e.Store, []string{AdminKey}, nil))
		}},
		{"remote", func() string { return startGateway(t, gateway.NewRemoteLeaser(c), gateway.NewServerKeys(c)) }},
	} {
		t.Run(mode.name, func(t *testing.T) {
			addr := mode.addr()
			status, body, reason := throughGateway(t, addr, "pool-pool~2Da", tn.a.Secret)
			if status != 200 || !strings.HasPrefix(body, "upstream-a answered") {
				t.Fatalf("key a through the gateway: %d %q %q", status, body, reason)
			}
			status, body, reason = throughGateway(t, addr, "pool-pool~2Db", tn.b.Secret)
			if status != 200 || !strings.HasPrefix(body, "upstream-b answered") {
				t.Fatalf("key b through the gateway: %d %q %q", status, body, reason)
			}
			// Another key's pool: 403 naming the key's own.
			status, _, reason = throughGateway(t, addr, "pool-pool~2Db", tn.a.Secret)
			if status != 403 || !strings.Contains(reason, `"pool-a"`) {
				t.Fatalf("key a on pool-b through the gateway: %d %q, want 403 naming pool-a", status, reason)
			}
			status, _, reason = throughGateway(t, addr, "pool-pool~2Da", viewer.Secret)
			if status != 403 || !strings.Contains(reason, "viewer") {
				t.Fatalf("viewer key through the gateway: %d %q, want 403", status, reason)
			}
			status, _, reason = throughGateway(t, addr, "pool-pool~2Da", "phx_not-a-key")
			if status != 407 {
				t.Fatalf("unknown key through the gateway: %d %q, want 407", status, reason)
			}
			// Each key's gateway leases are its consumer's, and only its own
			// are listed to it.
			for _, k := range []struct {
				key      api.CreatedKey
				consumer string
			}{{tn.a, "team-a"}, {tn.b, "team-b"}} {
				var leases []api.Lease
				e.Do("GET", "/v1/leases/", k.key.Secret, nil).Expect(t, 200).Decode(t, &leases)
				if len(leases) == 0 {
					t.Fatalf("%s lists no leases after its gateway request", k.key.Name)
				}
				for _, l := range leases {
					if l.ConsumerName != k.consumer || l.Status == "active" {
						t.Fatalf("%s lists lease %+v; want only %s's, released", k.key.Name, l, k.consumer)
					}
				}
			}
		})
	}
	// The revoked key stops at the gateway too.
	e.Admin("DELETE", "/v1/keys/tenant-a", nil).Expect(t, 200)
	addr := startGateway(t, gateway.NewLocalLeaser(e.Manager), gateway.NewStoreKeys(e.Store, nil, nil))
	deadline := time.Now().Add(propagation)
	for {
		status, _, reason := throughGateway(t, addr, "pool-pool~2Da", tn.a.Secret)
		if status == 407 && strings.Contains(reason, "revoked") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("revoked key through the gateway: %d %q, want 407 saying it was revoked", status, reason)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
