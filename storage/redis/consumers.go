package redis

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	goredis "github.com/redis/go-redis/v9"
)

// decodeConsumer decodes a "consumers" hash entry: name -> "<id>|<created>".
func decodeConsumer(name, v string) (*pharox.Consumer, error) {
	idStr, created, _ := splitPair(v)
	c := &pharox.Consumer{Name: name}
	var err error
	if c.ID, err = uuid.Parse(idStr); err != nil {
		return nil, fmt.Errorf("malformed consumer record for %q", name)
	}
	if c.CreatedAt, err = micros(created); err != nil {
		return nil, err
	}
	return c, nil
}

// GetConsumer returns the consumer by id: one HGET of the "cbyid" hash.
// Consumers created before that hash existed are only in "consumers" and
// "cids"; for them (an id in cids, missing from cbyid) it scans
// "consumers" once and records the id, so unknown ids never cost a scan.
func (s *Store) GetConsumer(ctx context.Context, id uuid.UUID) (*pharox.Consumer, error) {
	v, err := s.rdb.HGet(ctx, s.prefix+"cbyid", id.String()).Result()
	if err == nil {
		created, name, _ := splitPair(v)
		c := &pharox.Consumer{ID: id, Name: name}
		if c.CreatedAt, err = micros(created); err != nil {
			return nil, fmt.Errorf("redis: get consumer %s: %w", id, err)
		}
		s.consumers.Store(id, struct{}{})
		return c, nil
	}
	if !errors.Is(err, goredis.Nil) {
		return nil, wrap(err, "get consumer %s", id)
	}
	known, err := s.rdb.SIsMember(ctx, s.prefix+"cids", id.String()).Result()
	if err != nil {
		return nil, wrap(err, "get consumer %s", id)
	}
	if !known {
		return nil, fmt.Errorf("redis: get consumer %s: %w", id, pharox.ErrConsumerNotFound)
	}
	all, err := s.listConsumers(ctx)
	if err != nil {
		return nil, fmt.Errorf("redis: get consumer %s: %w", id, err)
	}
	for _, c := range all {
		if c.ID == id {
			// Consumers are never deleted or renamed, so HSETNX from
			// outside a script cannot record a stale entry.
			err := s.rdb.HSetNX(ctx, s.prefix+"cbyid", id.String(),
				fmt.Sprintf("%d|%s", c.CreatedAt.UnixMicro(), c.Name)).Err()
			if err != nil {
				return nil, wrap(err, "get consumer %s", id)
			}
			s.consumers.Store(id, struct{}{})
			return c, nil
		}
	}
	return nil, fmt.Errorf("redis: get consumer %s: %w", id, pharox.ErrConsumerNotFound)
}

// ListConsumers returns every consumer ordered by name, from one HGETALL.
func (s *Store) ListConsumers(ctx context.Context) ([]*pharox.Consumer, error) {
	out, err := s.listConsumers(ctx)
	if err != nil {
		return nil, fmt.Errorf("redis: list consumers: %w", err)
	}
	return out, nil
}

func (s *Store) listConsumers(ctx context.Context) ([]*pharox.Consumer, error) {
	m, err := s.rdb.HGetAll(ctx, s.prefix+"consumers").Result()
	if err != nil {
		return nil, err
	}
	out := make([]*pharox.Consumer, 0, len(m))
	for name, v := range m {
		c, err := decodeConsumer(name, v)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b *pharox.Consumer) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}
