package postgres

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pharox/pharox"
)

var (
	_ pharox.KeyStore          = (*Store)(nil)
	_ pharox.LeaseVerdictStore = (*Store)(nil)
)

// keyColumns lists the api_keys columns scanKey reads, in order.
const keyColumns = "id, name, role, digest, hint, consumers, pools, created_at, expires_at, revoked_at, last_used_at"

func scanKey(row pgx.Row) (*pharox.APIKey, error) {
	var (
		k      pharox.APIKey
		role   string
		digest []byte
	)
	if err := row.Scan(&k.ID, &k.Name, &role, &digest, &k.Hint, &k.Consumers, &k.Pools,
		&k.CreatedAt, &k.ExpiresAt, &k.RevokedAt, &k.LastUsedAt); err != nil {
		return nil, err
	}
	if len(digest) != len(k.Digest) {
		return nil, fmt.Errorf("api key %s: stored digest has %d bytes", k.ID, len(digest))
	}
	copy(k.Digest[:], digest)
	k.Role = pharox.KeyRole(role)
	if len(k.Consumers) == 0 {
		k.Consumers = nil
	}
	if len(k.Pools) == 0 {
		k.Pools = nil
	}
	k.CreatedAt = utc(k.CreatedAt)
	k.ExpiresAt, k.RevokedAt, k.LastUsedAt = utcPtr(k.ExpiresAt), utcPtr(k.RevokedAt), utcPtr(k.LastUsedAt)
	return &k, nil
}

func microPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	m := micro(*t)
	return &m
}

// names binds a list of names as a text[] (never NULL).
func names(v []string) []string {
	if v == nil {
		return []string{}
	}
	return v
}

// keyConflict names what a unique violation on api_keys was about.
func keyConflict(err error, k *pharox.APIKey) error {
	what := fmt.Sprintf("id %s", k.ID)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.ConstraintName {
		case "api_keys_name_key":
			what = fmt.Sprintf("name %q", k.Name)
		case "api_keys_digest_key":
			what = "secret"
		}
	}
	return fmt.Errorf("%s in use by another key: %w", what, pharox.ErrAlreadyExists)
}

// CreateAPIKey stores a new key (see [pharox.KeyStore]).
func (s *Store) CreateAPIKey(ctx context.Context, key pharox.APIKey) (*pharox.APIKey, error) {
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("postgres: create api key: %w", err)
	}
	if key.ID == uuid.Nil {
		key.ID = uuid.New()
	}
	var created any // NULL: the database's clock
	if !key.CreatedAt.IsZero() {
		created = micro(key.CreatedAt)
	}
	k, err := scanKey(s.pool.QueryRow(ctx, s.q(`INSERT INTO {s}.api_keys (`+keyColumns+`)
VALUES ($1, $2, $3, $4, $5, $6, $7, coalesce($8, clock_timestamp()), $9, $10, $11)
RETURNING `+keyColumns),
		key.ID, key.Name, string(key.Role), key.Digest[:], key.Hint, names(key.Consumers), names(key.Pools),
		created, microPtr(key.ExpiresAt), microPtr(key.RevokedAt), microPtr(key.LastUsedAt)))
	if pgCode(err) == codeUniqueViolation {
		return nil, fmt.Errorf("postgres: create api key %q: %w", key.Name, keyConflict(err, &key))
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: create api key %q: %w", key.Name, err)
	}
	return k, nil
}

// GetAPIKey returns the key by id (pharox.ErrKeyNotFound).
func (s *Store) GetAPIKey(ctx context.Context, id uuid.UUID) (*pharox.APIKey, error) {
	k, err := scanKey(s.pool.QueryRow(ctx, s.q(`SELECT `+keyColumns+` FROM {s}.api_keys WHERE id = $1`), id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: get api key %s: %w", id, pharox.ErrKeyNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: get api key %s: %w", id, err)
	}
	return k, nil
}

// GetAPIKeyByName returns the key by name (pharox.ErrKeyNotFound).
func (s *Store) GetAPIKeyByName(ctx context.Context, name string) (*pharox.APIKey, error) {
	k, err := scanKey(s.pool.QueryRow(ctx, s.q(`SELECT `+keyColumns+` FROM {s}.api_keys WHERE name = $1`), name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: get api key %q: %w", name, pharox.ErrKeyNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: get api key %q: %w", name, err)
	}
	return k, nil
}

