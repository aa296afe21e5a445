package mongo

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/pharox/pharox"
)

var _ pharox.KeyStore = (*Store)(nil)

// Key and audit times are stored as integer microseconds since the Unix
// epoch: a BSON date holds only milliseconds.
func toMicro(t time.Time) int64 { return t.UnixMicro() }

func fromMicro(us int64) time.Time { return time.UnixMicro(us).UTC() }

func toMicroPtr(t *time.Time) *int64 {
	if t == nil {
		return nil
	}
	v := t.UnixMicro()
	return &v
}

func fromMicroPtr(us *int64) *time.Time {
	if us == nil {
		return nil
	}
	t := fromMicro(*us)
	return &t
}

// keyDoc is a document of the api_keys collection. Unique indexes on name
// and digest make a second key with either an insert the server refuses.
type keyDoc struct {
	ID         string   `bson:"_id"`
	Name       string   `bson:"name"`
	Role       string   `bson:"role"`
	Digest     string   `bson:"digest"` // hex of the SHA-256 of the secret
	Hint       string   `bson:"hint"`
	Consumers  []string `bson:"consumers"`
	Pools      []string `bson:"pools"`
	CreatedAt  int64    `bson:"created_at"`
	ExpiresAt  *int64   `bson:"expires_at,omitempty"`
	RevokedAt  *int64   `bson:"revoked_at,omitempty"`
	LastUsedAt *int64   `bson:"last_used_at,omitempty"`
}

func newKeyDoc(k *pharox.APIKey) *keyDoc {
	d := &keyDoc{
		ID: idString(k.ID), Name: k.Name, Role: string(k.Role), Digest: hex.EncodeToString(k.Digest[:]),
		Hint: k.Hint, Consumers: k.Consumers, Pools: k.Pools, CreatedAt: toMicro(k.CreatedAt),
		ExpiresAt: toMicroPtr(k.ExpiresAt), RevokedAt: toMicroPtr(k.RevokedAt), LastUsedAt: toMicroPtr(k.LastUsedAt),
	}
	if d.Consumers == nil {
		d.Consumers = []string{}
	}
	if d.Pools == nil {
		d.Pools = []string{}
	}
	return d
}

func (d *keyDoc) key() *pharox.APIKey {
	k := &pharox.APIKey{
		ID: parseID(d.ID), Name: d.Name, Role: pharox.KeyRole(d.Role), Hint: d.Hint,
		CreatedAt: fromMicro(d.CreatedAt), ExpiresAt: fromMicroPtr(d.ExpiresAt),
		RevokedAt: fromMicroPtr(d.RevokedAt), LastUsedAt: fromMicroPtr(d.LastUsedAt),
	}
	if b, err := hex.DecodeString(d.Digest); err == nil && len(b) == len(k.Digest) {
		copy(k.Digest[:], b)
	}
	if len(d.Consumers) > 0 {
		k.Consumers = append([]string(nil), d.Consumers...)
	}
	if len(d.Pools) > 0 {
		k.Pools = append([]string(nil), d.Pools...)
	}
	return k
}

// CreateAPIKey stores a new key with one insert; the unique _id, name and
// digest indexes refuse a duplicate (revoked keys included) with
// pharox.ErrAlreadyExists.
func (s *Store) CreateAPIKey(ctx context.Context, key pharox.APIKey) (*pharox.APIKey, error) {
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("mongo: create api key: %w", err)
	}
	k := key.Clone()
	if k.ID == uuid.Nil {
		k.ID = uuid.New()
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = time.Now()
	}
	d := newKeyDoc(k)
	if _, err := s.apiKeys.InsertOne(ctx, d); err != nil {
		if mongo.IsDuplicateKeyError(err) {
			return nil, fmt.Errorf("mongo: create api key %q: name, secret or id: %w", k.Name, pharox.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("mongo: create api key %q: %w", k.Name, wrapErr(err))
	}
	return d.key(), nil
}

// findKey returns the key document matching q (pharox.ErrKeyNotFound).
func (s *Store) findKey(ctx context.Context, q bson.D) (*keyDoc, error) {
	var d keyDoc
	err := s.apiKeys.FindOne(ctx, q).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, pharox.ErrKeyNotFound
	}
	if err != nil {
		return nil, wrapErr(err)
	}
	return &d, nil
}

