package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

const proxyFile = `# vendor A
10.0.0.1:8080:alice:pw-alice-1
bob:pw-bob-2@10.0.0.2:3128
socks5://carol:pw%40carol@[2001:db8::3]:1080

not-a-proxy
10.0.0.5:99999
10.0.0.1:8080:alice:other
`

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func listProxies(t *testing.T, c *cli, pool string) []api.Proxy {
	t.Helper()
	return decode[[]api.Proxy](t, c.ok("proxy", "list", "--pool", pool, "--json"))
}

func TestProxyImportReject(t *testing.T) {
	bothModes(t, func(t *testing.T, c *cli) {
		c.ok("pool", "create", "main")
		file := writeFile(t, "list.txt", proxyFile)
		out, stderr, err := c.run("", "proxy", "import", file, "--pool", "main")
		if err == nil || !strings.Contains(err.Error(), "3 bad line(s): nothing imported") {
			t.Fatalf("import: err = %v, want a rejection of 3 lines", err)
		}
		for _, want := range []string{"list.txt:6: ", "list.txt:7: ", "out of range", "list.txt:8: ", "duplicate of line 2"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr lacks %q:\n%s", want, stderr)
			}
		}
		if strings.Contains(stderr+out+err.Error(), "pw-") {
			t.Errorf("a password leaked into the output:\n%s\n%s", out, stderr)
		}
		if got := listProxies(t, c, "main"); len(got) != 0 {
			t.Fatalf("rejected import stored %d proxies", len(got))
		}
		// --json reports the rejected lines on stdout.
		out, _, err = c.run("", "proxy", "import", file, "--pool", "main", "--json")
		if err == nil {
			t.Fatal("import --json with bad lines succeeded")
		}
		rep := decode[importReport](t, out)
		if rep.Created != 0 || len(rep.Rejected) != 3 || rep.Rejected[0].Line != 6 {
			t.Fatalf("import --json report = %+v", rep)
		}
	})
}

func TestProxyImportSkipAndOptions(t *testing.T) {
	bothModes(t, func(t *testing.T, c *cli) {
		c.ok("pool", "create", "main")
		file := writeFile(t, "list.txt", proxyFile)
		out, stderr, err := c.run("", "proxy", "import", file, "--pool", "main", "--on-error", "skip",
			"--country", "de", "--source", "vendor-a", "--max-concurrency", "2", "--protocol", "https", "--tag", "dc")
		if err != nil {
			t.Fatalf("import --on-error skip: %v\n%s", err, stderr)
		}
		if !strings.Contains(out, "imported 3 proxies into pool main (skipped 3 bad lines)") {
			t.Fatalf("summary = %q", out)
		}
		if strings.Count(stderr, "skipped ") != 3 || strings.Count(stderr, "list.txt:") != 3 {
			t.Fatalf("skipped lines not listed:\n%s", stderr)
		}
		got := listProxies(t, c, "main")
		if len(got) != 3 {
			t.Fatalf("stored %d proxies, want 3", len(got))
		}
		byHost := map[string]api.Proxy{}
		for _, p := range got {
			byHost[p.Host] = p
			if p.Country != "DE" || p.Source != "vendor-a" || p.MaxConcurrency == nil || *p.MaxConcurrency != 2 ||
				len(p.Tags) != 1 || p.Tags[0] != "dc" || p.Status != "active" {
				t.Errorf("options not applied: %+v", p)
			}
			if p.Password != "" || p.URL != "" {
				t.Errorf("list --json leaks secrets: %+v", p)
			}
		}
		if byHost["10.0.0.1"].Protocol != "https" || byHost["10.0.0.1"].Username != "alice" {
			t.Errorf("colon line: %+v", byHost["10.0.0.1"])
		}
		if byHost["2001:db8::3"].Protocol != "socks5" || byHost["2001:db8::3"].Username != "carol" {
			t.Errorf("URL line: %+v", byHost["2001:db8::3"])
		}
		// The stored password is the unescaped one.
		for _, p := range mustList(t, c) {
			if p.Host == "2001:db8::3" && (p.Credentials == nil || p.Credentials.Password != "pw@carol") {
				t.Errorf("stored credentials = %#v", p.Credentials)
			}
		}

		// Importing again: every line is already in the pool, named by line.
		_, stderr, err = c.run("", "proxy", "import", file, "--pool", "main", "--protocol", "https")
		if err == nil || !strings.Contains(stderr, `list.txt:2: already in pool "main"`) ||
			!strings.Contains(stderr, `list.txt:3: already in pool "main"`) || !strings.Contains(stderr, `list.txt:4: already in pool "main"`) {
			t.Fatalf("re-import: err %v, stderr:\n%s", err, stderr)
		}
		// From stdin, mixed with a file; a duplicate across inputs is named.
		out, stderr, err = c.run("10.0.0.7:80\n10.0.0.8:80\n", "proxy", "import", "-", writeFile(t, "b.txt", "10.0.0.8:80\n"),
			"--pool", "main", "--on-error", "skip", "--json")
		if err != nil {
			t.Fatalf("import from stdin: %v\n%s", err, stderr)
		}
		rep := decode[importReport](t, out)
		if rep.Created != 2 || len(rep.Skipped) != 1 || rep.Skipped[0].File != "b.txt" && !strings.HasSuffix(rep.Skipped[0].File, "b.txt") ||
			rep.Skipped[0].Error != "duplicate of <stdin>:2" {
			t.Fatalf("stdin import report = %+v", rep)
		}
		if len(listProxies(t, c, "main")) != 5 {
			t.Fatal("stdin import did not store 2 proxies")
		}
	})
}