// GetAPIKeyByDigest returns the key with this secret digest, whatever its
// state (pharox.ErrKeyNotFound). The row is found through the unique index
// and its digest then compared in constant time.
func (s *Store) GetAPIKeyByDigest(ctx context.Context, digest [32]byte) (*pharox.APIKey, error) {
	k, err := scanKey(s.pool.QueryRow(ctx, s.q(`SELECT `+keyColumns+` FROM {s}.api_keys WHERE digest = $1`), digest[:]))
	if err == nil && subtle.ConstantTimeCompare(k.Digest[:], digest[:]) != 1 {
		err = pgx.ErrNoRows
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: get api key by secret: %w", pharox.ErrKeyNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: get api key by secret: %w", err)
	}
	return k, nil
}

// ListAPIKeys returns every key ordered by name, byte-wise (COLLATE "C"),
// as Go orders strings.
func (s *Store) ListAPIKeys(ctx context.Context) ([]*pharox.APIKey, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT `+keyColumns+` FROM {s}.api_keys ORDER BY name COLLATE "C"`))
	if err != nil {
		return nil, fmt.Errorf("postgres: list api keys: %w", err)
	}
	defer rows.Close()
	out := []*pharox.APIKey{}
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres: list api keys: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list api keys: %w", err)
	}
	return out, nil
}

// RevokeAPIKey stamps RevokedAt once (pharox.ErrKeyNotFound).
func (s *Store) RevokeAPIKey(ctx context.Context, id uuid.UUID) (*pharox.APIKey, error) {
	k, err := scanKey(s.pool.QueryRow(ctx, s.q(`UPDATE {s}.api_keys SET revoked_at = coalesce(revoked_at, clock_timestamp())
WHERE id = $1 RETURNING `+keyColumns), id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: revoke api key %s: %w", id, pharox.ErrKeyNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: revoke api key %s: %w", id, err)
	}
	return k, nil
}

// RotateAPIKey replaces the key's digest and hint (see [pharox.KeyStore]).
// A revoked key is left as it is.
func (s *Store) RotateAPIKey(ctx context.Context, id uuid.UUID, digest [32]byte, hint string) (*pharox.APIKey, error) {
	if digest == ([32]byte{}) {
		return nil, fmt.Errorf("postgres: rotate api key %s: %w: no secret digest", id, pharox.ErrInvalidArgument)
	}
	if len(hint) > 64 {
		return nil, fmt.Errorf("postgres: rotate api key %s: %w: hint longer than 64 bytes", id, pharox.ErrInvalidArgument)
	}
	k, err := scanKey(s.pool.QueryRow(ctx, s.q(`UPDATE {s}.api_keys SET digest = $2, hint = $3
WHERE id = $1 AND revoked_at IS NULL RETURNING `+keyColumns), id, digest[:], hint))
	switch {
	case pgCode(err) == codeUniqueViolation:
		return nil, fmt.Errorf("postgres: rotate api key %s: %w", id, keyConflict(err, &pharox.APIKey{ID: id}))
	case errors.Is(err, pgx.ErrNoRows):
		// Unknown or revoked: say which.
		old, gerr := s.GetAPIKey(ctx, id)
		if gerr != nil {
			return nil, fmt.Errorf("postgres: rotate api key %s: %w", id, pharox.ErrKeyNotFound)
		}
		return nil, fmt.Errorf("postgres: rotate api key %q: %w", old.Name, pharox.ErrKeyRevoked)
	case err != nil:
		return nil, fmt.Errorf("postgres: rotate api key %s: %w", id, err)
	}
	return k, nil
}

// TouchAPIKeys sets LastUsedAt to the later of the stored time and the
// given one for every known id, in one statement.
func (s *Store) TouchAPIKeys(ctx context.Context, used map[uuid.UUID]time.Time) error {
	if len(used) == 0 {
		return ctx.Err()
	}
	ids := make([]uuid.UUID, 0, len(used))
	ats := make([]time.Time, 0, len(used))
	for id, t := range used {
		ids, ats = append(ids, id), append(ats, micro(t))
	}
	_, err := s.pool.Exec(ctx, s.q(`UPDATE {s}.api_keys k SET last_used_at = greatest(k.last_used_at, u.at)
FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, at)
WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)`), ids, ats)
	if err != nil {
		return fmt.Errorf("postgres: touch api keys: %w", err)
	}
	return nil
}

// AppendAudit stores e once per ID (see [pharox.KeyStore]).
func (s *Store) AppendAudit(ctx context.Context, e pharox.AuditEntry) error {
	if err := e.Validate(); err != nil {
		return fmt.Errorf("postgres: append audit: %w", err)
	}
	if e.ID == uuid.Nil {
		e.ID = uuid.New()
	}
	var at any // NULL: the database's clock
	if !e.At.IsZero() {
		at = micro(e.At)
	}
	_, err := s.pool.Exec(ctx, s.q(`INSERT INTO {s}.audit_log (id, at, actor, action, target_kind, target_id, detail)