// GetAPIKey returns the key by id (pharox.ErrKeyNotFound).
func (s *Store) GetAPIKey(ctx context.Context, id uuid.UUID) (*pharox.APIKey, error) {
	d, err := s.findKey(ctx, bson.D{{Key: "_id", Value: idString(id)}})
	if err != nil {
		return nil, fmt.Errorf("mongo: get api key %s: %w", id, err)
	}
	return d.key(), nil
}

// GetAPIKeyByName returns the key by name (pharox.ErrKeyNotFound).
func (s *Store) GetAPIKeyByName(ctx context.Context, name string) (*pharox.APIKey, error) {
	d, err := s.findKey(ctx, bson.D{{Key: "name", Value: name}})
	if err != nil {
		return nil, fmt.Errorf("mongo: get api key %q: %w", name, err)
	}
	return d.key(), nil
}

// GetAPIKeyByDigest returns the key with this secret digest, whatever its
// state (pharox.ErrKeyNotFound).
func (s *Store) GetAPIKeyByDigest(ctx context.Context, digest [32]byte) (*pharox.APIKey, error) {
	d, err := s.findKey(ctx, bson.D{{Key: "digest", Value: hex.EncodeToString(digest[:])}})
	if err != nil {
		return nil, fmt.Errorf("mongo: get api key by secret: %w", err)
	}
	k := d.key()
	if subtle.ConstantTimeCompare(k.Digest[:], digest[:]) != 1 {
		return nil, fmt.Errorf("mongo: get api key by secret: %w", pharox.ErrKeyNotFound)
	}
	return k, nil
}

// ListAPIKeys returns every key ordered by name.
func (s *Store) ListAPIKeys(ctx context.Context) ([]*pharox.APIKey, error) {
	var docs []keyDoc
	if err := s.findAll(ctx, s.apiKeys, bson.D{}, bson.D{{Key: "name", Value: 1}}, &docs); err != nil {
		return nil, fmt.Errorf("mongo: list api keys: %w", err)
	}
	out := make([]*pharox.APIKey, len(docs))
	for i := range docs {
		out[i] = docs[i].key()
	}
	return out, nil
}

// RevokeAPIKey stamps RevokedAt once: the update only matches a key not
// yet revoked, so a second revoke (even a racing one) leaves the first
// stamp and returns the key as stored.
func (s *Store) RevokeAPIKey(ctx context.Context, id uuid.UUID) (*pharox.APIKey, error) {
	kid := idString(id)
	if _, err := s.findKey(ctx, bson.D{{Key: "_id", Value: kid}}); err != nil {
		return nil, fmt.Errorf("mongo: revoke api key %s: %w", id, err)
	}
	at := toMicro(time.Now())
	if _, err := s.apiKeys.UpdateOne(ctx,
		bson.D{{Key: "_id", Value: kid}, {Key: "revoked_at", Value: bson.D{{Key: "$exists", Value: false}}}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "revoked_at", Value: at}}}}); err != nil {
		return nil, fmt.Errorf("mongo: revoke api key %s: %w", id, wrapErr(err))
	}
	d, err := s.findKey(ctx, bson.D{{Key: "_id", Value: kid}})
	if err != nil {
		return nil, fmt.Errorf("mongo: revoke api key %s: %w", id, err)
	}
	return d.key(), nil
}

