package mysql

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

var (
	_ pharox.KeyStore          = (*Store)(nil)
	_ pharox.LeaseVerdictStore = (*Store)(nil)
)

// keyCols lists the api_keys columns scanKey reads, in order.
const keyCols = `id, name, role, digest, hint, consumers, pools, created_at, expires_at, revoked_at, last_used_at`

func scanKey(sc scanner) (*pharox.APIKey, error) {
	var (
		k                          pharox.APIKey
		role                       string
		digest                     []byte
		consumers, pools           sql.NullString
		expires, revoked, lastUsed sql.NullTime
	)
	if err := sc.Scan(&k.ID, &k.Name, &role, &digest, &k.Hint, &consumers, &pools,
		&k.CreatedAt, &expires, &revoked, &lastUsed); err != nil {
		return nil, err
	}
	if len(digest) != len(k.Digest) {
		return nil, fmt.Errorf("api key %s: stored digest has %d bytes", k.ID, len(digest))
	}
	copy(k.Digest[:], digest)
	k.Role = pharox.KeyRole(role)
	var err error
	if k.Consumers, err = namesFrom(consumers); err != nil {
		return nil, fmt.Errorf("api key %s: consumers: %w", k.ID, err)
	}
	if k.Pools, err = namesFrom(pools); err != nil {
		return nil, fmt.Errorf("api key %s: pools: %w", k.ID, err)
	}
	k.CreatedAt = utc(k.CreatedAt)
	k.ExpiresAt, k.RevokedAt, k.LastUsedAt = timeFrom(expires), timeFrom(revoked), timeFrom(lastUsed)
	return &k, nil
}

func timeFrom(v sql.NullTime) *time.Time {
	if !v.Valid {
		return nil
	}
	t := utc(v.Time)
	return &t
}

func namesFrom(v sql.NullString) ([]string, error) {
	if !v.Valid || v.String == "" {
		return nil, nil
	}
	var out []string
	if err := json.Unmarshal([]byte(v.String), &out); err != nil {
		return nil, err
	}
	return out, nil
}

func microPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	m := micro(*t)
	return &m
}

// keyConflict names what a duplicate entry in api_keys was about.
func keyConflict(err error, k *pharox.APIKey) error {
	what := fmt.Sprintf("id %s", k.ID)
	switch msg := err.Error(); {
	case strings.Contains(msg, "api_keys_name"):
		what = fmt.Sprintf("name %q", k.Name)
	case strings.Contains(msg, "api_keys_digest"):
		what = "secret"
	}
	return fmt.Errorf("%s in use by another key: %w", what, pharox.ErrAlreadyExists)
}