// mustList reads the proxies straight from the store, passwords included.
func mustList(t *testing.T, c *cli) []*pharox.Proxy {
	t.Helper()
	ctx := t.Context()
	pools, err := c.store.ListPools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var all []*pharox.Proxy
	for _, p := range pools {
		ps, err := c.store.ListProxies(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, ps...)
	}
	return all
}

func TestProxyImportBadInput(t *testing.T) {
	c := newDirectCLI(t)
	c.ok("pool", "create", "main")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"proxy", "import", "--pool", "main"}, "requires at least 1 arg"},
		{[]string{"proxy", "import", "x.txt"}, `"pool" not set`},
		{[]string{"proxy", "import", "-", "--pool", "main", "--on-error", "maybe"}, "--on-error must be reject or skip"},
		{[]string{"proxy", "import", "-", "--pool", "main", "--protocol", "ftp"}, "unknown protocol"},
		{[]string{"proxy", "import", "-", "--pool", "main", "--max-concurrency", "-1"}, "--max-concurrency"},
		{[]string{"proxy", "import", "-", "-", "--pool", "main"}, "given twice"},
		{[]string{"proxy", "import", filepath.Join(t.TempDir(), "missing.txt"), "--pool", "main"}, "no such file"},
		{[]string{"proxy", "import", "-", "--pool", "nope"}, "pool not found"},
	}
	for _, tc := range cases {
		_, _, err := c.run("1.2.3.4:80\n", tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pharox %s: err = %v, want %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	if got := listProxies(t, c, "main"); len(got) != 0 {
		t.Fatalf("failed imports stored %d proxies", len(got))
	}
	// An empty input imports nothing and says so.
	if out := c.ok("proxy", "import", writeFile(t, "empty.txt", "# nothing\n"), "--pool", "main"); !strings.Contains(out, "imported 0 proxies") {
		t.Fatalf("empty import = %q", out)
	}
}

func TestProxyListSetStatusDelete(t *testing.T) {
	bothModes(t, func(t *testing.T, c *cli) {
		c.ok("pool", "create", "main")
		c.ok("pool", "create", "other")
		c.run("10.0.0.1:8080:alice:pw-secret-1\n10.0.0.2:3128\n", "proxy", "import", "-", "--pool", "main", "--max-concurrency", "1")

		table := c.ok("proxy", "list", "--pool", "main")
		lines := strings.Split(strings.TrimSpace(table), "\n")
		if len(lines) != 3 {
			t.Fatalf("table = %q", table)
		}
		for _, h := range []string{"ID", "PROTOCOL", "ADDRESS", "USER", "STATUS", "LEASES", "MAX"} {
			if !strings.Contains(lines[0], h) {
				t.Errorf("header lacks %s: %q", h, lines[0])
			}
		}
		if !strings.Contains(table, "10.0.0.1:8080") || !strings.Contains(table, "alice") {
			t.Errorf("table lacks the proxy or its user:\n%s", table)
		}
		if strings.Contains(table, "pw-secret") || strings.Contains(c.ok("proxy", "list", "--pool", "main", "--json"), "pw-secret") {
			t.Fatal("proxy list prints a password")
		}

		proxies := listProxies(t, c, "main")
		id := proxies[0].ID.String()
		set := decode[[]api.Proxy](t, c.ok("proxy", "set-status", "--pool", "main", id, "BANNED", "--json"))
		if len(set) != 1 || set[0].Status != "banned" {
			t.Fatalf("set-status --json = %+v", set)
		}
		if out := c.ok("proxy", "set-status", "--pool", "main", id, "active"); !strings.Contains(out, "active") {
			t.Fatalf("set-status = %q", out)
		}
		_, _, err := c.run("", "proxy", "set-status", "--pool", "main", id, "dead")
		if !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Fatalf("bad status: err = %v", err)
		}
		_, _, err = c.run("", "proxy", "set-status", "--pool", "main", "not-a-uuid", "active")
		if !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), "not a valid UUID") {
			t.Fatalf("bad id: err = %v", err)
		}
		// A proxy is addressed within its pool.
		_, _, err = c.run("", "proxy", "set-status", "--pool", "other", id, "active")
		if !errors.Is(err, pharox.ErrProxyNotFound) {
			t.Fatalf("proxy of another pool: err = %v", err)
		}

		// A leased proxy cannot be deleted; the other one can.
		lease := decode[api.Lease](t, c.ok("lease", "acquire", "--pool", "main", "--json"))
		leased, free := lease.ProxyID.String(), ""
		for _, p := range proxies {
			if p.ID != lease.ProxyID {
				free = p.ID.String()
			}
		}
		out, _, err := c.run("", "proxy", "delete", "--pool", "main", leased, free)
		if !errors.Is(err, pharox.ErrInUse) || !strings.Contains(out, "deleted proxy "+free) {
			t.Fatalf("delete: out %q, err %v; want the free one deleted and ErrInUse for the leased one", out, err)
		}
		c.ok("lease", "release", lease.ID.String())
		del := decode[map[string][]string](t, c.ok("proxy", "delete", "--pool", "main", leased, "--json"))
		if len(del["deleted"]) != 1 || del["deleted"][0] != leased {
			t.Fatalf("delete --json = %v", del)
		}
		if got := listProxies(t, c, "main"); len(got) != 0 {
			t.Fatalf("%d proxies left", len(got))
		}
	})
}
