package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

func TestTargetsCommand(t *testing.T) {
	bothModes(t, func(t *testing.T, c *cli) {
		c.ok("pool", "create", "a")
		c.run("10.0.0.1:80\n10.0.0.2:80\n", "proxy", "import", "-", "--pool", "a")
		ps := listProxies(t, c, "a")

		_, _, err := c.run("", "lease", "acquire", "--pool", "a", "--target", "exa mple.com")
		if !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), `--target "exa mple.com"`) {
			t.Fatalf("acquire with a bad --target: err = %v, want one naming the flag and its value", err)
		}
		if _, ok := c.store.(pharox.TargetStore); !ok {
			if _, _, err := c.run("", "targets", "--pool", "a"); !errors.Is(err, pharox.ErrUnsupported) {
				t.Fatalf("targets on a store without per-site health: err = %v, want ErrUnsupported", err)
			}
			t.Skip("the memory store keeps no per-site health (no pharox.TargetStore) yet")
		}

		// The proxy leased first is banned by example.com.
		lease := decode[api.Lease](t, c.ok("lease", "acquire", "--pool", "a", "--target", "https://www.example.com/", "--json"))
		if lease.ProxyID != ps[0].ID {
			ps[0], ps[1] = ps[1], ps[0]
		}
		mgr := pharox.NewManager(c.store)
		if _, err := mgr.ReportOutcome(context.Background(), lease.Model(), pharox.Outcome{Kind: pharox.OutcomeBanned, StatusCode: 403, Target: "example.com"}); err != nil {
			t.Fatal(err)
		}
		c.ok("lease", "release", lease.ID.String())
		again := decode[api.Lease](t, c.ok("lease", "acquire", "--pool", "a", "--target", "example.com", "--json"))
		if again.ProxyID != ps[1].ID {
			t.Fatalf("--target example.com leased the proxy cooling down for it")
		}
		c.ok("lease", "release", again.ID.String())

		table := c.ok("targets", "--pool", "a")
		lines := strings.Split(strings.TrimSpace(table), "\n")
		if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "TARGET USABLE COOLING BANS_1H" ||
			strings.Join(strings.Fields(lines[1]), " ") != "example.com 1 1 1" {
			t.Fatalf("targets table = %q", table)
		}
		stats := decode[[]api.TargetStats](t, c.ok("targets", "--pool", "a", "--json"))
		if len(stats) != 1 || stats[0] != (api.TargetStats{Target: "example.com", UsableProxies: 1, CoolingProxies: 1, BansLastHour: 1}) {
			t.Fatalf("targets --json = %+v", stats)
		}
		states := decode[[]api.TargetState](t, c.ok("targets", "--pool", "a", "--proxy", ps[0].ID.String(), "--json"))
		if len(states) != 1 || !states[0].Cooling || states[0].LastStatusCode != 403 {
			t.Fatalf("targets --proxy --json = %+v", states)
		}
		if out := c.ok("targets", "--pool", "a", "--proxy", ps[0].ID.String()); !strings.Contains(out, "example.com") || !strings.Contains(out, "403") {
			t.Fatalf("targets --proxy table = %q", out)
		}
		if _, _, err := c.run("", "targets", "--pool", "zzz"); !errors.Is(err, pharox.ErrPoolNotFound) {
			t.Fatalf("targets of an unknown pool: err = %v", err)
		}
	})
}
