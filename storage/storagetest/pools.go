package storagetest

import (
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

var poolTests = []subtest{
	{name: "Ping", fn: testPing},
	{name: "CreateAndGet", fn: testPoolCreateAndGet},
	{name: "DuplicateName", fn: testPoolDuplicateName},
	{name: "NotFound", fn: testPoolNotFound},
	{name: "ListOrderedByName", fn: testPoolList},
	{name: "DeleteInUse", fn: testPoolDeleteInUse},
	{name: "DeleteCascades", fn: testPoolDeleteCascades},
}

func testPoolCreateAndGet(t *testing.T, f *fixture) {
	before := time.Now()
	p, err := f.s.CreatePool(f.ctx, pharox.Pool{Name: "alpha", Description: "first pool"})
	if err != nil {
		t.Fatalf("CreatePool: %v", err)
	}
	if p.ID == uuid.Nil {
		t.Fatal("CreatePool with a zero id did not assign one")
	}
	if p.Name != "alpha" || p.Description != "first pool" {
		t.Fatalf("CreatePool returned %+v, want name alpha, description %q", p, "first pool")
	}
	if !p.CreatedAt.IsZero() {
		plausibleNow(t, "Pool.CreatedAt", p.CreatedAt, before, time.Now())
	}

	byID, err := f.s.GetPool(f.ctx, p.ID)
	if err != nil {
		t.Fatalf("GetPool: %v", err)
	}
	byName, err := f.s.GetPoolByName(f.ctx, "alpha")
	if err != nil {
		t.Fatalf("GetPoolByName: %v", err)
	}
	for what, got := range map[string]*pharox.Pool{"GetPool": byID, "GetPoolByName": byName} {
		if got.ID != p.ID || got.Name != p.Name || got.Description != p.Description {
			t.Errorf("%s = %+v, want %+v", what, got, p)
		}
	}

	// A caller-chosen id is kept.
	id := uuid.New()
	q, err := f.s.CreatePool(f.ctx, pharox.Pool{ID: id, Name: "beta"})
	if err != nil {
		t.Fatalf("CreatePool with id: %v", err)
	}
	if q.ID != id {
		t.Fatalf("CreatePool with id %s stored id %s", id, q.ID)
	}
	if got, err := f.s.GetPool(f.ctx, id); err != nil || got.Name != "beta" {
		t.Fatalf("GetPool(%s) = %+v, %v; want pool beta", id, got, err)
	}
}

func testPoolDuplicateName(t *testing.T, f *fixture) {
	first := f.pool("dup")
	_, err := f.s.CreatePool(f.ctx, pharox.Pool{Name: "dup", Description: "second"})
	wantErr(t, "CreatePool with a name in use", err, pharox.ErrAlreadyExists)
	got, err := f.s.GetPoolByName(f.ctx, "dup")
	if err != nil {
		t.Fatalf("GetPoolByName: %v", err)
	}
	if got.ID != first.ID || got.Description != first.Description {
		t.Fatalf("failed duplicate CreatePool changed the pool: got %+v, want %+v", got, first)
	}
	pools, err := f.s.ListPools(f.ctx)
	if err != nil {
		t.Fatalf("ListPools: %v", err)
	}
	if len(pools) != 1 {
		t.Fatalf("ListPools returned %d pools after a failed duplicate, want 1", len(pools))
	}
}

func testPoolNotFound(t *testing.T, f *fixture) {
	f.pool("exists")
	_, err := f.s.GetPool(f.ctx, uuid.New())
	wantErr(t, "GetPool(unknown)", err, pharox.ErrPoolNotFound)
	_, err = f.s.GetPoolByName(f.ctx, "missing")
	wantErr(t, "GetPoolByName(unknown)", err, pharox.ErrPoolNotFound)
	wantErr(t, "DeletePool(unknown)", f.s.DeletePool(f.ctx, uuid.New()), pharox.ErrPoolNotFound)
	_, err = f.s.ListProxies(f.ctx, uuid.New())
	wantErr(t, "ListProxies(unknown pool)", err, pharox.ErrPoolNotFound)
	_, err = f.s.GetPoolStats(f.ctx, "missing")
	wantErr(t, "GetPoolStats(unknown)", err, pharox.ErrPoolNotFound)
	_, err = f.s.AcquireLease(f.ctx, f.req("missing"))
	wantErr(t, "AcquireLease(unknown pool)", err, pharox.ErrPoolNotFound)
	_, err = f.s.FindAvailableProxy(f.ctx, "missing", nil, pharox.FirstAvailable)
	wantErr(t, "FindAvailableProxy(unknown pool)", err, pharox.ErrPoolNotFound)
}

func testPoolList(t *testing.T, f *fixture) {
	pools, err := f.s.ListPools(f.ctx)
	if err != nil {
		t.Fatalf("ListPools on an empty store: %v", err)
	}
	if len(pools) != 0 {
		t.Fatalf("ListPools on an empty store returned %d pools", len(pools))
	}
	for _, n := range []string{"mango", "apple", "zebra", "kiwi"} {
		f.pool(n)
	}
	pools, err = f.s.ListPools(f.ctx)
	if err != nil {
		t.Fatalf("ListPools: %v", err)
	}
	var got []string
	for _, p := range pools {
		got = append(got, p.Name)
	}
	if want := []string{"apple", "kiwi", "mango", "zebra"}; !slices.Equal(got, want) {
		t.Fatalf("ListPools names = %v, want %v", got, want)
	}
}

func testPoolDeleteInUse(t *testing.T, f *fixture) {
	pool := f.pool("busy")
	f.addN(pool, 2, 1)
	l := f.acquire(f.req("busy"))
	wantErr(t, "DeletePool with an active lease", f.s.DeletePool(f.ctx, pool.ID), pharox.ErrInUse)
	if _, err := f.s.GetPool(f.ctx, pool.ID); err != nil {
		t.Fatalf("pool gone after DeletePool failed with ErrInUse: %v", err)
	}
	if ps, err := f.s.ListProxies(f.ctx, pool.ID); err != nil || len(ps) != 2 {
		t.Fatalf("ListProxies after failed DeletePool = %d proxies, %v; want 2", len(ps), err)
	}
	if got := f.getLease(l.ID); got.Status != pharox.LeaseActive {
		t.Fatalf("lease status after failed DeletePool = %s, want active", got.Status)
	}
	f.release(l.ID)
	if err := f.s.DeletePool(f.ctx, pool.ID); err != nil {
		t.Fatalf("DeletePool after the lease was released: %v", err)
	}
}

func testPoolDeleteCascades(t *testing.T, f *fixture) {
	pool := f.pool("doomed")
	other := f.pool("survivor")
	proxies := f.addN(pool, 3, 0)
	kept := f.addN(other, 1, 0)

	req := f.req("doomed")
	req.SessionKey = "sticky"
	req.SessionTTL = time.Hour
	ended := f.acquire(req)
	f.release(ended.ID)
	keptLease := f.acquire(f.req("survivor"))

	if err := f.s.DeletePool(f.ctx, pool.ID); err != nil {
		t.Fatalf("DeletePool: %v", err)
	}
	_, err := f.s.GetPool(f.ctx, pool.ID)
	wantErr(t, "GetPool after delete", err, pharox.ErrPoolNotFound)
	_, err = f.s.GetPoolByName(f.ctx, "doomed")
	wantErr(t, "GetPoolByName after delete", err, pharox.ErrPoolNotFound)
	_, err = f.s.ListProxies(f.ctx, pool.ID)
	wantErr(t, "ListProxies after delete", err, pharox.ErrPoolNotFound)
	for _, p := range proxies {
		_, err := f.s.GetProxy(f.ctx, p.ID)
		wantErr(t, "GetProxy of a deleted pool's proxy", err, pharox.ErrProxyNotFound)
	}
	_, err = f.s.GetLease(f.ctx, ended.ID)
	wantErr(t, "GetLease of a deleted pool's ended lease", err, pharox.ErrLeaseNotFound)
	if ls := f.leases(pharox.LeaseQuery{PoolID: pool.ID}); len(ls) != 0 {
		t.Fatalf("ListLeases of the deleted pool returned %d leases", len(ls))
	}

	// The other pool is untouched.
	if ps, err := f.s.ListProxies(f.ctx, other.ID); err != nil || len(ps) != 1 || ps[0].ID != kept[0].ID {
		t.Fatalf("ListProxies(other pool) after deleting a pool = %v, %v", ps, err)
	}
	if got := f.getLease(keptLease.ID); got.Status != pharox.LeaseActive {
		t.Fatalf("other pool's lease status = %s, want active", got.Status)
	}

	// The name is free again, and the old session binding does not leak
	// into the new pool.
	again := f.pool("doomed")
	if again.ID == pool.ID {
		t.Fatalf("recreated pool reused the deleted pool's id %s", pool.ID)
	}
	fresh := f.addN(again, 1, 0)
	l := f.acquire(req)
	if l.ProxyID != fresh[0].ID || l.PoolID != again.ID {
		t.Fatalf("lease in the recreated pool is on proxy %s of pool %s, want proxy %s of pool %s",
			l.ProxyID, l.PoolID, fresh[0].ID, again.ID)
	}
}

func testPing(t *testing.T, f *fixture) {
	if err := f.s.Ping(f.ctx); err != nil {
		t.Fatalf("Ping on a fresh store: %v", err)
	}
}
