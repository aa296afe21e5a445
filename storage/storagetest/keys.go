package storagetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// The Keys, Audit and LeaseVerdicts sections check [pharox.KeyStore] and
// [pharox.LeaseVerdictStore]; stores that implement neither skip them.

var keyTests = []subtest{
	{name: "CreateAndGet", fn: testKeysCreateAndGet},
	{name: "Invalid", fn: testKeysInvalid},
	{name: "NotFound", fn: testKeysNotFound},
	{name: "ListOrder", fn: testKeysListOrder},
	{name: "Duplicates", fn: testKeysDuplicates},
	{name: "ConcurrentCreate", fn: testKeysConcurrentCreate},
	{name: "RevokeIdempotent", fn: testKeysRevoke},
	{name: "Rotate", fn: testKeysRotate},
	{name: "TouchKeepsLatest", fn: testKeysTouch},
	{name: "Copies", fn: testKeysCopies},
	{name: "TimesRoundTrip", fn: testKeysTimes},
}

var auditTests = []subtest{
	{name: "AppendAndList", fn: testAuditAppendAndList},
	{name: "AppendIdempotent", fn: testAuditIdempotent},
	{name: "StampsZeroTime", fn: testAuditStamps},
	{name: "Invalid", fn: testAuditInvalid},
	{name: "Filters", fn: testAuditFilters},
	{name: "Limit", fn: testAuditLimit},
	{name: "Purge", fn: testAuditPurge},
}

var leaseVerdictTests = []subtest{
	{name: "OneOfConcurrentClaims", fn: testVerdictConcurrent},
	{name: "EndedLease", fn: testVerdictEnded},
	{name: "PerLease", fn: testVerdictPerLease},
	{name: "UnknownLease", fn: testVerdictUnknown},
}

// keyStore returns the fixture's store as a KeyStore, or skips.
func (f *fixture) keyStore() pharox.KeyStore {
	f.t.Helper()
	ks, ok := f.s.(pharox.KeyStore)
	if !ok {
		f.t.Skipf("storagetest: %T does not implement pharox.KeyStore", f.s)
	}
	return ks
}

func (f *fixture) verdictStore() pharox.LeaseVerdictStore {
	f.t.Helper()
	vs, ok := f.s.(pharox.LeaseVerdictStore)
	if !ok {
		f.t.Skipf("storagetest: %T does not implement pharox.LeaseVerdictStore", f.s)
	}
	return vs
}

// keyFor returns a valid admin key named name whose secret is "secret-"+name.
func keyFor(name string) pharox.APIKey {
	secret := "phx_secret-" + name
	return pharox.APIKey{Name: name, Role: pharox.KeyRoleAdmin, Digest: pharox.APIKeyDigest(secret), Hint: pharox.APIKeyHint(secret)}
}

func (f *fixture) createKey(ks pharox.KeyStore, k pharox.APIKey) *pharox.APIKey {
	f.t.Helper()
	got, err := ks.CreateAPIKey(f.ctx, k)
	if err != nil {
		f.t.Fatalf("CreateAPIKey(%q): %v", k.Name, err)
	}
	return got
}

// sameKey fails unless got and want agree on every field.
func sameKey(t testing.TB, what string, got, want *pharox.APIKey) {
	t.Helper()
	if d := keyDiff(got, want); d != "" {
		t.Fatalf("%s: %s\n got  %+v\n want %+v", what, d, got, want)
	}
}

func keyDiff(a, b *pharox.APIKey) string {
	switch {
	case a == nil || b == nil:
		return "nil key"
	case a.ID != b.ID:
		return "ID differs"
	case a.Name != b.Name:
		return "Name differs"
	case a.Role != b.Role:
		return "Role differs"
	case a.Digest != b.Digest:
		return "Digest differs"
	case a.Hint != b.Hint:
		return "Hint differs"
	case !slices.Equal(a.Consumers, b.Consumers):
		return "Consumers differ"
	case !slices.Equal(a.Pools, b.Pools):
		return "Pools differ"
	case !a.CreatedAt.Equal(b.CreatedAt):
		return "CreatedAt differs"
	case !sameTimePtr(a.ExpiresAt, b.ExpiresAt):
		return "ExpiresAt differs"
	case !sameTimePtr(a.RevokedAt, b.RevokedAt):
		return "RevokedAt differs"
	case !sameTimePtr(a.LastUsedAt, b.LastUsedAt):
		return "LastUsedAt differs"
	}
	return ""
}

func sameTimePtr(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(*b)
}

func near(t time.Time, what string) error {
	if d := time.Since(t); d > clockSlack || d < -clockSlack {
		return fmt.Errorf("%s %v is %v away from now", what, t, d)
	}
	return nil
}

