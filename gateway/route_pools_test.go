package gateway

import (
	"context"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
)

// TestEveryPoolNameIsRoutable creates pools with random names the API
// accepts (dashes, digits, '%', ':', spaces, non-ASCII letters, names
// that look like routing keys) and reaches each through a running gateway
// by name and by id, over a Manager in the process and over a server.
func TestEveryPoolNameIsRoutable(t *testing.T) {
	for _, remote := range []bool{false, true} {
		t.Run("remote="+strconv.FormatBool(remote), func(t *testing.T) {
			testpeers.CheckLeaks(t)
			e := newEnvWith(t, remote, nil)
			up := startHTTPUpstream(t, "127.0.0.2", false)
			host, portStr, _ := net.SplitHostPort(up.Addr)
			port, _ := strconv.Atoi(portStr)
			ctx := context.Background()
			seed := rand.Uint64()
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 16))
			names := map[string]bool{"latam-residential": true, "main-country-us": true, "pool": true, "zürich": true}
			for len(names) < 40 {
				if n := randomName(rng); n != "main" { // the env's own pool
					names[n] = true
				}
			}
			for name := range names {
				if err := pharox.ValidateName("pool name", name); err != nil {
					t.Fatalf("generated a name the API refuses: %q: %v", name, err)
				}
				pool, err := e.store.CreatePool(ctx, pharox.Pool{Name: name})
				if err != nil {
					t.Fatalf("create pool %q: %v", name, err)
				}
				if _, err := e.store.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: host, Port: port, Protocol: pharox.ProtocolHTTP}}); err != nil {
					t.Fatal(err)
				}
				for _, user := range []string{FormatRoute(Route{Pool: name}, ""), FormatRoute(Route{PoolID: pool.ID}, "")} {
					before := e.leasesOf(pool)
					c := e.proxyClient(user)
					if status, _, reason := get(t, c, e.tg.Plain.URL+"/"); status != http.StatusOK {
						t.Fatalf("pool %q as user %q: %d (%s)", name, user, status, reason)
					}
					if after := e.leasesOf(pool); after != before+1 {
						t.Fatalf("pool %q as user %q: the pool's leases went from %d to %d, want one more", name, user, before, after)
					}
				}
			}
			e.waitNoLeases()
		})
	}
}

// leasesOf counts the leases ever taken from pool.
func (e *env) leasesOf(pool *pharox.Pool) int {
	e.t.Helper()
	ls, err := e.store.ListLeases(context.Background(), pharox.LeaseQuery{PoolID: pool.ID})
	if err != nil {
		e.t.Fatal(err)
	}
	return len(ls)
}
