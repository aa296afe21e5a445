package pharox

import (
	"context"
	"errors"
	"fmt"
)

// BootstrapConsumer returns the named consumer, creating it if needed.
func BootstrapConsumer(ctx context.Context, s Storage, name string) (*Consumer, error) {
	if err := ValidateName("consumer name", name); err != nil {
		return nil, err
	}
	return s.EnsureConsumer(ctx, name)
}

// BootstrapPool returns the named pool, creating it if needed.
func BootstrapPool(ctx context.Context, s Storage, name, description string) (*Pool, error) {
	p, err := s.GetPoolByName(ctx, name)
	if err == nil || !errors.Is(err, ErrPoolNotFound) {
		return p, err
	}
	p, err = s.CreatePool(ctx, Pool{Name: name, Description: description})
	if errors.Is(err, ErrAlreadyExists) {
		// Another process created it between our read and write.
		return s.GetPoolByName(ctx, name)
	}
	return p, err
}

// BootstrapProxy adds proxy to pool and returns the stored copy.
func BootstrapProxy(ctx context.Context, s Storage, pool *Pool, proxy Proxy) (*Proxy, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: bootstrap proxy: pool is nil", ErrInvalidArgument)
	}
	proxy.PoolID = pool.ID
	out, err := s.AddProxies(ctx, []Proxy{proxy})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}