func testKeysCreateAndGet(t *testing.T, f *fixture) {
	ks := f.keyStore()
	in := keyFor("scraper")
	in.Role = pharox.KeyRoleConsumer
	in.Consumers = []string{"team-b", "team-a"}
	in.Pools = []string{"eu", "asia"}
	k := f.createKey(ks, in)
	if k.ID == uuid.Nil {
		t.Fatal("CreateAPIKey left the id empty")
	}
	if err := near(k.CreatedAt, "CreatedAt"); err != nil {
		t.Fatal(err)
	}
	if k.CreatedAt.Location() != time.UTC {
		t.Errorf("CreatedAt %v not in UTC", k.CreatedAt)
	}
	want := in
	want.ID, want.CreatedAt = k.ID, k.CreatedAt
	sameKey(t, "created", k, &want)
	if k.ExpiresAt != nil || k.RevokedAt != nil || k.LastUsedAt != nil {
		t.Fatalf("new key has times set: %+v", k)
	}
	for _, get := range []struct {
		what string
		fn   func() (*pharox.APIKey, error)
	}{
		{"GetAPIKey", func() (*pharox.APIKey, error) { return ks.GetAPIKey(f.ctx, k.ID) }},
		{"GetAPIKeyByName", func() (*pharox.APIKey, error) { return ks.GetAPIKeyByName(f.ctx, "scraper") }},
		{"GetAPIKeyByDigest", func() (*pharox.APIKey, error) { return ks.GetAPIKeyByDigest(f.ctx, in.Digest) }},
	} {
		got, err := get.fn()
		if err != nil {
			t.Fatalf("%s: %v", get.what, err)
		}
		sameKey(t, get.what, got, k)
	}

	// A caller-chosen id and creation time are kept.
	id := uuid.New()
	at := time.Date(2025, 6, 7, 8, 9, 10, 0, time.UTC)
	in2 := keyFor("viewer")
	in2.Role, in2.ID, in2.CreatedAt = pharox.KeyRoleViewer, id, at
	k2 := f.createKey(ks, in2)
	if k2.ID != id || !k2.CreatedAt.Equal(at) {
		t.Fatalf("chosen id/time: got %s %v, want %s %v", k2.ID, k2.CreatedAt, id, at)
	}
	got, err := ks.GetAPIKey(f.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	sameKey(t, "GetAPIKey(chosen id)", got, k2)
}

func testKeysInvalid(t *testing.T, f *fixture) {
	ks := f.keyStore()
	bad := []pharox.APIKey{
		{Name: "", Role: pharox.KeyRoleAdmin, Digest: pharox.APIKeyDigest("x")},
		{Name: "k", Role: "root", Digest: pharox.APIKeyDigest("x")},
		{Name: "k", Role: pharox.KeyRoleAdmin},
		{Name: "k", Role: pharox.KeyRoleViewer, Digest: pharox.APIKeyDigest("x"), Consumers: []string{"a"}},
	}
	for _, k := range bad {
		_, err := ks.CreateAPIKey(f.ctx, k)
		wantErr(t, fmt.Sprintf("CreateAPIKey(%+v)", k), err, pharox.ErrInvalidArgument)
	}
	keys, err := ks.ListAPIKeys(f.ctx)
	if err != nil || len(keys) != 0 {
		t.Fatalf("after invalid creates: %d keys, %v", len(keys), err)
	}
}

func testKeysNotFound(t *testing.T, f *fixture) {
	ks := f.keyStore()
	f.createKey(ks, keyFor("present"))
	id := uuid.New()
	_, err := ks.GetAPIKey(f.ctx, id)
	wantErr(t, "GetAPIKey(unknown)", err, pharox.ErrKeyNotFound)
	_, err = ks.GetAPIKeyByName(f.ctx, "absent")
	wantErr(t, "GetAPIKeyByName(unknown)", err, pharox.ErrKeyNotFound)
	_, err = ks.GetAPIKeyByDigest(f.ctx, pharox.APIKeyDigest("phx_nobody"))
	wantErr(t, "GetAPIKeyByDigest(unknown)", err, pharox.ErrKeyNotFound)
	_, err = ks.GetAPIKeyByDigest(f.ctx, [32]byte{})
	wantErr(t, "GetAPIKeyByDigest(zero)", err, pharox.ErrKeyNotFound)
	_, err = ks.RevokeAPIKey(f.ctx, id)
	wantErr(t, "RevokeAPIKey(unknown)", err, pharox.ErrKeyNotFound)
	_, err = ks.RotateAPIKey(f.ctx, id, pharox.APIKeyDigest("phx_new"), "phx_new")
	wantErr(t, "RotateAPIKey(unknown)", err, pharox.ErrKeyNotFound)
}

func testKeysListOrder(t *testing.T, f *fixture) {
	ks := f.keyStore()
	keys, err := ks.ListAPIKeys(f.ctx)
	if err != nil || len(keys) != 0 {
		t.Fatalf("ListAPIKeys on an empty store: %d keys, %v", len(keys), err)
	}
	byName := map[string]*pharox.APIKey{}
	for _, n := range []string{"charlie", "alpha", "delta", "bravo"} {
		byName[n] = f.createKey(ks, keyFor(n))
	}
	revoked, err := ks.RevokeAPIKey(f.ctx, byName["delta"].ID)
	if err != nil {
		t.Fatal(err)
	}
	byName["delta"] = revoked
	keys, err = ks.ListAPIKeys(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, k := range keys {
		names = append(names, k.Name)
		sameKey(t, "listed "+k.Name, k, byName[k.Name])
	}
	if want := []string{"alpha", "bravo", "charlie", "delta"}; !slices.Equal(names, want) {
		t.Fatalf("ListAPIKeys order %v, want %v (revoked keys included)", names, want)
	}
}

func testKeysDuplicates(t *testing.T, f *fixture) {
	ks := f.keyStore()
	a := f.createKey(ks, keyFor("a"))
	sameName := keyFor("a")
	sameName.Digest = pharox.APIKeyDigest("phx_other")
	_, err := ks.CreateAPIKey(f.ctx, sameName)
	wantErr(t, "CreateAPIKey(same name)", err, pharox.ErrAlreadyExists)
	sameDigest := keyFor("b")
	sameDigest.Digest = a.Digest
	_, err = ks.CreateAPIKey(f.ctx, sameDigest)
	wantErr(t, "CreateAPIKey(same digest)", err, pharox.ErrAlreadyExists)
	sameID := keyFor("c")
	sameID.ID = a.ID
	_, err = ks.CreateAPIKey(f.ctx, sameID)
	wantErr(t, "CreateAPIKey(same id)", err, pharox.ErrAlreadyExists)

	if _, err := ks.RevokeAPIKey(f.ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	_, err = ks.CreateAPIKey(f.ctx, sameName)
	wantErr(t, "CreateAPIKey(name of a revoked key)", err, pharox.ErrAlreadyExists)
	_, err = ks.CreateAPIKey(f.ctx, sameDigest)
	wantErr(t, "CreateAPIKey(digest of a revoked key)", err, pharox.ErrAlreadyExists)
	keys, err := ks.ListAPIKeys(f.ctx)
	if err != nil || len(keys) != 1 {
		t.Fatalf("after rejected duplicates: %d keys, %v; want 1", len(keys), err)
	}
}

func testKeysConcurrentCreate(t *testing.T, f *fixture) {
	ks := f.keyStore()
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			k := keyFor("racer")
			k.Digest = pharox.APIKeyDigest(fmt.Sprintf("phx_racer-%d", i))
			_, errs[i] = ks.CreateAPIKey(f.ctx, k)
		})
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, pharox.ErrAlreadyExists):
			t.Errorf("creator %d: %v, want nil or ErrAlreadyExists", i, err)
		}
	}
	if won != 1 {
		t.Fatalf("%d of %d concurrent creates of one name succeeded, want 1", won, n)
	}
}

