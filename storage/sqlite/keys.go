package sqlite

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
		created                    int64
		expires, revoked, lastUsed sql.NullInt64
	)
	if err := sc.Scan(&k.ID, &k.Name, &role, &digest, &k.Hint, &consumers, &pools,
		&created, &expires, &revoked, &lastUsed); err != nil {
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
	k.CreatedAt = fromMicros(created)
	k.ExpiresAt, k.RevokedAt, k.LastUsedAt = timeFrom(expires), timeFrom(revoked), timeFrom(lastUsed)
	return &k, nil
}

func timeFrom(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromMicros(v.Int64)
	return &t
}

// namesValue encodes names as a JSON array, NULL when there are none.
func namesValue(names []string) (any, error) { return tagsValue(names) }

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

// keyConflict names what a UNIQUE violation on api_keys was about.
func keyConflict(err error, k *pharox.APIKey) error {
	what := fmt.Sprintf("id %s", k.ID)
	switch msg := err.Error(); {
	case strings.Contains(msg, "api_keys.name"):
		what = fmt.Sprintf("name %q", k.Name)
	case strings.Contains(msg, "api_keys.digest"):
		what = "secret"
	}
	return fmt.Errorf("%s in use by another key: %w", what, pharox.ErrAlreadyExists)
}

// CreateAPIKey stores a new key (see [pharox.KeyStore]).
func (s *Store) CreateAPIKey(ctx context.Context, key pharox.APIKey) (*pharox.APIKey, error) {
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("sqlite: create api key: %w", err)
	}
	k := key.Clone()
	if k.ID == uuid.Nil {
		k.ID = uuid.New()
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = s.stamp()
	}
	// Return exactly what a read gives back.
	k.CreatedAt = fromMicros(micros(k.CreatedAt))
	for _, p := range []**time.Time{&k.ExpiresAt, &k.RevokedAt, &k.LastUsedAt} {
		if *p != nil {
			t := fromMicros(micros(**p))
			*p = &t
		}
	}
	consumers, err := namesValue(k.Consumers)
	if err != nil {
		return nil, fmt.Errorf("sqlite: create api key %q: %w", k.Name, err)
	}
	pools, err := namesValue(k.Pools)
	if err != nil {
		return nil, fmt.Errorf("sqlite: create api key %q: %w", k.Name, err)
	}
	err = s.writeTx(ctx, func(tx *wtx) error {
		_, err := tx.exec(`INSERT INTO api_keys (`+keyCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			idArg(k.ID), k.Name, string(k.Role), k.Digest[:], k.Hint, consumers, pools, micros(k.CreatedAt),
			nullTime(microsPtr(k.ExpiresAt)), nullTime(microsPtr(k.RevokedAt)), nullTime(microsPtr(k.LastUsedAt)))
		if isConstraint(err) {
			return keyConflict(err, k)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: create api key %q: %w", k.Name, err)
	}
	return k, nil
}

// GetAPIKey returns the key by id (pharox.ErrKeyNotFound).
func (s *Store) GetAPIKey(ctx context.Context, id uuid.UUID) (*pharox.APIKey, error) {
	k, err := scanKey(s.r.QueryRowContext(ctx, `SELECT `+keyCols+` FROM api_keys WHERE id = ?`, idArg(id)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: get api key %s: %w", id, pharox.ErrKeyNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: get api key %s: %w", id, err)
	}
	return k, nil
}

// GetAPIKeyByName returns the key by name (pharox.ErrKeyNotFound).
func (s *Store) GetAPIKeyByName(ctx context.Context, name string) (*pharox.APIKey, error) {
	k, err := scanKey(s.r.QueryRowContext(ctx, `SELECT `+keyCols+` FROM api_keys WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: get api key %q: %w", name, pharox.ErrKeyNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: get api key %q: %w", name, err)
	}
	return k, nil
}

// GetAPIKeyByDigest returns the key with this secret digest, whatever its
// state (pharox.ErrKeyNotFound). The row is found through the unique index
// and its digest then compared in constant time.
func (s *Store) GetAPIKeyByDigest(ctx context.Context, digest [32]byte) (*pharox.APIKey, error) {
	k, err := scanKey(s.r.QueryRowContext(ctx, `SELECT `+keyCols+` FROM api_keys WHERE digest = ?`, digest[:]))
	if err == nil && subtle.ConstantTimeCompare(k.Digest[:], digest[:]) != 1 {
		err = sql.ErrNoRows
	}
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: get api key by secret: %w", pharox.ErrKeyNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: get api key by secret: %w", err)
	}
	return k, nil
}

// ListAPIKeys returns every key ordered by name.
func (s *Store) ListAPIKeys(ctx context.Context) ([]*pharox.APIKey, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+keyCols+` FROM api_keys ORDER BY name`)
	out, err := collect(rows, err, scanKey)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list api keys: %w", err)
	}
	return out, nil
}

// RevokeAPIKey stamps RevokedAt once (pharox.ErrKeyNotFound).
func (s *Store) RevokeAPIKey(ctx context.Context, id uuid.UUID) (*pharox.APIKey, error) {
	var k *pharox.APIKey
	err := s.writeTx(ctx, func(tx *wtx) error {
		if _, err := tx.exec(`UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?`,
			micros(s.stamp()), idArg(id)); err != nil {
			return err
		}
		var err error
		k, err = scanKey(tx.queryRow(`SELECT `+keyCols+` FROM api_keys WHERE id = ?`, idArg(id)))
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrKeyNotFound
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: revoke api key %s: %w", id, err)
	}
	return k, nil
}

// RotateAPIKey replaces the key's digest and hint (see [pharox.KeyStore]).
func (s *Store) RotateAPIKey(ctx context.Context, id uuid.UUID, digest [32]byte, hint string) (*pharox.APIKey, error) {
	if digest == ([32]byte{}) {
		return nil, fmt.Errorf("sqlite: rotate api key %s: %w: no secret digest", id, pharox.ErrInvalidArgument)
	}
	if len(hint) > 64 {
		return nil, fmt.Errorf("sqlite: rotate api key %s: %w: hint longer than 64 bytes", id, pharox.ErrInvalidArgument)
	}
	var k *pharox.APIKey
	err := s.writeTx(ctx, func(tx *wtx) error {
		var err error
		k, err = scanKey(tx.queryRow(`SELECT `+keyCols+` FROM api_keys WHERE id = ?`, idArg(id)))
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrKeyNotFound
		}
		if err != nil {
			return err
		}
		if k.RevokedAt != nil {
			return fmt.Errorf("key %q: %w", k.Name, pharox.ErrKeyRevoked)
		}
		_, err = tx.exec(`UPDATE api_keys SET digest = ?, hint = ? WHERE id = ?`, digest[:], hint, idArg(id))
		if isConstraint(err) {
			return fmt.Errorf("key %q: %w", k.Name, keyConflict(err, k))
		}
		k.Digest, k.Hint = digest, hint
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: rotate api key %s: %w", id, err)
	}
	return k, nil
}

// touchChunk bounds the ids one TouchAPIKeys statement names (two bound
// parameters each, well below SQLite's limit).
const touchChunk = 500

// TouchAPIKeys sets LastUsedAt to the later of the stored time and the
// given one for every known id, in one transaction (one statement per
// touchChunk ids).
func (s *Store) TouchAPIKeys(ctx context.Context, used map[uuid.UUID]time.Time) error {
	if len(used) == 0 {
		return ctx.Err()
	}
	type pair struct {
		id string
		at int64
	}
	pairs := make([]pair, 0, len(used))
	for id, t := range used {
		pairs = append(pairs, pair{idArg(id), micros(t)})
	}
	err := s.writeTx(ctx, func(tx *wtx) error {
		for len(pairs) > 0 {
			n := min(len(pairs), touchChunk)
			var b strings.Builder
			args := make([]any, 0, 2*n)
			b.WriteString(`UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, u.column2), u.column2)
				FROM (VALUES `)
			for i, p := range pairs[:n] {
				if i > 0 {
					b.WriteString(", ")
				}
				b.WriteString("(?, ?)")
				args = append(args, p.id, p.at)
			}
			b.WriteString(`) AS u WHERE api_keys.id = u.column1`)
			// Not through the statement cache: the text varies with n.
			if _, err := tx.ExecContext(ctx, b.String(), args...); err != nil {
				return err
			}
			pairs = pairs[n:]
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlite: touch api keys: %w", err)
	}
	return nil
}

// AppendAudit stores e once per ID (see [pharox.KeyStore]).
func (s *Store) AppendAudit(ctx context.Context, e pharox.AuditEntry) error {
	if err := e.Validate(); err != nil {
		return fmt.Errorf("sqlite: append audit: %w", err)
	}
	if e.ID == uuid.Nil {
		e.ID = uuid.New()
	}
	if e.At.IsZero() {
		e.At = s.stamp()
	}
	err := s.writeTx(ctx, func(tx *wtx) error {
		_, err := tx.exec(`INSERT INTO audit_log (id, at, actor, action, target_kind, target_id, detail)
			VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
			idArg(e.ID), micros(e.At), e.Actor, e.Action, e.TargetKind, e.TargetID, e.Detail)
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlite: append audit %s: %w", e.Action, err)
	}
	return nil
}