VALUES ($1, coalesce($2, clock_timestamp()), $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING`),
		e.ID, at, e.Actor, e.Action, e.TargetKind, e.TargetID, e.Detail)
	if err != nil {
		return fmt.Errorf("postgres: append audit %s: %w", e.Action, err)
	}
	return nil
}

// ListAudit returns the entries matching q, newest first (entries with one
// time latest-appended first).
func (s *Store) ListAudit(ctx context.Context, q pharox.AuditQuery) ([]*pharox.AuditEntry, error) {
	limit, err := q.EffectiveLimit()
	if err != nil {
		return nil, fmt.Errorf("postgres: list audit: %w", err)
	}
	var (
		where []string
		args  []any
	)
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, strings.ReplaceAll(cond, "?", "$"+strconv.Itoa(len(args))))
	}
	if !q.Since.IsZero() {
		add("at >= ?", ceilMicro(q.Since))
	}
	if !q.Until.IsZero() {
		add("at < ?", ceilMicro(q.Until))
	}
	if q.Actor != "" {
		add("actor = ?", q.Actor)
	}
	if q.Action != "" {
		add("action = ?", q.Action)
	}
	query := `SELECT id, at, actor, action, target_kind, target_id, detail FROM {s}.audit_log`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	args = append(args, limit)
	query += ` ORDER BY at DESC, seq DESC LIMIT $` + strconv.Itoa(len(args))
	rows, err := s.pool.Query(ctx, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: list audit: %w", err)
	}
	defer rows.Close()
	out := []*pharox.AuditEntry{}
	for rows.Next() {
		var e pharox.AuditEntry
		if err := rows.Scan(&e.ID, &e.At, &e.Actor, &e.Action, &e.TargetKind, &e.TargetID, &e.Detail); err != nil {
			return nil, fmt.Errorf("postgres: list audit: %w", err)
		}
		e.At = utc(e.At)
		out = append(out, &e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list audit: %w", err)
	}
	return out, nil
}

// PurgeAudit deletes entries older than before and returns how many.
func (s *Store) PurgeAudit(ctx context.Context, before time.Time) (int, error) {
	tag, err := s.pool.Exec(ctx, s.q(`DELETE FROM {s}.audit_log WHERE at < $1`), ceilMicro(before))
	if err != nil {
		return 0, fmt.Errorf("postgres: purge audit: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// ClaimLeaseVerdict stamps the lease's verdict_at unless it is set and
// reports whether this call set it (pharox.ErrLeaseNotFound for a lease
// not stored). Concurrent claims queue on the row lock; the ones after the
// first find verdict_at set when they re-check the row.
func (s *Store) ClaimLeaseVerdict(ctx context.Context, leaseID uuid.UUID) (bool, error) {
	var first, found bool
	err := s.pool.QueryRow(ctx, s.q(`WITH u AS (
	UPDATE {s}.leases SET verdict_at = clock_timestamp() WHERE id = $1 AND verdict_at IS NULL RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM u), EXISTS (SELECT 1 FROM {s}.leases WHERE id = $1)`), leaseID).Scan(&first, &found)
	if err != nil {
		return false, fmt.Errorf("postgres: claim lease verdict %s: %w", leaseID, err)
	}
	if !first && !found {
		return false, fmt.Errorf("postgres: claim lease verdict %s: %w", leaseID, pharox.ErrLeaseNotFound)
	}
	return first, nil
}

// ceilMicro rounds t up to the stored precision: for entries stored in
// whole microseconds, at >= t and at < t hold exactly when they hold for
// the rounded bound.
func ceilMicro(t time.Time) time.Time {
	if r := t.Truncate(time.Microsecond); !r.Equal(t) {
		return r.Add(time.Microsecond)
	}
	return t
}
