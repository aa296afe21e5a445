package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

// bothModes runs fn in direct mode and through a real server: the
// commands must behave the same.
func bothModes(t *testing.T, fn func(t *testing.T, c *cli)) {
	t.Run("direct", func(t *testing.T) { fn(t, newDirectCLI(t)) })
	t.Run("remote", func(t *testing.T) { fn(t, newRemoteCLI(t)) })
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("output is not the expected JSON: %v\n%s", err, s)
	}
	return v
}

func TestPoolCommands(t *testing.T) {
	bothModes(t, func(t *testing.T, c *cli) {
		out := c.ok("pool", "create", "main", "--description", "primary pool")
		if !strings.HasPrefix(out, "created pool main (") {
			t.Fatalf("create output = %q", out)
		}
		created := decode[api.Pool](t, c.ok("pool", "create", "backup", "--json"))
		if created.Name != "backup" || created.ID.String() == "" {
			t.Fatalf("create --json = %+v", created)
		}

		_, _, err := c.run("", "pool", "create", "main")
		if !errors.Is(err, pharox.ErrAlreadyExists) {
			t.Fatalf("duplicate create: err = %v, want ErrAlreadyExists", err)
		}
		_, _, err = c.run("", "pool", "create", "  ")
		if !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Fatalf("blank name: err = %v, want ErrInvalidArgument", err)
		}

		table := c.ok("pool", "list")
		lines := strings.Split(strings.TrimSpace(table), "\n")
		if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[0], "NAME") {
			t.Fatalf("list table = %q", table)
		}
		// Ordered by name.
		if !strings.Contains(lines[1], "backup") || !strings.Contains(lines[2], "main") || !strings.Contains(lines[2], "primary pool") {
			t.Fatalf("list rows = %q", lines[1:])
		}
		pools := decode[[]api.Pool](t, c.ok("pool", "list", "--json"))
		if len(pools) != 2 || pools[0].Name != "backup" || pools[1].Description != "primary pool" {
			t.Fatalf("list --json = %+v", pools)
		}

		// Delete by id and by name.
		if out := c.ok("pool", "delete", created.ID.String()); !strings.Contains(out, "deleted pool backup") {
			t.Fatalf("delete by id = %q", out)
		}
		deleted := decode[api.Pool](t, c.ok("pool", "delete", "main", "--json"))
		if deleted.Name != "main" {
			t.Fatalf("delete --json = %+v", deleted)
		}
		_, _, err = c.run("", "pool", "delete", "main")
		if !errors.Is(err, pharox.ErrPoolNotFound) || !strings.Contains(err.Error(), `"main"`) {
			t.Fatalf("delete unknown: err = %v, want ErrPoolNotFound naming the pool", err)
		}
		if pools := decode[[]api.Pool](t, c.ok("pool", "list", "--json")); len(pools) != 0 {
			t.Fatalf("pools left: %+v", pools)
		}
		if out := c.ok("pool", "list"); strings.TrimSpace(out) != "ID  NAME  DESCRIPTION  CREATED" {
			t.Fatalf("empty list = %q", out)
		}
	})
}
