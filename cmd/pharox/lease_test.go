package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

func TestLeaseCommands(t *testing.T) {
	bothModes(t, func(t *testing.T, c *cli) {
		c.ok("pool", "create", "main")
		c.run("10.0.0.1:8080:alice:pw-lease-1\n", "proxy", "import", "-", "--pool", "main", "--max-concurrency", "1", "--country", "DE")

		// Table output masks the password.
		table := c.ok("lease", "acquire", "--pool", "main", "--consumer", "w1", "--ttl", "90s", "--country", "de")
		lines := strings.Split(strings.TrimSpace(table), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") {
			t.Fatalf("acquire table = %q", table)
		}
		if !strings.Contains(lines[1], "http://alice:xxxxx@10.0.0.1:8080") || !strings.Contains(lines[1], "w1") ||
			!strings.Contains(lines[1], "main") || !strings.Contains(lines[1], "active") || strings.Contains(table, "pw-lease") {
			t.Fatalf("acquire row = %q", lines[1])
		}
		first := strings.Fields(lines[1])[0]

		// The only proxy is taken.
		_, _, err := c.run("", "lease", "acquire", "--pool", "main")
		if !errors.Is(err, pharox.ErrNoProxyAvailable) {
			t.Fatalf("exhausted: err = %v, want ErrNoProxyAvailable", err)
		}
		_, _, err = c.run("", "lease", "acquire", "--pool", "main", "--wait", "30ms")
		if !errors.Is(err, pharox.ErrNoProxyAvailable) {
			t.Fatalf("exhausted after wait: err = %v, want ErrNoProxyAvailable", err)
		}
		out := c.ok("lease", "release", first)
		if !strings.HasPrefix(out, "released lease "+first+" (held ") {
			t.Fatalf("release = %q", out)
		}
		// Releasing again is not an error, in both modes.
		if again := c.ok("lease", "release", first); !strings.HasPrefix(again, "released lease "+first+" (held ") || again != out {
			t.Fatalf("second release = %q, first %q", again, out)
		}

		// JSON without and with secrets.
		l := decode[api.Lease](t, c.ok("lease", "acquire", "--pool", "main", "--json"))
		if l.Status != "active" || l.Proxy == nil || l.Proxy.Username != "alice" || l.Proxy.Password != "" || l.Proxy.URL != "" {
			t.Fatalf("acquire --json = %+v (proxy %+v)", l, l.Proxy)
		}
		if l.ExpiresAt.Sub(l.AcquiredAt.Time) != pharox.DefaultLeaseDuration {
			t.Errorf("default ttl = %v", l.ExpiresAt.Sub(l.AcquiredAt.Time))
		}
		rel := decode[[]api.Lease](t, c.ok("lease", "release", l.ID.String(), "--json"))
		if len(rel) != 1 || rel[0].Status != "released" || rel[0].ReleasedAt == nil {
			t.Fatalf("release --json = %+v", rel)
		}
		s := decode[api.Lease](t, c.ok("lease", "acquire", "--pool", "main", "--json", "--with-secrets", "--consumer", "w2"))
		if s.Proxy == nil || s.Proxy.Password != "pw-lease-1" || s.Proxy.URL != "http://alice:pw-lease-1@10.0.0.1:8080" {
			t.Fatalf("acquire --with-secrets = %+v", s.Proxy)
		}
		if table := c.ok("lease", "list", "--pool", "main", "--status", "active"); strings.Contains(table, "pw-lease") {
			t.Fatal("lease list prints a password")
		}

		// Listing with filters.
		all := decode[[]api.Lease](t, c.ok("lease", "list", "--json"))
		if len(all) != 3 {
			t.Fatalf("list = %d leases, want 3", len(all))
		}
		active := decode[[]api.Lease](t, c.ok("lease", "list", "--pool", "main", "--status", "active", "--json"))
		if len(active) != 1 || active[0].ID != s.ID {
			t.Fatalf("list --status active = %+v", active)
		}
		byName := decode[[]api.Lease](t, c.ok("lease", "list", "--consumer", "w1", "--json"))
		if len(byName) != 1 || byName[0].ID.String() != first {
			t.Fatalf("list --consumer w1 = %+v", byName)
		}
		byID := decode[[]api.Lease](t, c.ok("lease", "list", "--consumer", s.ConsumerID.String(), "--json"))
		if len(byID) != 1 || byID[0].ID != s.ID {
			t.Fatalf("list --consumer <id> = %+v", byID)
		}
		limited := decode[[]api.Lease](t, c.ok("lease", "list", "--limit", "2", "--json"))
		if len(limited) != 2 || limited[0].ID.String() != first {
			t.Fatalf("list --limit 2 = %+v (want the oldest first)", limited)
		}
		table = c.ok("lease", "list")
		if rows := strings.Split(strings.TrimSpace(table), "\n"); len(rows) != 4 || !strings.Contains(rows[0], "RELEASED") {
			t.Fatalf("list table = %q", table)
		}

		// Bad input.
		for _, tc := range []struct {
			args []string
			want error
		}{
			{[]string{"lease", "acquire", "--pool", "nope"}, pharox.ErrPoolNotFound},
			{[]string{"lease", "acquire", "--pool", "main", "--strategy", "best"}, pharox.ErrInvalidArgument},
			{[]string{"lease", "acquire", "--pool", "main", "--ttl", "-1s"}, pharox.ErrInvalidArgument},
			{[]string{"lease", "acquire", "--pool", "main", "--protocol", "gopher"}, pharox.ErrInvalidArgument},
			{[]string{"lease", "release", "nope"}, pharox.ErrInvalidArgument},
			{[]string{"lease", "release", "6f1c1b36-8a4e-4b1e-9d59-0d3f1e6c2a10"}, pharox.ErrLeaseNotFound},
			{[]string{"lease", "list", "--status", "gone"}, pharox.ErrInvalidArgument},
		} {
			if _, _, err := c.run("", tc.args...); !errors.Is(err, tc.want) {
				t.Errorf("pharox %s: err = %v, want %v", strings.Join(tc.args, " "), err, tc.want)
			}
		}
	})
}

