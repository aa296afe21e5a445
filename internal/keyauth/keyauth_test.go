package keyauth

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
)

func TestBootstrapRoles(t *testing.T) {
	a := New(nil, []string{"admin-1", ""}, []string{"cons-1", "cons-2"})
	for key, want := range map[string]pharox.KeyRole{
		"admin-1": pharox.KeyRoleAdmin, "cons-1": pharox.KeyRoleConsumer, "cons-2": pharox.KeyRoleConsumer,
		"": "", "admin-": "", "admin-12": "", "CONS-1": "",
	} {
		id, err := a.Authenticate(context.Background(), key)
		switch {
		case want == "" && !errors.Is(err, ErrUnknownKey):
			t.Errorf("%q: %v, %v; want ErrUnknownKey", key, id, err)
		case want != "" && (err != nil || id.Role != want || id.Name != BootstrapName || id.Scoped()):
			t.Errorf("%q: %+v, %v; want unscoped bootstrap %s", key, id, err, want)
		}
	}
	if !New(nil, nil, []string{""}).Empty() {
		t.Error("empty keys must not count as configured")
	}
}

// storedKey creates a key in store and returns its secret.
func storedKey(t *testing.T, store pharox.KeyStore, k pharox.APIKey) (string, *pharox.APIKey) {
	t.Helper()
	secret, err := pharox.NewAPIKeySecret()
	if err != nil {
		t.Fatal(err)
	}
	k.Digest, k.Hint = pharox.APIKeyDigest(secret), pharox.APIKeyHint(secret)
	created, err := store.CreateAPIKey(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	return secret, created
}

func TestStoredKeys(t *testing.T) {
	ctx := context.Background()
	store := testfactory.Memory(t)
	defer store.Close()
	a := New(store, []string{"boot"}, nil)
	if a.Empty() || a.KeyStore() == nil {
		t.Fatal("a memory store keeps keys")
	}
	secret, k := storedKey(t, store, pharox.APIKey{Name: "scraper", Role: pharox.KeyRoleConsumer, Pools: []string{"main"}})
	id, err := a.Authenticate(ctx, secret)
	if err != nil || id.Name != "scraper" || !id.Scoped() || id.DefaultConsumer() != "scraper" ||
		!id.MayUsePool("main") || id.MayUsePool("other") || id.MayUseConsumer("other") {
		t.Fatalf("stored consumer key: %+v, %v", id, err)
	}
	if _, err := a.Authenticate(ctx, secret+"x"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("a longer secret: %v, want ErrUnknownKey", err)
	}

	// Use is written on Flush, in one call.
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := store.GetAPIKey(ctx, k.ID)
	if err != nil || got.LastUsedAt == nil {
		t.Fatalf("after a use and a flush: %+v, %v; want last_used_at", got, err)
	}

	// A revocation made elsewhere is seen once the cached lookup is old;
	// Forget drops it at once.
	if _, err := store.RevokeAPIKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(ctx, secret); err != nil {
		t.Fatalf("within the cache's life the key still passes here: %v", err)
	}
	a.Forget()
	if _, err := a.Authenticate(ctx, secret); !errors.Is(err, pharox.ErrKeyRevoked) {
		t.Fatalf("revoked key: %v, want ErrKeyRevoked", err)
	}

	past := time.Now().Add(-time.Minute)
	expired, _ := storedKey(t, store, pharox.APIKey{Name: "old", Role: pharox.KeyRoleViewer, ExpiresAt: &past})
	if _, err := a.Authenticate(ctx, expired); !errors.Is(err, pharox.ErrKeyExpired) {
		t.Fatalf("expired key: %v, want ErrKeyExpired", err)
	}
	// A key made after a miss was cached is found once the miss is old.
	unknown, _ := pharox.NewAPIKeySecret()
	if _, err := a.Authenticate(ctx, unknown); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := store.CreateAPIKey(ctx, pharox.APIKey{Name: "late", Role: pharox.KeyRoleAdmin,
		Digest: pharox.APIKeyDigest(unknown), Hint: pharox.APIKeyHint(unknown)}); err != nil {
		t.Fatal(err)
	}
	a.ttl = 0 // every lookup is old
	if id, err := a.Authenticate(ctx, unknown); err != nil || id.Role != pharox.KeyRoleAdmin || id.Scoped() {
		t.Fatalf("key created after a cached miss: %+v, %v", id, err)
	}
}
