package main

import (
	"context"
	"encoding/csv"
	"errors"
	"strings"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

func TestQuotaCommands(t *testing.T) {
	bothModes(t, func(t *testing.T, c *cli) {
		c.ok("pool", "create", "a")
		c.run("10.0.0.1:80\n10.0.0.2:80\n", "proxy", "import", "-", "--pool", "a")
		ps := listProxies(t, c, "a")

		// A consumer not seen yet is created for its quota.
		if out := c.ok("quota", "set", "consumer", "scraper-1", "--max-leases", "1", "--bytes-per-day", "10GB"); out !=
			"set the quota of consumer \"scraper-1\": max_concurrent_leases=1, bytes_per_day=10000000000\n" {
			t.Fatalf("quota set = %q", out)
		}
		// set changes only the limits given.
		q := decode[api.Quota](t, c.ok("quota", "set", "consumer", "scraper-1", "--rpm", "60", "--bytes-per-day", "512MiB", "--json"))
		if q.Name != "scraper-1" || q.MaxConcurrentLeases != 1 || q.RequestsPerMinute != 60 || q.BytesPerDay != 512<<20 {
			t.Fatalf("quota set --json = %+v", q)
		}
		c.ok("quota", "set", "pool", "a", "--bytes-per-month", "1TB")
		c.ok("quota", "set", "proxy", ps[0].ID.String(), "--bytes-per-day", "1.5kB")

		c.ok("lease", "acquire", "--pool", "a", "--consumer", "scraper-1")
		_, _, err := c.run("", "lease", "acquire", "--pool", "a", "--consumer", "scraper-1")
		qe, ok := errors.AsType[*pharox.QuotaError](err)
		if !ok || qe.Limit != pharox.LimitMaxConcurrentLeases || !strings.Contains(strings.ToLower(err.Error()), `consumer "scraper-1" is over its quota max_concurrent_leases=1`) {
			t.Fatalf("acquire over the cap: err = %v, want a QuotaError naming the consumer", err)
		}

		list := c.ok("quota", "list")
		lines := strings.Split(strings.TrimSpace(list), "\n")
		if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "SUBJECT NAME MAX_LEASES RPM TODAY THIS_MONTH STATE" ||
			strings.Join(strings.Fields(lines[1]), " ") != "consumer scraper-1 1 60 0 B / 537 MB 0 B ok" ||
			strings.Join(strings.Fields(lines[2]), " ") != "pool a - - 0 B 0 B / 1.00 TB ok" ||
			strings.Join(strings.Fields(lines[3]), " ") != "proxy "+ps[0].Host+":80 - - 0 B / 1.50 kB 0 B ok" {
			t.Fatalf("quota list =\n%s", list)
		}
		if qs := decode[[]api.Quota](t, c.ok("quota", "list", "--json")); len(qs) != 3 {
			t.Fatalf("quota list --json = %+v", qs)
		}
		if out := c.ok("quota", "get", "pool", "a"); !strings.Contains(out, "1.00 TB") {
			t.Fatalf("quota get = %q", out)
		}

		// Mistakes, in the CLI's words.
		for _, args := range [][]string{
			{"quota", "set", "team", "x", "--rpm", "1"},
			{"quota", "set", "consumer", "x"},
			{"quota", "set", "consumer", "x", "--bytes-per-day", "lots"},
			{"quota", "set", "consumer", "x", "--rpm", "-1"},
		} {
			if _, _, err := c.run("", args...); err == nil || exitCode(err) != exitUsage {
				t.Errorf("pharox %s: err %v, want a usage error", strings.Join(args, " "), err)
			}
		}
		if _, _, err := c.run("", "quota", "set", "proxy", ps[0].ID.String(), "--max-leases", "1"); err == nil ||
			exitCode(err) != exitUsage || !strings.Contains(err.Error(), "max_concurrency") {
			t.Errorf("proxy with --max-leases: err %v, want a usage error pointing to max_concurrency", err)
		}
		if _, _, err := c.run("", "quota", "set", "pool", "a", "--bytes-per-month", "0"); !errors.Is(err, pharox.ErrInvalidArgument) ||
			!strings.Contains(err.Error(), "pharox quota delete pool a") {
			t.Errorf("removing the last limit: err %v, want advice to delete the quota", err)
		}
		if _, _, err := c.run("", "quota", "get", "consumer", "nobody"); !errors.Is(err, pharox.ErrConsumerNotFound) {
			t.Errorf("quota of an unknown consumer: err %v", err)
		}

		if out := c.ok("quota", "delete", "consumer", "scraper-1"); out != "deleted the quota of consumer \"scraper-1\"\n" {
			t.Fatalf("quota delete = %q", out)
		}
		_, _, err = c.run("", "quota", "get", "consumer", "scraper-1")
		if !errors.Is(err, pharox.ErrQuotaNotFound) || !strings.Contains(err.Error(), `no quota is set for consumer "scraper-1"`) {
			t.Fatalf("deleted quota: err %v", err)
		}
		c.ok("lease", "acquire", "--pool", "a", "--consumer", "scraper-1")

		audit := decode[[]api.AuditEntry](t, c.ok("audit", "--json"))
		actions := map[string]int{}
		for _, e := range audit {
			actions[e.Action]++
		}
		if actions["quota.set"] != 4 || actions["quota.delete"] != 1 {
			t.Fatalf("audit actions %v, want 4 quota.set and 1 quota.delete", actions)
		}
	})
}

func TestUsageCommand(t *testing.T) {
	bothModes(t, func(t *testing.T, c *cli) {
		c.ok("pool", "create", "a")
		c.ok("pool", "create", "b")
		c.run("10.0.0.1:80\n", "proxy", "import", "-", "--pool", "a")
		c.run("10.0.0.2:80\n", "proxy", "import", "-", "--pool", "b")
		ctx := context.Background()
		mgr := pharox.NewManager(c.store)
		for _, u := range []struct {
			pool, consumer, target string
			usage                  pharox.Usage
		}{
			{"a", "scraper-1", "example.com", pharox.Usage{Requests: 2, BytesSent: 1000, BytesReceived: 2_500_000}},
			{"a", "scraper-1", "", pharox.Usage{Requests: 1, BytesSent: 10, BytesReceived: 20}},
			{"b", "scraper-2", "example.org", pharox.Usage{Requests: 5, BytesSent: 500, BytesReceived: 400}},
		} {
			l, err := mgr.Acquire(ctx, u.pool, &pharox.AcquireOptions{Consumer: u.consumer, Target: u.target})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := mgr.ReleaseWithUsage(ctx, l.ID, u.usage); err != nil {
				t.Fatal(err)
			}
		}

		table := c.ok("usage")
		lines := strings.Split(strings.TrimSpace(table), "\n")
		if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "CONSUMER LEASES REQUESTS SENT RECEIVED TOTAL" ||
			strings.Join(strings.Fields(lines[1]), " ") != "scraper-1 2 3 1.01 kB 2.50 MB 2.50 MB" ||
			strings.Join(strings.Fields(lines[2]), " ") != "scraper-2 1 5 500 B 400 B 900 B" ||
			strings.Join(strings.Fields(lines[3]), " ") != "(all) 3 8 1.51 kB 2.50 MB 2.50 MB" {
			t.Fatalf("usage table =\n%s", table)
		}
		if out := c.ok("usage", "--group-by", "target", "--pool", "a"); !strings.Contains(out, "example.com") || !strings.Contains(out, "(none)") ||
			strings.Contains(out, "example.org") {
			t.Fatalf("usage by target in pool a =\n%s", out)
		}
		rep := decode[api.UsageReport](t, c.ok("usage", "--group-by", "pool", "--json"))
		if rep.GroupBy != "pool" || len(rep.Rows) != 2 || rep.Since == nil {
			t.Fatalf("usage --json = %+v", rep)
		}
		for _, r := range rep.Rows {
			if (r.Name == "a") != (r.BytesReceived == 2_500_020) {
				t.Fatalf("usage by pool = %+v", rep.Rows)
			}
		}
		records, err := csv.NewReader(strings.NewReader(c.ok("usage", "--csv", "--consumer", "scraper-2", "--since", ""))).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if len(records) != 2 || strings.Join(records[0], ",") != "group_by,key,name,leases,requests,bytes_sent,bytes_received" ||
			strings.Join(records[1][2:], ",") != "scraper-2,1,5,500,400" {
			t.Fatalf("usage --csv = %q", records)
		}
		if out := c.ok("usage", "--since", "72h", "--until", "48h"); strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Fatalf("usage until two days ago = %q, want the header alone", out)
		}
		for _, args := range [][]string{
			{"usage", "--group-by", "day"},
			{"usage", "--since", "yesterday"},
			{"usage", "--json", "--csv"},
			{"usage", "--since", "1h", "--until", "2h"},
		} {
			if _, _, err := c.run("", args...); err == nil || exitCode(err) != exitUsage {
				t.Errorf("pharox %s: err %v, want a usage error", strings.Join(args, " "), err)
			}
		}
		if _, _, err := c.run("", "usage", "--consumer", "nobody"); !errors.Is(err, pharox.ErrConsumerNotFound) {
			t.Errorf("usage of an unknown consumer: err %v", err)
		}
	})
}

func TestParseAndFormatBytes(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "1000": 1000, "10GB": 10e9, "10 gb": 10e9, "1.5TB": 1.5e12, "512MiB": 512 << 20, "2k": 2000, "7B": 7, "1KiB": 1024,
	} {
		if got, err := parseBytes("--x", in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "lots", "-1GB", "GB", "1e30"} {
		if _, err := parseBytes("--x", bad); err == nil || !strings.Contains(err.Error(), "--x") {
			t.Errorf("parseBytes(%q) = %v, want an error naming the flag", bad, err)
		}
	}
	for n, want := range map[int64]string{
		0: "0 B", 999: "999 B", 1000: "1.00 kB", 1500: "1.50 kB", 99_949: "99.9 kB", 999_499: "999 kB", 999_500: "1.00 MB",
		2_500_000: "2.50 MB", 10e9: "10.0 GB", 1e12: "1.00 TB",
	} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
