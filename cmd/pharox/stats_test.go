package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

func TestStatsCommand(t *testing.T) {
	bothModes(t, func(t *testing.T, c *cli) {
		c.ok("pool", "create", "a")
		c.ok("pool", "create", "b")
		c.run("10.0.0.1:80\n10.0.0.2:80\n10.0.0.3:80\n", "proxy", "import", "-", "--pool", "a", "--max-concurrency", "1")
		ps := listProxies(t, c, "a")
		c.ok("proxy", "set-status", "--pool", "a", ps[0].ID.String(), "banned")
		c.ok("lease", "acquire", "--pool", "a")

		stats := decode[[]api.PoolStats](t, c.ok("stats", "--json"))
		if len(stats) != 2 || stats[0].PoolName != "a" || stats[1].PoolName != "b" {
			t.Fatalf("stats --json = %+v", stats)
		}
		a := stats[0]
		if a.TotalProxies != 3 || a.ActiveProxies != 2 || a.AvailableProxies != 1 || a.LeasedProxies != 1 ||
			a.TotalLeases != 1 || a.ByStatus["banned"] != 1 || a.ByStatus["active"] != 2 {
			t.Fatalf("stats of a = %+v", a)
		}
		if b := stats[1]; b.TotalProxies != 0 || b.TotalLeases != 0 {
			t.Fatalf("stats of b = %+v", b)
		}
		table := c.ok("stats", "--pool", "a")
		lines := strings.Split(strings.TrimSpace(table), "\n")
		if len(lines) != 2 {
			t.Fatalf("stats table = %q", table)
		}
		if got := strings.Fields(lines[0]); strings.Join(got, " ") != "POOL PROXIES LEASABLE AVAILABLE LEASED LEASES ACTIVE SLOW INACTIVE BANNED" {
			t.Fatalf("stats header = %q", lines[0])
		}
		if got := strings.Join(strings.Fields(lines[1]), " "); got != "a 3 2 1 1 1 2 0 0 1" {
			t.Fatalf("stats row = %q", got)
		}
		if _, _, err := c.run("", "stats", "--pool", "zzz"); !errors.Is(err, pharox.ErrPoolNotFound) {
			t.Fatalf("stats of unknown pool: err = %v", err)
		}
	})
}