// ListAudit returns the entries matching q, newest first (entries with one
// time latest-appended first).
func (s *Store) ListAudit(ctx context.Context, q pharox.AuditQuery) ([]*pharox.AuditEntry, error) {
	limit, err := q.EffectiveLimit()
	if err != nil {
		return nil, fmt.Errorf("sqlite: list audit: %w", err)
	}
	var (
		where []string
		args  []any
	)
	if !q.Since.IsZero() {
		where, args = append(where, "at >= ?"), append(args, micros(ceilMicro(q.Since)))
	}
	if !q.Until.IsZero() {
		where, args = append(where, "at < ?"), append(args, micros(ceilMicro(q.Until)))
	}
	if q.Actor != "" {
		where, args = append(where, "actor = ?"), append(args, q.Actor)
	}
	if q.Action != "" {
		where, args = append(where, "action = ?"), append(args, q.Action)
	}
	query := `SELECT id, at, actor, action, target_kind, target_id, detail FROM audit_log`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	query += ` ORDER BY at DESC, seq DESC LIMIT ?`
	args = append(args, limit)
	rows, err := s.r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list audit: %w", err)
	}
	defer rows.Close()
	out := []*pharox.AuditEntry{}
	for rows.Next() {
		var (
			e  pharox.AuditEntry
			at int64
		)
		if err := rows.Scan(&e.ID, &at, &e.Actor, &e.Action, &e.TargetKind, &e.TargetID, &e.Detail); err != nil {
			return nil, fmt.Errorf("sqlite: list audit: %w", err)
		}
		e.At = fromMicros(at)
		out = append(out, &e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list audit: %w", err)
	}
	return out, nil
}