// CreateAPIKey stores a new key (see [pharox.KeyStore]).
func (s *Store) CreateAPIKey(ctx context.Context, key pharox.APIKey) (*pharox.APIKey, error) {
	if err := key.Validate(); err != nil {
		return nil, fail("mysql: create api key: %w", err)
	}
	k := key.Clone()
	if k.ID == uuid.Nil {
		k.ID = uuid.New()
	}
	k.ExpiresAt, k.RevokedAt, k.LastUsedAt = microPtr(k.ExpiresAt), microPtr(k.RevokedAt), microPtr(k.LastUsedAt)
	consumers, err := tagsValue(k.Consumers)
	if err != nil {
		return nil, fail("mysql: create api key %q: %w", k.Name, err)
	}
	pools, err := tagsValue(k.Pools)
	if err != nil {
		return nil, fail("mysql: create api key %q: %w", k.Name, err)
	}
	if k.CreatedAt.IsZero() {
		if err := s.db.QueryRowContext(ctx, `SELECT UTC_TIMESTAMP(6)`).Scan(&k.CreatedAt); err != nil {
			return nil, fail("mysql: create api key %q: %w", k.Name, err)
		}
	}
	k.CreatedAt = micro(k.CreatedAt)
	_, err = s.db.ExecContext(ctx, s.q(`INSERT INTO {p}api_keys (`+keyCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		idArg(k.ID), k.Name, string(k.Role), k.Digest[:], k.Hint, consumers, pools, k.CreatedAt,
		nullTime(k.ExpiresAt), nullTime(k.RevokedAt), nullTime(k.LastUsedAt))
	if code(err) == errDupEntry {
		return nil, fail("mysql: create api key %q: %w", k.Name, keyConflict(err, k))
	}
	if err != nil {
		return nil, fail("mysql: create api key %q: %w", k.Name, err)
	}
	return k, nil
}

// GetAPIKey returns the key by id (pharox.ErrKeyNotFound).
func (s *Store) GetAPIKey(ctx context.Context, id uuid.UUID) (*pharox.APIKey, error) {
	k, err := scanKey(s.db.QueryRowContext(ctx, s.q(`SELECT `+keyCols+` FROM {p}api_keys WHERE id = ?`), idArg(id)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fail("mysql: get api key %s: %w", id, pharox.ErrKeyNotFound)
	}
	if err != nil {
		return nil, fail("mysql: get api key %s: %w", id, err)
	}
	return k, nil
}

// GetAPIKeyByName returns the key by name (pharox.ErrKeyNotFound).
func (s *Store) GetAPIKeyByName(ctx context.Context, name string) (*pharox.APIKey, error) {
	k, err := scanKey(s.db.QueryRowContext(ctx, s.q(`SELECT `+keyCols+` FROM {p}api_keys WHERE name = ?`), name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fail("mysql: get api key %q: %w", name, pharox.ErrKeyNotFound)
	}
	if err != nil {
		return nil, fail("mysql: get api key %q: %w", name, err)
	}
	return k, nil
}

// GetAPIKeyByDigest returns the key with this secret digest, whatever its
// state (pharox.ErrKeyNotFound). The row is found through the unique key
// and its digest then compared in constant time.
func (s *Store) GetAPIKeyByDigest(ctx context.Context, digest [32]byte) (*pharox.APIKey, error) {
	k, err := scanKey(s.db.QueryRowContext(ctx, s.q(`SELECT `+keyCols+` FROM {p}api_keys WHERE digest = ?`), digest[:]))
	if err == nil && subtle.ConstantTimeCompare(k.Digest[:], digest[:]) != 1 {
		err = sql.ErrNoRows
	}
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fail("mysql: get api key by secret: %w", pharox.ErrKeyNotFound)
	}
	if err != nil {
		return nil, fail("mysql: get api key by secret: %w", err)
	}
	return k, nil
}

// ListAPIKeys returns every key ordered by name (byte-wise: names are
// VARBINARY).
func (s *Store) ListAPIKeys(ctx context.Context) ([]*pharox.APIKey, error) {
	out, err := list(ctx, s.db, s.q(`SELECT `+keyCols+` FROM {p}api_keys ORDER BY name`), nil, scanKey)
	if err != nil {
		return nil, fail("mysql: list api keys: %w", err)
	}
	return out, nil
}

// RevokeAPIKey stamps RevokedAt once (pharox.ErrKeyNotFound).
func (s *Store) RevokeAPIKey(ctx context.Context, id uuid.UUID) (*pharox.APIKey, error) {
	if _, err := s.db.ExecContext(ctx, s.q(`UPDATE {p}api_keys SET revoked_at = COALESCE(revoked_at, UTC_TIMESTAMP(6)) WHERE id = ?`),
		idArg(id)); err != nil {
		return nil, fail("mysql: revoke api key %s: %w", id, err)
	}
	k, err := s.GetAPIKey(ctx, id)
	if err != nil {
		return nil, fail("mysql: revoke api key: %w", err)
	}
	return k, nil
}

// RotateAPIKey replaces the key's digest and hint (see [pharox.KeyStore]).
func (s *Store) RotateAPIKey(ctx context.Context, id uuid.UUID, digest [32]byte, hint string) (*pharox.APIKey, error) {
	if digest == ([32]byte{}) {
		return nil, fail("mysql: rotate api key %s: %w: no secret digest", id, pharox.ErrInvalidArgument)
	}
	if len(hint) > 64 {
		return nil, fail("mysql: rotate api key %s: %w: hint longer than 64 bytes", id, pharox.ErrInvalidArgument)
	}
	var k *pharox.APIKey
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		k, err = scanKey(tx.QueryRowContext(ctx, s.q(`SELECT `+keyCols+` FROM {p}api_keys WHERE id = ? FOR UPDATE`), idArg(id)))
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrKeyNotFound
		}
		if err != nil {
			return err
		}
		if k.RevokedAt != nil {
			return fmt.Errorf("key %q: %w", k.Name, pharox.ErrKeyRevoked)
		}
		_, err = tx.ExecContext(ctx, s.q(`UPDATE {p}api_keys SET digest = ?, hint = ? WHERE id = ?`), digest[:], hint, idArg(id))
		if code(err) == errDupEntry {
			return fmt.Errorf("key %q: %w", k.Name, keyConflict(err, k))
		}
		k.Digest, k.Hint = digest, hint
		return err
	})
	if err != nil {
		return nil, fail("mysql: rotate api key %s: %w", id, err)
	}
	return k, nil
}

