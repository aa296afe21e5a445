package redis

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	goredis "github.com/redis/go-redis/v9"
)

var _ pharox.KeyStore = (*Store)(nil)

// encodeKeyFields returns the key hash's fields other than name, digest and
// created, as field, value pairs: an unset optional field is left out.
func encodeKeyFields(k *pharox.APIKey) ([]any, error) {
	out := []any{"role", string(k.Role), "hint", k.Hint}
	if len(k.Consumers) > 0 {
		b, err := json.Marshal(k.Consumers)
		if err != nil {
			return nil, err
		}
		out = append(out, "cons", string(b))
	}
	if len(k.Pools) > 0 {
		b, err := json.Marshal(k.Pools)
		if err != nil {
			return nil, err
		}
		out = append(out, "pools", string(b))
	}
	for _, f := range []struct {
		name string
		t    *time.Time
	}{{"exp", k.ExpiresAt}, {"revoked", k.RevokedAt}, {"used", k.LastUsedAt}} {
		if f.t != nil {
			out = append(out, f.name, strconv.FormatInt(f.t.UnixMicro(), 10))
		}
	}
	return out, nil
}

// decodeKey builds an APIKey from its hash (see doc.go, key:<kid>).
func decodeKey(id string, m map[string]string) (*pharox.APIKey, error) {
	k := &pharox.APIKey{Name: m["name"], Role: pharox.KeyRole(m["role"]), Hint: m["hint"]}
	var errs [7]error
	k.ID, errs[0] = uuid.Parse(id)
	dg, err := hex.DecodeString(m["dg"])
	if err != nil || len(dg) != len(k.Digest) {
		errs[1] = errors.New("bad digest")
	}
	copy(k.Digest[:], dg)
	k.CreatedAt, errs[2] = micros(m["created"])
	k.ExpiresAt, errs[3] = optMicros(m["exp"])
	k.RevokedAt, errs[4] = optMicros(m["revoked"])
	k.LastUsedAt, errs[5] = optMicros(m["used"])
	for _, f := range []struct {
		v   string
		dst *[]string
	}{{m["cons"], &k.Consumers}, {m["pools"], &k.Pools}} {
		if f.v != "" {
			if err := json.Unmarshal([]byte(f.v), f.dst); err != nil {
				errs[6] = err
			}
		}
	}
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("api key %s: malformed record: %v", id, err)
	}
	return k, nil
}

// keyFromReply decodes a key hash returned by a script.
func keyFromReply(id string, v any) (*pharox.APIKey, error) {
	m, err := fields(v)
	if err != nil {
		return nil, err
	}
	return decodeKey(id, m)
}

// CreateAPIKey stores a new key in one script that checks and records its
// id, name and digest together; a name or digest already stored, even by a
// revoked key, is [pharox.ErrAlreadyExists]. A retried call answers as its
// first run did (see doc.go, Client retries).
func (s *Store) CreateAPIKey(ctx context.Context, key pharox.APIKey) (*pharox.APIKey, error) {
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("redis: create api key: %w", err)
	}
	k := cloneKey(&key)
	if k.ID == uuid.Nil {
		k.ID = uuid.New()
	}
	created := ""
	if !k.CreatedAt.IsZero() {
		k.CreatedAt = k.CreatedAt.UTC().Truncate(time.Microsecond)
		created = strconv.FormatInt(k.CreatedAt.UnixMicro(), 10)
	}
	for _, t := range []**time.Time{&k.ExpiresAt, &k.RevokedAt, &k.LastUsedAt} {
		if *t != nil {
			u := (*t).UTC().Truncate(time.Microsecond)
			*t = &u
		}
	}
	rest, err := encodeKeyFields(k)
	if err != nil {
		return nil, fmt.Errorf("redis: create api key %q: %w", k.Name, err)
	}
	args := append([]any{k.ID.String(), k.Name, hex.EncodeToString(k.Digest[:]), created, callToken()}, rest...)
	v, err := s.run(ctx, scriptKeyCreate, args...)
	if err != nil {
		return nil, wrap(err, "create api key %q", k.Name)
	}
	at, _ := v.(string)
	if k.CreatedAt, err = micros(at); err != nil {
		return nil, fmt.Errorf("redis: create api key %q: %w", k.Name, err)
	}
	return k, nil
}

// cloneKey copies k, its slices and times included.
func cloneKey(k *pharox.APIKey) *pharox.APIKey {
	c := *k
	if k.Consumers != nil {
		c.Consumers = append([]string(nil), k.Consumers...)
	}
	if k.Pools != nil {
		c.Pools = append([]string(nil), k.Pools...)
	}
	for _, t := range []**time.Time{&c.ExpiresAt, &c.RevokedAt, &c.LastUsedAt} {
		if *t != nil {
			u := **t
			*t = &u
		}
	}
	return &c
}

