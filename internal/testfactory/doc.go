// Package testfactory builds the records tests need (pools, proxies,
// consumers, leases) in any [pharox.Storage], with sensible defaults that
// an options struct of pointer fields overrides one by one:
//
//	pool := testfactory.Pool(ctx, t, store, &testfactory.PoolOpts{Name: ptrutil.Ptr("eu")})
//	proxies := testfactory.Proxies(ctx, t, store, pool.ID, 10, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(1)})
//	c := testfactory.Consumer(ctx, t, store, nil)
//	lease := testfactory.Lease(ctx, t, store, &testfactory.LeaseOpts{PoolName: &pool.Name, Consumer: c})
//
// A nil options pointer takes every default. Defaults never collide: each
// proxy gets a host and port of its own within the test process, and each
// pool and consumer a distinct name. Every factory fails the test (with the
// store's error) rather than returning one. Memory makes the in-memory store
// most tests run on:
//
//	store := testfactory.Memory(t)
//
// The package is for _test.go files (the linter's depguard rule keeps it
// out of the product); it is internal, so drivers outside this module use
// the storagetest suite instead.
package testfactory