// touchChunk bounds the ids one TouchAPIKeys statement names (four bound
// parameters each, well below the protocol's 65,535).
const touchChunk = 1000

// TouchAPIKeys sets LastUsedAt to the later of the stored time and the
// given one for every known id: one statement for up to touchChunk ids.
func (s *Store) TouchAPIKeys(ctx context.Context, used map[uuid.UUID]time.Time) error {
	if len(used) == 0 {
		return ctx.Err()
	}
	type pair struct {
		id string
		at time.Time
	}
	pairs := make([]pair, 0, len(used))
	for id, t := range used {
		pairs = append(pairs, pair{idArg(id), micro(t)})
	}
	for len(pairs) > 0 {
		n := min(len(pairs), touchChunk)
		var set, in strings.Builder
		args := make([]any, 0, 4*n)
		set.WriteString(`UPDATE {p}api_keys SET last_used_at = CASE id`)
		for i, p := range pairs[:n] {
			set.WriteString(` WHEN ? THEN CASE WHEN last_used_at IS NULL OR last_used_at < ? THEN ? ELSE last_used_at END`)
			args = append(args, p.id, p.at, p.at)
			if i > 0 {
				in.WriteString(", ")
			}
			in.WriteString("?")
		}
		for _, p := range pairs[:n] {
			args = append(args, p.id)
		}
		set.WriteString(` ELSE last_used_at END WHERE id IN (` + in.String() + `)`)
		if _, err := s.db.ExecContext(ctx, s.q(set.String()), args...); err != nil {
			return fail("mysql: touch api keys: %w", err)
		}
		pairs = pairs[n:]
	}
	return nil
}