func testKeysRevoke(t *testing.T, f *fixture) {
	ks := f.keyStore()
	k := f.createKey(ks, keyFor("revokee"))
	r1, err := ks.RevokeAPIKey(f.ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r1.RevokedAt == nil {
		t.Fatal("RevokeAPIKey left RevokedAt nil")
	}
	if err := near(*r1.RevokedAt, "RevokedAt"); err != nil {
		t.Fatal(err)
	}
	want := *k
	want.RevokedAt = r1.RevokedAt
	sameKey(t, "revoked", r1, &want)
	r2, err := ks.RevokeAPIKey(f.ctx, k.ID)
	if err != nil {
		t.Fatalf("second RevokeAPIKey: %v", err)
	}
	sameKey(t, "revoked twice", r2, r1)
	// A revoked key is still found by its secret, so callers can say why
	// it does not work.
	got, err := ks.GetAPIKeyByDigest(f.ctx, k.Digest)
	if err != nil {
		t.Fatalf("GetAPIKeyByDigest(revoked): %v", err)
	}
	sameKey(t, "revoked by digest", got, r1)
	wantErr(t, "Usable(revoked)", got.Usable(time.Now()), pharox.ErrKeyRevoked)
}

func testKeysRotate(t *testing.T, f *fixture) {
	ks := f.keyStore()
	k := f.createKey(ks, keyFor("rotor"))
	other := f.createKey(ks, keyFor("other"))
	newSecret := "phx_rotated-secret"
	r, err := ks.RotateAPIKey(f.ctx, k.ID, pharox.APIKeyDigest(newSecret), pharox.APIKeyHint(newSecret))
	if err != nil {
		t.Fatal(err)
	}
	want := *k
	want.Digest, want.Hint = pharox.APIKeyDigest(newSecret), pharox.APIKeyHint(newSecret)
	sameKey(t, "rotated", r, &want)
	_, err = ks.GetAPIKeyByDigest(f.ctx, k.Digest)
	wantErr(t, "GetAPIKeyByDigest(old secret)", err, pharox.ErrKeyNotFound)
	got, err := ks.GetAPIKeyByDigest(f.ctx, pharox.APIKeyDigest(newSecret))
	if err != nil {
		t.Fatalf("GetAPIKeyByDigest(new secret): %v", err)
	}
	sameKey(t, "by new digest", got, r)

	// The old digest is free again; another key's digest is not.
	_, err = ks.RotateAPIKey(f.ctx, k.ID, other.Digest, "x")
	wantErr(t, "RotateAPIKey(digest of another key)", err, pharox.ErrAlreadyExists)
	if got, err := ks.GetAPIKey(f.ctx, k.ID); err != nil || got.Digest != want.Digest {
		t.Fatalf("a refused rotation changed the key: %v", err)
	}
	_, err = ks.RotateAPIKey(f.ctx, k.ID, [32]byte{}, "x")
	wantErr(t, "RotateAPIKey(zero digest)", err, pharox.ErrInvalidArgument)

	if _, err := ks.RevokeAPIKey(f.ctx, other.ID); err != nil {
		t.Fatal(err)
	}
	_, err = ks.RotateAPIKey(f.ctx, other.ID, pharox.APIKeyDigest("phx_revived"), "phx_revi")
	wantErr(t, "RotateAPIKey(revoked)", err, pharox.ErrKeyRevoked)
	if _, err := ks.GetAPIKeyByDigest(f.ctx, other.Digest); err != nil {
		t.Fatalf("a refused rotation of a revoked key changed it: %v", err)
	}
}

func testKeysTouch(t *testing.T, f *fixture) {
	ks := f.keyStore()
	a := f.createKey(ks, keyFor("a"))
	b := f.createKey(ks, keyFor("b"))
	c := f.createKey(ks, keyFor("c"))
	t0 := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	touch := func(used map[uuid.UUID]time.Time) {
		t.Helper()
		if err := ks.TouchAPIKeys(f.ctx, used); err != nil {
			t.Fatalf("TouchAPIKeys: %v", err)
		}
	}
	lastUsed := func(id uuid.UUID) *time.Time {
		t.Helper()
		k, err := ks.GetAPIKey(f.ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return k.LastUsedAt
	}
	touch(nil)
	touch(map[uuid.UUID]time.Time{})
	touch(map[uuid.UUID]time.Time{a.ID: t0, b.ID: t0.Add(time.Hour), uuid.New(): t0})
	if got := lastUsed(a.ID); got == nil || !got.Equal(t0) {
		t.Fatalf("a LastUsedAt %v, want %v", got, t0)
	}
	if got := lastUsed(b.ID); got == nil || !got.Equal(t0.Add(time.Hour)) {
		t.Fatalf("b LastUsedAt %v, want %v", got, t0.Add(time.Hour))
	}
	if got := lastUsed(c.ID); got != nil {
		t.Fatalf("untouched c LastUsedAt %v", got)
	}
	// Earlier times (a batch from a slower process) do not move it back.
	touch(map[uuid.UUID]time.Time{a.ID: t0.Add(-time.Minute), b.ID: t0.Add(2 * time.Hour)})
	if got := lastUsed(a.ID); got == nil || !got.Equal(t0) {
		t.Fatalf("a LastUsedAt %v after an older touch, want %v", got, t0)
	}
	if got := lastUsed(b.ID); got == nil || !got.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("b LastUsedAt %v, want %v", got, t0.Add(2*time.Hour))
	}
	// Revoked keys are touched too (a use in flight when it was revoked).
	if _, err := ks.RevokeAPIKey(f.ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	touch(map[uuid.UUID]time.Time{c.ID: t0})
	if got := lastUsed(c.ID); got == nil || !got.Equal(t0) {
		t.Fatalf("revoked c LastUsedAt %v, want %v", got, t0)
	}
}

func testKeysCopies(t *testing.T, f *fixture) {
	ks := f.keyStore()
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	in := keyFor("copy")
	in.Role = pharox.KeyRoleConsumer
	in.Consumers = []string{"c1", "c2"}
	in.Pools = []string{"p1"}
	in.ExpiresAt = &exp
	k := f.createKey(ks, in)
	want := k.Clone()
	// Mutating the input after the call changes nothing stored.
	in.Consumers[0], in.Pools[0] = "mutated", "mutated"
	*in.ExpiresAt = time.Unix(0, 0)
	got, err := ks.GetAPIKey(f.ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	sameKey(t, "after mutating the input", got, want)
	// Mutating results changes nothing stored either.
	scribbleKey := func(k *pharox.APIKey) {
		k.Name, k.Role, k.Hint = "mutated", pharox.KeyRoleAdmin, "mutated"
		k.Digest[0] ^= 0xff
		for i := range k.Consumers {
			k.Consumers[i] = "mutated"
		}
		for i := range k.Pools {
			k.Pools[i] = "mutated"
		}
		for _, p := range []*time.Time{k.ExpiresAt, k.RevokedAt, k.LastUsedAt} {
			if p != nil {
				*p = time.Unix(0, 0)
			}
		}
	}
	if err := ks.TouchAPIKeys(f.ctx, map[uuid.UUID]time.Time{k.ID: exp}); err != nil {
		t.Fatal(err)
	}
	revoked, err := ks.RevokeAPIKey(f.ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	want = revoked.Clone()
	scribbleKey(revoked)
	scribbleKey(k)
	for _, get := range []func() (*pharox.APIKey, error){
		func() (*pharox.APIKey, error) { return ks.GetAPIKey(f.ctx, want.ID) },
		func() (*pharox.APIKey, error) { return ks.GetAPIKeyByName(f.ctx, "copy") },
		func() (*pharox.APIKey, error) { return ks.GetAPIKeyByDigest(f.ctx, want.Digest) },
	} {
		got, err := get()
		if err != nil {
			t.Fatal(err)
		}
		sameKey(t, "after mutating results", got, want)
		scribbleKey(got)
	}
	list, err := ks.ListAPIKeys(f.ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("ListAPIKeys: %d, %v", len(list), err)
	}
	sameKey(t, "listed after mutating results", list[0], want)
	scribbleKey(list[0])
	got, err = ks.GetAPIKey(f.ctx, want.ID)
	if err != nil {
		t.Fatal(err)
	}
	sameKey(t, "after mutating a listed key", got, want)
}

// testKeysTimes checks that times round-trip at the store's precision
// (microseconds or finer) and come back in UTC.
func testKeysTimes(t *testing.T, f *fixture) {
	ks := f.keyStore()
	loc := time.FixedZone("UTC+3", 3*3600)
	created := time.Date(2026, 1, 2, 3, 4, 5, 123456789, loc)
	expires := created.Add(36*time.Hour + 987654321)
	in := keyFor("timed")
	in.CreatedAt, in.ExpiresAt = created, &expires
	k := f.createKey(ks, in)
	within := func(what string, got *time.Time, want time.Time) {
		t.Helper()
		if got == nil {
			t.Fatalf("%s is nil, want %v", what, want)
		}
		if d := got.Sub(want); d < -time.Microsecond || d > time.Microsecond {
			t.Fatalf("%s %v, want %v within 1µs", what, *got, want)
		}
		if got.Location() != time.UTC {
			t.Fatalf("%s %v not in UTC", what, *got)
		}
	}
	within("CreatedAt", &k.CreatedAt, created)
	within("ExpiresAt", k.ExpiresAt, expires)
	got, err := ks.GetAPIKey(f.ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	sameKey(t, "read back", got, k)
	used := created.Add(time.Minute + 555)
	if err := ks.TouchAPIKeys(f.ctx, map[uuid.UUID]time.Time{k.ID: used}); err != nil {
		t.Fatal(err)
	}
	got, err = ks.GetAPIKey(f.ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	within("LastUsedAt", got.LastUsedAt, used)
	// An expired key is still stored and found; Usable says why it fails.
	past := time.Now().Add(-time.Hour)
	old := keyFor("expired")
	old.ExpiresAt = &past
	f.createKey(ks, old)
	e, err := ks.GetAPIKeyByDigest(f.ctx, old.Digest)
	if err != nil {
		t.Fatalf("GetAPIKeyByDigest(expired): %v", err)
	}
	wantErr(t, "Usable(expired)", e.Usable(time.Now()), pharox.ErrKeyExpired)
}

// auditAt returns a valid entry at the given time.
func auditAt(at time.Time, actor, action string) pharox.AuditEntry {
	return pharox.AuditEntry{ID: uuid.New(), At: at, Actor: actor, Action: action,
		TargetKind: "pool", TargetID: "pool-" + action, Detail: fmt.Sprintf("%s did %s", actor, action)}
}

func (f *fixture) appendAudit(ks pharox.KeyStore, es ...pharox.AuditEntry) {
	f.t.Helper()
	for _, e := range es {
		if err := ks.AppendAudit(f.ctx, e); err != nil {
			f.t.Fatalf("AppendAudit(%s): %v", e.Action, err)
		}
	}
}

func (f *fixture) listAudit(ks pharox.KeyStore, q pharox.AuditQuery) []*pharox.AuditEntry {
	f.t.Helper()
	es, err := ks.ListAudit(f.ctx, q)
	if err != nil {
		f.t.Fatalf("ListAudit(%+v): %v", q, err)
	}
	return es
}

func sameEntry(a *pharox.AuditEntry, b pharox.AuditEntry) bool {
	return a.ID == b.ID && a.At.Equal(b.At) && a.Actor == b.Actor && a.Action == b.Action &&
		a.TargetKind == b.TargetKind && a.TargetID == b.TargetID && a.Detail == b.Detail
}

var auditBase = time.Date(2026, 5, 6, 7, 0, 0, 0, time.UTC)

func testAuditAppendAndList(t *testing.T, f *fixture) {
	ks := f.keyStore()
	if got := f.listAudit(ks, pharox.AuditQuery{}); len(got) != 0 {
		t.Fatalf("empty log lists %d entries", len(got))
	}
	var in []pharox.AuditEntry
	// Appended out of time order: the list is by time, not by append.
	for _, m := range []int{3, 1, 4, 0, 2} {
		in = append(in, auditAt(auditBase.Add(time.Duration(m)*time.Minute), "ops", fmt.Sprintf("action.%d", m)))
	}
	f.appendAudit(ks, in...)
	got := f.listAudit(ks, pharox.AuditQuery{})
	if len(got) != len(in) {
		t.Fatalf("listed %d entries, want %d", len(got), len(in))
	}
	for i, e := range got {
		want := fmt.Sprintf("action.%d", 4-i)
		if e.Action != want {
			t.Fatalf("entry %d is %s, want %s (newest first)", i, e.Action, want)
		}
		idx := slices.IndexFunc(in, func(x pharox.AuditEntry) bool { return x.ID == e.ID })
		if idx < 0 || !sameEntry(e, in[idx]) {
			t.Fatalf("entry %d %+v does not round-trip", i, e)
		}
		if e.At.Location() != time.UTC {
			t.Fatalf("entry At %v not in UTC", e.At)
		}
	}
	// Returned entries are copies.
	got[0].Actor, got[0].Detail = "mutated", "mutated"
	if again := f.listAudit(ks, pharox.AuditQuery{Limit: 1}); again[0].Actor != "ops" {
		t.Fatalf("mutating a listed entry changed the log: %+v", again[0])
	}
}

func testAuditIdempotent(t *testing.T, f *fixture) {
	ks := f.keyStore()
	e := auditAt(auditBase, "ops", "pool.create")
	f.appendAudit(ks, e)
	retry := e
	retry.Detail, retry.At = "a retried append", auditBase.Add(time.Hour)
	f.appendAudit(ks, retry)
	got := f.listAudit(ks, pharox.AuditQuery{})
	if len(got) != 1 || !sameEntry(got[0], e) {
		t.Fatalf("after appending one id twice: %d entries %+v; want the first only", len(got), got)
	}
	// Concurrent appends of one id store one entry too.
	e2 := auditAt(auditBase.Add(time.Minute), "ops", "pool.delete")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if err := ks.AppendAudit(f.ctx, e2); err != nil {
				t.Errorf("concurrent AppendAudit: %v", err)
			}
		})
	}
	wg.Wait()
	if got := f.listAudit(ks, pharox.AuditQuery{}); len(got) != 2 {
		t.Fatalf("after 8 concurrent appends of one id: %d entries, want 2", len(got))
	}
}

func testAuditStamps(t *testing.T, f *fixture) {
	ks := f.keyStore()
	e := auditAt(time.Time{}, "ops", "key.create")
	f.appendAudit(ks, e)
	noID := auditAt(time.Time{}, "ops", "key.revoke")
	noID.ID = uuid.Nil
	f.appendAudit(ks, noID)
	got := f.listAudit(ks, pharox.AuditQuery{})
	if len(got) != 2 {
		t.Fatalf("listed %d entries, want 2", len(got))
	}
	for _, g := range got {
		if err := near(g.At, "stamped At"); err != nil {
			t.Fatal(err)
		}
		if g.ID == uuid.Nil {
			t.Fatalf("entry %s has no id", g.Action)
		}
	}
}

func testAuditInvalid(t *testing.T, f *fixture) {
	ks := f.keyStore()
	for _, e := range []pharox.AuditEntry{
		{ID: uuid.New(), Action: "x"},
		{ID: uuid.New(), Actor: "x"},
		{ID: uuid.New(), Actor: "x", Action: "y", Detail: string(make([]byte, pharox.MaxAuditDetail+1))},
	} {
		wantErr(t, fmt.Sprintf("AppendAudit(%q, %q)", e.Actor, e.Action), ks.AppendAudit(f.ctx, e), pharox.ErrInvalidArgument)
	}
	_, err := ks.ListAudit(f.ctx, pharox.AuditQuery{Limit: -1})
	wantErr(t, "ListAudit(limit -1)", err, pharox.ErrInvalidArgument)
	if got := f.listAudit(ks, pharox.AuditQuery{}); len(got) != 0 {
		t.Fatalf("invalid appends stored %d entries", len(got))
	}
}

func testAuditFilters(t *testing.T, f *fixture) {
	ks := f.keyStore()
	var all []pharox.AuditEntry
	actors := []string{"ops", "alice", "bootstrap"}
	actions := []string{"pool.create", "proxy.add", "key.revoke"}
	for i := range 30 {
		// Some share a time, to cover the bounds exactly.
		at := auditBase.Add(time.Duration(i/2) * time.Second)
		all = append(all, auditAt(at, actors[i%3], actions[i%5%3]))
	}
	f.appendAudit(ks, all...)
	queries := []pharox.AuditQuery{
		{},
		{Actor: "alice"},
		{Action: "proxy.add"},
		{Actor: "ops", Action: "key.revoke"},
		{Since: auditBase.Add(5 * time.Second)},
		{Until: auditBase.Add(5 * time.Second)},
		{Since: auditBase.Add(3 * time.Second), Until: auditBase.Add(9 * time.Second)},
		{Since: auditBase.Add(3 * time.Second), Until: auditBase.Add(9 * time.Second), Actor: "bootstrap"},
		{Since: auditBase.Add(3 * time.Second), Until: auditBase.Add(3 * time.Second)},
		{Actor: "nobody"},
		{Limit: 4},
		{Actor: "ops", Limit: 3},
		{Since: auditBase.Add(2*time.Second + time.Millisecond)},
		// Bounds finer than the store's precision still bound exactly.
		{Since: auditBase.Add(3*time.Second + time.Nanosecond)},
		{Until: auditBase.Add(3*time.Second + time.Nanosecond)},
	}
	for _, q := range queries {
		got := f.listAudit(ks, q)
		limit, _ := q.EffectiveLimit()
		var want []pharox.AuditEntry
		for _, e := range all {
			if q.Matches(&e) {
				want = append(want, e)
			}
		}
		// Newest first; entries with one time may come in any order, so
		// compare times, then check each entry matches.
		slices.SortStableFunc(want, func(a, b pharox.AuditEntry) int { return b.At.Compare(a.At) })
		if len(want) > limit {
			want = want[:limit]
		}
		if len(got) != len(want) {
			t.Fatalf("ListAudit(%+v): %d entries, want %d", q, len(got), len(want))
		}
		for i, g := range got {
			if !g.At.Equal(want[i].At) {
				t.Fatalf("ListAudit(%+v): entry %d at %v, want %v (newest first)", q, i, g.At, want[i].At)
			}
			j := slices.IndexFunc(all, func(e pharox.AuditEntry) bool { return e.ID == g.ID })
			if j < 0 || !sameEntry(g, all[j]) || !q.Matches(g) {
				t.Fatalf("ListAudit(%+v) returned %+v, which was not appended or does not match", q, g)
			}
		}
	}
}

func testAuditLimit(t *testing.T, f *fixture) {
	ks := f.keyStore()
	n := pharox.DefaultAuditLimit + 5
	es := make([]pharox.AuditEntry, n)
	for i := range es {
		es[i] = auditAt(auditBase.Add(time.Duration(i)*time.Millisecond), "ops", "proxy.add")
	}
	f.appendAudit(ks, es...)
	got := f.listAudit(ks, pharox.AuditQuery{})
	if len(got) != pharox.DefaultAuditLimit {
		t.Fatalf("default limit: %d entries, want %d", len(got), pharox.DefaultAuditLimit)
	}
	if !sameEntry(got[0], es[n-1]) || !sameEntry(got[len(got)-1], es[5]) {
		t.Fatalf("default limit kept %v..%v, want the newest", got[0].At, got[len(got)-1].At)
	}
	if got := f.listAudit(ks, pharox.AuditQuery{Limit: pharox.MaxAuditLimit + 1}); len(got) != n {
		t.Fatalf("limit above the maximum: %d entries, want all %d", len(got), n)
	}
}

func testAuditPurge(t *testing.T, f *fixture) {
	ks := f.keyStore()
	for i := range 10 {
		f.appendAudit(ks, auditAt(auditBase.Add(time.Duration(i)*time.Minute), "ops", "pool.create"))
	}
	n, err := ks.PurgeAudit(f.ctx, auditBase.Add(3*time.Minute+time.Nanosecond))
	if err != nil || n != 4 {
		t.Fatalf("PurgeAudit: %d, %v; want 4", n, err)
	}
	got := f.listAudit(ks, pharox.AuditQuery{})
	if len(got) != 6 || !got[5].At.Equal(auditBase.Add(4*time.Minute)) {
		t.Fatalf("after purge: %d entries, oldest %v", len(got), got[len(got)-1].At)
	}
	if n, err := ks.PurgeAudit(f.ctx, auditBase.Add(4*time.Minute)); err != nil || n != 0 {
		t.Fatalf("second PurgeAudit: %d, %v; want 0", n, err)
	}
}

// claimAll claims the lease's verdict from n goroutines at once and
// returns how many were first.
func (f *fixture) claimAll(vs pharox.LeaseVerdictStore, id uuid.UUID, n int) int {
	f.t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for range n {
		wg.Go(func() {
			first, err := vs.ClaimLeaseVerdict(f.ctx, id)
			if err != nil {
				f.t.Errorf("ClaimLeaseVerdict(%s): %v", id, err)
				return
			}
			if first {
				mu.Lock()
				won++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return won
}

func testVerdictConcurrent(t *testing.T, f *fixture) {
	vs := f.verdictStore()
	pool := f.pool("verdict")
	f.addN(pool, 1, 0)
	l := f.acquire(f.req("verdict"))
	if won := f.claimAll(vs, l.ID, 32); won != 1 {
		t.Fatalf("%d of 32 concurrent claims were first, want exactly 1", won)
	}
	if first, err := vs.ClaimLeaseVerdict(f.ctx, l.ID); err != nil || first {
		t.Fatalf("a later claim: %v, %v; want false", first, err)
	}
	// Claiming changes nothing else about the lease.
	got := f.getLease(l.ID)
	if got.Status != pharox.LeaseActive || !got.ExpiresAt.Equal(l.ExpiresAt) {
		t.Fatalf("lease after claims: %+v", got)
	}
	f.release(l.ID)
}

func testVerdictEnded(t *testing.T, f *fixture) {
	vs := f.verdictStore()
	pool := f.pool("verdict")
	f.addN(pool, 1, 0)
	l := f.acquire(f.req("verdict"))
	f.release(l.ID)
	if first, err := vs.ClaimLeaseVerdict(f.ctx, l.ID); err != nil || !first {
		t.Fatalf("first claim on a released lease: %v, %v; want true", first, err)
	}
	if first, err := vs.ClaimLeaseVerdict(f.ctx, l.ID); err != nil || first {
		t.Fatalf("second claim on a released lease: %v, %v; want false", first, err)
	}
	// A verdict claimed while active stays claimed after the release.
	l2 := f.acquire(f.req("verdict"))
	if first, err := vs.ClaimLeaseVerdict(f.ctx, l2.ID); err != nil || !first {
		t.Fatalf("claim on an active lease: %v, %v", first, err)
	}
	f.release(l2.ID)
	if first, err := vs.ClaimLeaseVerdict(f.ctx, l2.ID); err != nil || first {
		t.Fatalf("claim after release of a claimed lease: %v, %v; want false", first, err)
	}
}

func testVerdictPerLease(t *testing.T, f *fixture) {
	vs := f.verdictStore()
	pool := f.pool("verdict")
	f.addN(pool, 2, 1)
	a := f.acquire(f.req("verdict"))
	b := f.acquire(f.req("verdict"))
	for _, l := range []*pharox.Lease{a, b} {
		if first, err := vs.ClaimLeaseVerdict(f.ctx, l.ID); err != nil || !first {
			t.Fatalf("first claim on lease %s: %v, %v; want true", l.ID, first, err)
		}
	}
	// A lease taken with a chosen id gets its own verdict too.
	f.release(a.ID)
	req := f.req("verdict")
	req.LeaseID = uuid.New()
	c := f.acquire(req)
	if first, err := vs.ClaimLeaseVerdict(f.ctx, c.ID); err != nil || !first {
		t.Fatalf("first claim on a chosen-id lease: %v, %v; want true", first, err)
	}
}

func testVerdictUnknown(t *testing.T, f *fixture) {
	vs := f.verdictStore()
	_, err := vs.ClaimLeaseVerdict(f.ctx, uuid.New())
	wantErr(t, "ClaimLeaseVerdict(unknown)", err, pharox.ErrLeaseNotFound)
}