// getKey runs key_get.lua: by is "id", "name" or "digest".
func (s *Store) getKey(ctx context.Context, by, value, what string) (*pharox.APIKey, error) {
	v, err := s.run(ctx, scriptKeyGet, by, value)
	if errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("redis: get api key %s: %w", what, pharox.ErrKeyNotFound)
	}
	if err != nil {
		return nil, wrap(err, "get api key %s", what)
	}
	arr, _ := v.([]any)
	if len(arr) != 2 {
		return nil, fmt.Errorf("redis: get api key %s: unexpected reply", what)
	}
	id, _ := arr[0].(string)
	k, err := keyFromReply(id, arr[1])
	if err != nil {
		return nil, fmt.Errorf("redis: get api key %s: %w", what, err)
	}
	return k, nil
}

// GetAPIKey returns the key by id ([pharox.ErrKeyNotFound]).
func (s *Store) GetAPIKey(ctx context.Context, id uuid.UUID) (*pharox.APIKey, error) {
	return s.getKey(ctx, "id", id.String(), id.String())
}

// GetAPIKeyByName returns the key by name ([pharox.ErrKeyNotFound]).
func (s *Store) GetAPIKeyByName(ctx context.Context, name string) (*pharox.APIKey, error) {
	return s.getKey(ctx, "name", name, strconv.Quote(name))
}

// GetAPIKeyByDigest returns the key whose secret has this digest, whatever
// its state ([pharox.ErrKeyNotFound]): one script call, two hash reads.
func (s *Store) GetAPIKeyByDigest(ctx context.Context, digest [32]byte) (*pharox.APIKey, error) {
	k, err := s.getKey(ctx, "digest", hex.EncodeToString(digest[:]), "by secret")
	if err != nil {
		return nil, err
	}
	// The script found the key through this digest's lookup; the digests
	// are compared in constant time all the same, as the contract asks.
	if subtle.ConstantTimeCompare(k.Digest[:], digest[:]) != 1 {
		return nil, fmt.Errorf("redis: get api key by secret: %w", pharox.ErrKeyNotFound)
	}
	return k, nil
}

// ListAPIKeys returns every key ordered by name: the names from the keys
// sorted set, their ids from one HMGET, the keys from one pipeline.
func (s *Store) ListAPIKeys(ctx context.Context) ([]*pharox.APIKey, error) {
	names, err := s.rdb.ZRange(ctx, s.prefix+"keys", 0, -1).Result()
	if err != nil {
		return nil, wrap(err, "list api keys")
	}
	out := make([]*pharox.APIKey, 0, len(names))
	if len(names) == 0 {
		return out, nil
	}
	ids, err := s.rdb.HMGet(ctx, s.prefix+"keynames", names...).Result()
	if err != nil {
		return nil, wrap(err, "list api keys")
	}
	cmds := make([]*goredis.MapStringStringCmd, len(ids))
	_, err = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, id := range ids {
			if id, ok := id.(string); ok {
				cmds[i] = p.HGetAll(ctx, s.prefix+"key:"+id)
			}
		}
		return nil
	})
	if err != nil {
		return nil, wrap(err, "list api keys")
	}
	for i, c := range cmds {
		if c == nil || len(c.Val()) == 0 {
			continue
		}
		k, err := decodeKey(ids[i].(string), c.Val())
		if err != nil {
			return nil, fmt.Errorf("redis: list api keys: %w", err)
		}
		out = append(out, k)
	}
	return out, nil
}

// RevokeAPIKey stamps the key's RevokedAt once, with the server's clock.
func (s *Store) RevokeAPIKey(ctx context.Context, id uuid.UUID) (*pharox.APIKey, error) {
	v, err := s.run(ctx, scriptKeyRevoke, id.String())
	if err != nil {
		return nil, wrap(err, "revoke api key %s", id)
	}
	k, err := keyFromReply(id.String(), v)
	if err != nil {
		return nil, fmt.Errorf("redis: revoke api key %s: %w", id, err)
	}
	return k, nil
}

// RotateAPIKey replaces the key's digest and hint in one script, which
// moves the digest lookup with them, so the old secret stops matching at
// once for every process.
func (s *Store) RotateAPIKey(ctx context.Context, id uuid.UUID, digest [32]byte, hint string) (*pharox.APIKey, error) {
	if digest == ([32]byte{}) {
		return nil, fmt.Errorf("redis: rotate api key %s: %w: no secret digest", id, pharox.ErrInvalidArgument)
	}
	if len(hint) > 64 {
		return nil, fmt.Errorf("redis: rotate api key %s: %w: hint longer than 64 bytes", id, pharox.ErrInvalidArgument)
	}
	v, err := s.run(ctx, scriptKeyRotate, id.String(), hex.EncodeToString(digest[:]), hint)
	if err != nil {
		return nil, wrap(err, "rotate api key %s", id)
	}
	k, err := keyFromReply(id.String(), v)
	if err != nil {
		return nil, fmt.Errorf("redis: rotate api key %s: %w", id, err)
	}
	return k, nil
}

// TouchAPIKeys sets each known key's LastUsedAt to the later of its own and
// the given time, in one script call; unknown ids are ignored.
func (s *Store) TouchAPIKeys(ctx context.Context, used map[uuid.UUID]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	args := make([]any, 0, 2*len(used))
	for id, t := range used {
		args = append(args, id.String(), strconv.FormatInt(t.UnixMicro(), 10))
	}
	if _, err := s.run(ctx, scriptKeyTouch, args...); err != nil {
		return wrap(err, "touch %d api keys", len(used))
	}
	return nil
}
