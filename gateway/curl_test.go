package gateway

import (
	"context"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
)

// TestCurl drives the gateway with the curl binary, as a client in another
// language would: plain HTTP, CONNECT to a TLS target, and SOCKS5.
func TestCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) { c.Password = gwPass })
	ups := []*testpeers.Upstream{startHTTPUpstream(t, "127.0.0.2", true), testpeers.StartSOCKS5(t, "127.0.0.3")}
	e.add(0, testpeers.Alice(), ups...)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.tg.TLS.Certificate().Raw})
	if err := os.WriteFile(ca, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (code, from string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		args = append([]string{"-sS", "--noproxy", "", "-o", "/dev/null", "-D", "-", "-w", "\ncode=%{http_code}", "--cacert", ca}, args...)
		out, err := exec.CommandContext(ctx, curl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("curl %v: %v\n%s", args, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			line = strings.TrimSpace(line)
			if v, ok := strings.CutPrefix(line, "code="); ok {
				code = v
			}
			if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "X-Seen-From") {
				from = strings.TrimSpace(v)
			}
		}
		return code, from
	}
	httpProxy := "http://" + e.addr
	seen := map[string]bool{}
	for _, u := range []string{e.tg.Plain.URL + "/curl", e.tg.TLS.URL + "/curl"} {
		for range 2 {
			code, from := run("-x", httpProxy, "-U", "pool-main:"+gwPass, u)
			if code != "200" || from == "" {
				t.Fatalf("curl %s via the HTTP gateway: code %s from %q", u, code, from)
			}
			seen[from] = true
		}
	}
	if len(seen) != 2 {
		t.Fatalf("curl requests did not rotate over both upstreams: %v", seen)
	}
	code, from := run("-x", "socks5h://pool-main-session-curl:"+gwPass+"@"+e.socks, e.tg.TLS.URL+"/curl-socks")
	if code != "200" || from == "" {
		t.Fatalf("curl over SOCKS5: code %s from %q", code, from)
	}
	if code, _ := run("-x", httpProxy, "-U", "pool-main:wrong", e.tg.Plain.URL+"/"); code != "407" {
		t.Fatalf("curl with a wrong password: code %s, want 407", code)
	}
	// A pool name with a dash, given with -U and inside a proxy URL (both
	// of which curl percent-decodes before sending).
	pool, err := e.store.CreatePool(context.Background(), pharox.Pool{Name: "latam-residential"})
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(ups[0].Addr)
	n, _ := strconv.Atoi(port)
	if _, err := e.store.AddProxies(context.Background(), []pharox.Proxy{{PoolID: pool.ID, Host: host, Port: n, Protocol: pharox.ProtocolHTTP, Credentials: testpeers.Alice()}}); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"-x", httpProxy, "-U", "pool-latam~2Dresidential:" + gwPass},
		{"-x", "http://pool-latam~2Dresidential:" + gwPass + "@" + e.addr},
	} {
		if code, from := run(append(args, e.tg.Plain.URL+"/dash")...); code != "200" || from != "127.0.0.2" {
			t.Fatalf("curl %v to pool latam-residential: code %s from %q", args, code, from)
		}
	}
	e.waitNoLeases()
}