func TestLeaseAcquireStickySession(t *testing.T) {
	bothModes(t, func(t *testing.T, c *cli) {
		c.ok("pool", "create", "main")
		c.run("10.0.0.1:80\n10.0.0.2:80\n10.0.0.3:80\n", "proxy", "import", "-", "--pool", "main")
		var proxy string
		for i := range 3 {
			l := decode[api.Lease](t, c.ok("lease", "acquire", "--pool", "main", "--session-key", "user-42",
				"--session-ttl", time.Minute.String(), "--strategy", "round_robin", "--json"))
			if i == 0 {
				proxy = l.ProxyID.String()
			} else if l.ProxyID.String() != proxy {
				t.Fatalf("acquisition %d got proxy %s, want the session's %s", i, l.ProxyID, proxy)
			}
		}
	})
}

func TestLeaseReleaseExpired(t *testing.T) {
	bothModes(t, func(t *testing.T, c *cli) {
		c.ok("pool", "create", "main")
		c.run("10.0.0.2:8080\n", "proxy", "import", "-", "--pool", "main")
		l := decode[api.Lease](t, c.ok("lease", "acquire", "--pool", "main", "--ttl", "50ms", "--json"))
		time.Sleep(time.Until(l.ExpiresAt.Time) + 50*time.Millisecond)
		if out := c.ok("lease", "release", l.ID.String()); !strings.HasPrefix(out, "lease "+l.ID.String()+" had already expired at ") {
			t.Fatalf("release of an expired lease = %q", out)
		}
	})
}

// A wait longer than the server allows is refused with the server's
// maximum, not cut short into a misleading miss.
func TestLeaseAcquireWaitOverServerMaximum(t *testing.T) {
	c := newRemoteCLI(t)
	c.ok("pool", "create", "main")
	_, _, err := c.run("", "lease", "acquire", "--pool", "main", "--wait", "45s")
	if !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), "maximum wait of 30 seconds") {
		t.Fatalf("--wait 45s: err = %v, want the server's maximum named", err)
	}
}

// A duplicate pool and a miss read as one sentence in both modes. In
// direct mode they were the store's chain: 'sqlite: create pool "main":
// pool id <a new id> or name "main" in use: already exists' and 'acquire
// from pool "main": sqlite: acquire lease from pool "main": no proxy
// available'.
func TestDuplicatePoolAndMissAreOneSentence(t *testing.T) {
	for name, newCLI := range map[string]func(*testing.T) *cli{"direct": newDirectCLI, "server": newRemoteCLI} {
		t.Run(name, func(t *testing.T) {
			c := newCLI(t)
			c.ok("pool", "create", "main")
			for _, tc := range []struct {
				args []string
				want string
				is   error
			}{
				{[]string{"pool", "create", "main"}, `pharox: a pool named "main" already exists`, pharox.ErrAlreadyExists},
				{[]string{"lease", "acquire", "--pool", "main"}, `pharox: no proxy available in pool "main": every matching proxy is busy or none matches`, pharox.ErrNoProxyAvailable},
				{[]string{"lease", "acquire", "--pool", "main", "--wait", "10ms"}, `pharox: no proxy in pool "main" freed up within --wait 10ms`, pharox.ErrNoProxyAvailable},
			} {
				_, _, err := c.run("", tc.args...)
				if err == nil || !errors.Is(err, tc.is) {
					t.Fatalf("pharox %s: err %v, want %v", strings.Join(tc.args, " "), err, tc.is)
				}
				if got := errorLine(err); got != tc.want {
					t.Errorf("pharox %s: %q, want %q", strings.Join(tc.args, " "), got, tc.want)
				}
			}
		})
	}
}