// AppendAudit stores e once per ID (see [pharox.KeyStore]).
func (s *Store) AppendAudit(ctx context.Context, e pharox.AuditEntry) error {
	if err := e.Validate(); err != nil {
		return fail("mysql: append audit: %w", err)
	}
	if e.ID == uuid.Nil {
		e.ID = uuid.New()
	}
	var at any // NULL: the server's clock
	if !e.At.IsZero() {
		at = micro(e.At)
	}
	// Only the id can be a duplicate (seq is generated): the no-op update
	// ignores that one and no other error.
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO {p}audit_log (id, at, actor, action, target_kind, target_id, detail)
		VALUES (?, COALESCE(?, UTC_TIMESTAMP(6)), ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE id = id`),
		idArg(e.ID), at, e.Actor, e.Action, e.TargetKind, e.TargetID, e.Detail)
	if err != nil {
		return fail("mysql: append audit %s: %w", e.Action, err)
	}
	return nil
}

// ListAudit returns the entries matching q, newest first (entries with one
// time latest-appended first).
func (s *Store) ListAudit(ctx context.Context, q pharox.AuditQuery) ([]*pharox.AuditEntry, error) {
	limit, err := q.EffectiveLimit()
	if err != nil {
		return nil, fail("mysql: list audit: %w", err)
	}
	var (
		where []string
		args  []any
	)
	if !q.Since.IsZero() {
		where, args = append(where, "at >= ?"), append(args, ceilMicro(q.Since))
	}
	if !q.Until.IsZero() {
		where, args = append(where, "at < ?"), append(args, ceilMicro(q.Until))
	}
	if q.Actor != "" {
		where, args = append(where, "actor = ?"), append(args, q.Actor)
	}
	if q.Action != "" {
		where, args = append(where, "action = ?"), append(args, q.Action)
	}
	query := `SELECT id, at, actor, action, target_kind, target_id, detail FROM {p}audit_log`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	query += ` ORDER BY at DESC, seq DESC LIMIT ?`
	args = append(args, limit)
	out, err := list(ctx, s.db, s.q(query), args, func(sc scanner) (*pharox.AuditEntry, error) {
		var e pharox.AuditEntry
		if err := sc.Scan(&e.ID, &e.At, &e.Actor, &e.Action, &e.TargetKind, &e.TargetID, &e.Detail); err != nil {
			return nil, err
		}
		e.At = utc(e.At)
		return &e, nil
	})
	if err != nil {
		return nil, fail("mysql: list audit: %w", err)
	}
	return out, nil
}

// auditPurgeBatch bounds the entries one purge statement deletes.
const auditPurgeBatch = 1000

// PurgeAudit deletes entries older than before, auditPurgeBatch per
// statement, and returns how many.
func (s *Store) PurgeAudit(ctx context.Context, before time.Time) (int, error) {
	total := 0
	for {
		res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM {p}audit_log WHERE at < ? ORDER BY at LIMIT ?`),
			ceilMicro(before), auditPurgeBatch)
		if err != nil {
			return total, fail("mysql: purge audit: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, fail("mysql: purge audit: %w", err)
		}
		total += int(n)
		if n < auditPurgeBatch {
			return total, nil
		}
	}
}

// ClaimLeaseVerdict stamps the lease's verdict_at unless it is set and
// reports whether this call set it (pharox.ErrLeaseNotFound for a lease
// not stored). Concurrent claims queue on the row lock; the ones after the
// first read verdict_at set and change nothing.
func (s *Store) ClaimLeaseVerdict(ctx context.Context, leaseID uuid.UUID) (bool, error) {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE {p}leases SET verdict_at = UTC_TIMESTAMP(6) WHERE id = ? AND verdict_at IS NULL`),
		idArg(leaseID))
	if err != nil {
		return false, fail("mysql: claim lease verdict %s: %w", leaseID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fail("mysql: claim lease verdict %s: %w", leaseID, err)
	}
	if n == 1 {
		return true, nil
	}
	var one int
	err = s.db.QueryRowContext(ctx, s.q(`SELECT 1 FROM {p}leases WHERE id = ?`), idArg(leaseID)).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, fail("mysql: claim lease verdict %s: %w", leaseID, pharox.ErrLeaseNotFound)
	}
	if err != nil {
		return false, fail("mysql: claim lease verdict %s: %w", leaseID, err)
	}
	return false, nil
}

// ceilMicro rounds t up to the stored precision: for entries stored in
// whole microseconds, at >= t and at < t hold exactly when they hold for
// the rounded bound.
func ceilMicro(t time.Time) time.Time {
	t = t.UTC()
	if r := t.Truncate(time.Microsecond); !r.Equal(t) {
		return r.Add(time.Microsecond)
	}
	return t
}