// RotateAPIKey replaces the key's digest and hint (see [pharox.KeyStore]).
// The unique digest index refuses a digest another key has.
func (s *Store) RotateAPIKey(ctx context.Context, id uuid.UUID, digest [32]byte, hint string) (*pharox.APIKey, error) {
	if digest == ([32]byte{}) {
		return nil, fmt.Errorf("mongo: rotate api key %s: %w: no secret digest", id, pharox.ErrInvalidArgument)
	}
	if len(hint) > 64 {
		return nil, fmt.Errorf("mongo: rotate api key %s: %w: hint longer than 64 bytes", id, pharox.ErrInvalidArgument)
	}
	kid := idString(id)
	d, err := s.findKey(ctx, bson.D{{Key: "_id", Value: kid}})
	if err != nil {
		return nil, fmt.Errorf("mongo: rotate api key %s: %w", id, err)
	}
	if d.RevokedAt != nil {
		return nil, fmt.Errorf("mongo: rotate api key %q: %w", d.Name, pharox.ErrKeyRevoked)
	}
	hexDigest := hex.EncodeToString(digest[:])
	// FerretDB v1 reports a unique-index violation by an update as an
	// internal error: look the digest up first, and classify both.
	switch _, err := s.findKey(ctx, bson.D{{Key: "digest", Value: hexDigest}}); {
	case err == nil:
		return nil, fmt.Errorf("mongo: rotate api key %q: secret: %w", d.Name, pharox.ErrAlreadyExists)
	case !errors.Is(err, pharox.ErrKeyNotFound):
		return nil, fmt.Errorf("mongo: rotate api key %q: %w", d.Name, err)
	}
	res, err := s.apiKeys.UpdateOne(ctx,
		bson.D{{Key: "_id", Value: kid}, {Key: "revoked_at", Value: bson.D{{Key: "$exists", Value: false}}}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "digest", Value: hexDigest}, {Key: "hint", Value: hint}}}})
	switch {
	case mongo.IsDuplicateKeyError(err) || isUniqueViolation(err):
		return nil, fmt.Errorf("mongo: rotate api key %q: secret: %w", d.Name, pharox.ErrAlreadyExists)
	case err != nil:
		return nil, fmt.Errorf("mongo: rotate api key %q: %w", d.Name, wrapErr(err))
	case res.MatchedCount == 0:
		// Revoked (or deleted) since the read.
		return nil, fmt.Errorf("mongo: rotate api key %q: %w", d.Name, pharox.ErrKeyRevoked)
	}
	d, err = s.findKey(ctx, bson.D{{Key: "_id", Value: kid}})
	if err != nil {
		return nil, fmt.Errorf("mongo: rotate api key %s: %w", id, err)
	}
	return d.key(), nil
}

// TouchAPIKeys sets LastUsedAt to the later of the stored time and the
// given one for every known id, with one bulk write of $max updates.
func (s *Store) TouchAPIKeys(ctx context.Context, used map[uuid.UUID]time.Time) error {
	if len(used) == 0 {
		return ctx.Err()
	}
	models := make([]mongo.WriteModel, 0, len(used))
	for id, t := range used {
		models = append(models, mongo.NewUpdateOneModel().
			SetFilter(bson.D{{Key: "_id", Value: idString(id)}}).
			SetUpdate(bson.D{{Key: "$max", Value: bson.D{{Key: "last_used_at", Value: toMicro(t)}}}}))
	}
	if _, err := s.apiKeys.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false)); err != nil {
		return fmt.Errorf("mongo: touch api keys: %w", wrapErr(err))
	}
	return nil
}

// auditDoc is a document of the audit_log collection; _id is the entry's
// id, so a retried append is refused by the server and changes nothing.
type auditDoc struct {
	ID         string `bson:"_id"`
	At         int64  `bson:"at"`
	Seq        int64  `bson:"seq"` // the appender's clock, in ns: orders equal At
	Actor      string `bson:"actor"`
	Action     string `bson:"action"`
	TargetKind string `bson:"target_kind"`
	TargetID   string `bson:"target_id"`
	Detail     string `bson:"detail"`
}