// PurgeAudit deletes entries older than before, purgeBatch per
// transaction, and returns how many.
func (s *Store) PurgeAudit(ctx context.Context, before time.Time) (int, error) {
	total := 0
	for {
		var n int64
		err := s.writeTx(ctx, func(tx *wtx) error {
			res, err := tx.exec(`DELETE FROM audit_log WHERE seq IN (SELECT seq FROM audit_log WHERE at < ? LIMIT ?)`,
				micros(ceilMicro(before)), purgeBatch)
			if err != nil {
				return err
			}
			n, err = res.RowsAffected()
			return err
		})
		total += int(n)
		if err != nil {
			return total, fmt.Errorf("sqlite: purge audit: %w", err)
		}
		if n < purgeBatch {
			return total, nil
		}
	}
}

// ClaimLeaseVerdict stamps the lease's verdict_at unless it is set and
// reports whether this call set it (pharox.ErrLeaseNotFound for a lease
// not stored).
func (s *Store) ClaimLeaseVerdict(ctx context.Context, leaseID uuid.UUID) (bool, error) {
	var first bool
	err := s.writeTx(ctx, func(tx *wtx) error {
		res, err := tx.exec(`UPDATE leases SET verdict_at = ? WHERE id = ? AND verdict_at IS NULL`,
			micros(s.stamp()), idArg(leaseID))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 1 {
			first = true
			return nil
		}
		var one int
		err = tx.queryRow(`SELECT 1 FROM leases WHERE id = ?`, idArg(leaseID)).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrLeaseNotFound
		}
		return err
	})
	if err != nil {
		return false, fmt.Errorf("sqlite: claim lease verdict %s: %w", leaseID, err)
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
