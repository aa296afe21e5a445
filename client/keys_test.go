package client_test

import (
	"context"
	"errors"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/client"
)

// TestKeysEndToEnd drives the key methods against the real service: the
// secret comes back once, listings never carry it, a per-request key
// (ContextWithAPIKey) acts as that key, and revoked or rotated secrets
// stop with the client's sentinels.
func TestKeysEndToEnd(t *testing.T) {
	ctx := context.Background()
	url := startServer(t)
	admin := newClient(t, url, adminKey)
	must(admin.CreatePool(ctx, "main", ""))

	created := must(admin.CreateKey(ctx, api.CreateKeyRequest{Name: "scraper", Role: "consumer", Consumers: []string{"s1"}, Pools: []string{"main"}}))
	if created.Secret == "" || created.Name != "scraper" {
		t.Fatalf("created %+v", created.APIKey)
	}
	if _, err := admin.CreateKey(ctx, api.CreateKeyRequest{Name: "scraper", Role: "viewer"}); !errors.Is(err, pharox.ErrAlreadyExists) {
		t.Fatalf("duplicate name: %v, want ErrAlreadyExists", err)
	}
	keys := must(admin.ListKeys(ctx))
	if len(keys) != 1 || keys[0].Name != "scraper" || keys[0].Hint == "" || keys[0].Consumers[0] != "s1" {
		t.Fatalf("list %+v", keys)
	}
	if _, err := admin.GetKey(ctx, "nobody"); !errors.Is(err, pharox.ErrKeyNotFound) {
		t.Fatalf("unknown key: %v, want ErrKeyNotFound", err)
	}

	// One client, the stored key per request.
	as := client.ContextWithAPIKey(ctx, created.Secret)
	self := must(admin.Self(as))
	if self.Name != "scraper" || !self.Scoped || self.Pools[0] != "main" {
		t.Fatalf("self through ContextWithAPIKey: %+v", self)
	}
	if _, err := admin.CreatePool(as, "other", ""); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("consumer key creating a pool: %v, want ErrForbidden", err)
	}

	rotated := must(admin.RotateKey(ctx, "scraper"))
	if _, err := admin.Self(as); !errors.Is(err, client.ErrUnauthorized) {
		t.Fatalf("old secret after rotation: %v, want ErrUnauthorized", err)
	}
	must(admin.Self(client.ContextWithAPIKey(ctx, rotated.Secret)))
	revoked := must(admin.RevokeKey(ctx, created.ID.String()))
	if revoked.RevokedAt == nil {
		t.Fatalf("revoked %+v", revoked)
	}
	if _, err := admin.RotateKey(ctx, "scraper"); !errors.Is(err, pharox.ErrKeyRevoked) {
		t.Fatalf("rotating a revoked key: %v, want ErrKeyRevoked", err)
	}
	entries := must(admin.ListAudit(ctx, pharox.AuditQuery{Action: "key.rotate"}))
	if len(entries) != 1 || entries[0].Actor != "bootstrap" || entries[0].TargetID != created.ID.String() {
		t.Fatalf("audit %+v", entries)
	}
}