// AppendAudit stores e once per ID (see [pharox.KeyStore]).
func (s *Store) AppendAudit(ctx context.Context, e pharox.AuditEntry) error {
	if err := e.Validate(); err != nil {
		return fmt.Errorf("mongo: append audit: %w", err)
	}
	if e.ID == uuid.Nil {
		e.ID = uuid.New()
	}
	clock := time.Now()
	if e.At.IsZero() {
		e.At = clock
	}
	d := auditDoc{
		ID: idString(e.ID), At: toMicro(e.At), Seq: clock.UnixNano(), Actor: e.Actor, Action: e.Action,
		TargetKind: e.TargetKind, TargetID: e.TargetID, Detail: e.Detail,
	}
	if _, err := s.audit.InsertOne(ctx, d); err != nil && !mongo.IsDuplicateKeyError(err) {
		return fmt.Errorf("mongo: append audit: %w", wrapErr(err))
	}
	return nil
}

// ListAudit returns the entries matching q, newest first; entries with the
// same time come latest-appended first.
func (s *Store) ListAudit(ctx context.Context, q pharox.AuditQuery) ([]*pharox.AuditEntry, error) {
	limit, err := q.EffectiveLimit()
	if err != nil {
		return nil, fmt.Errorf("mongo: list audit: %w", err)
	}
	filter := bson.D{}
	at := bson.D{}
	if !q.Since.IsZero() {
		// Since <= At: an entry at a fraction of a microsecond after
		// Since is stored at Since's microsecond, so round Since up.
		at = append(at, bson.E{Key: "$gte", Value: ceilMicro(q.Since)})
	}
	if !q.Until.IsZero() {
		at = append(at, bson.E{Key: "$lt", Value: ceilMicro(q.Until)})
	}
	if len(at) > 0 {
		filter = append(filter, bson.E{Key: "at", Value: at})
	}
	if q.Actor != "" {
		filter = append(filter, bson.E{Key: "actor", Value: q.Actor})
	}
	if q.Action != "" {
		filter = append(filter, bson.E{Key: "action", Value: q.Action})
	}
	cur, err := s.audit.Find(ctx, filter, options.Find().
		SetSort(bson.D{{Key: "at", Value: -1}, {Key: "seq", Value: -1}}).SetLimit(int64(limit)))
	if err != nil {
		return nil, fmt.Errorf("mongo: list audit: %w", wrapErr(err))
	}
	var docs []auditDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, fmt.Errorf("mongo: list audit: %w", wrapErr(err))
	}
	out := make([]*pharox.AuditEntry, 0, len(docs))
	for i := range docs {
		d := &docs[i]
		out = append(out, &pharox.AuditEntry{
			ID: parseID(d.ID), At: fromMicro(d.At), Actor: d.Actor, Action: d.Action,
			TargetKind: d.TargetKind, TargetID: d.TargetID, Detail: d.Detail,
		})
	}
	return out, nil
}

// ceilMicro is t in microseconds, rounded up.
func ceilMicro(t time.Time) int64 {
	us := t.UnixMicro()
	if t.After(time.UnixMicro(us)) {
		us++
	}
	return us
}

// PurgeAudit deletes entries older than before and returns how many.
func (s *Store) PurgeAudit(ctx context.Context, before time.Time) (int, error) {
	res, err := s.audit.DeleteMany(ctx, bson.D{{Key: "at", Value: bson.D{{Key: "$lt", Value: ceilMicro(before)}}}})
	if err != nil {
		return 0, fmt.Errorf("mongo: purge audit: %w", wrapErr(err))
	}
	return int(res.DeletedCount), nil
}

// isUniqueViolation recognises the error FerretDB v1 returns when an
// update breaks a unique index (an InternalError naming the constraint,
// not MongoDB's duplicate key error 11000).
func isUniqueViolation(err error) bool {
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}
