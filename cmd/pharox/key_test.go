package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

func TestKeyCommands(t *testing.T) {
	bothModes(t, func(t *testing.T, c *cli) {
		out := c.ok("key", "create", "scraper", "--consumer", "s1", "--consumer", "s2", "--pool", "main", "--expires-in", "720h")
		if !strings.HasPrefix(out, "created consumer key scraper (") || !strings.Contains(out, "consumers: s1, s2") ||
			!strings.Contains(out, "pools: main") || !strings.Contains(out, "expires: ") || !strings.Contains(out, "secret: phx_") {
			t.Fatalf("create output = %q", out)
		}
		secret := out[strings.Index(out, "secret: ")+len("secret: "):]
		secret = secret[:strings.Index(secret, "\n")]
		viewer := decode[api.CreatedKey](t, c.ok("key", "create", "wall", "--role", "viewer", "--json"))
		if viewer.Role != "viewer" || !strings.HasPrefix(viewer.Secret, "phx_") {
			t.Fatalf("create --json = %+v", viewer)
		}
		if _, _, err := c.run("", "key", "create", "scraper"); !errors.Is(err, pharox.ErrAlreadyExists) || !strings.Contains(err.Error(), `"scraper"`) {
			t.Fatalf("duplicate: %v", err)
		}
		if _, _, err := c.run("", "key", "create", "x", "--role", "root"); err == nil || !strings.Contains(err.Error(), "--role") {
			t.Fatalf("bad role: %v", err)
		}
		if _, _, err := c.run("", "key", "create", "x", "--role", "viewer", "--consumer", "c"); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Fatalf("viewer with consumers: %v, want ErrInvalidArgument", err)
		}

		list := c.ok("key", "list")
		if strings.Contains(list, secret) || strings.Contains(list, viewer.Secret) {
			t.Fatalf("list shows a secret: %q", list)
		}
		lines := strings.Split(strings.TrimSpace(list), "\n")
		if len(lines) != 3 || !strings.Contains(lines[1], "scraper") || !strings.Contains(lines[1], "s1,s2") || !strings.Contains(lines[2], "wall") {
			t.Fatalf("list = %q", list)
		}

		rotated := c.ok("key", "rotate", "scraper")
		if !strings.Contains(rotated, "rotated consumer key scraper") || strings.Contains(rotated, secret) || !strings.Contains(rotated, "secret: phx_") {
			t.Fatalf("rotate = %q", rotated)
		}
		if out := c.ok("key", "revoke", viewer.ID.String()); !strings.Contains(out, "revoked key wall") {
			t.Fatalf("revoke = %q", out)
		}
		if _, _, err := c.run("", "key", "rotate", "wall"); !errors.Is(err, pharox.ErrKeyRevoked) {
			t.Fatalf("rotate revoked: %v, want ErrKeyRevoked", err)
		}
		if _, _, err := c.run("", "key", "revoke", "nobody"); !errors.Is(err, pharox.ErrKeyNotFound) || !strings.Contains(err.Error(), `"nobody"`) {
			t.Fatalf("revoke unknown: %v", err)
		}
		if keys := decode[[]api.APIKey](t, c.ok("key", "list", "--json")); len(keys) != 2 || keys[1].RevokedAt == nil {
			t.Fatalf("list --json = %+v", keys)
		}

		audit := decode[[]api.AuditEntry](t, c.ok("audit", "--json", "--since", "1h"))
		actions := map[string]int{}
		for _, e := range audit {
			actions[e.Action]++
		}
		if actions["key.create"] != 2 || actions["key.rotate"] != 1 || actions["key.revoke"] != 1 {
			t.Fatalf("audit actions %v", actions)
		}
		if out := c.ok("audit", "--action", "key.revoke"); !strings.Contains(out, "revoked key \"wall\"") {
			t.Fatalf("audit table = %q", out)
		}
		if _, _, err := c.run("", "audit", "--since", "yesterday"); err == nil || !strings.Contains(err.Error(), "--since") {
			t.Fatalf("bad --since: %v", err)
		}
	})
}
