package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	goredis "github.com/redis/go-redis/v9"
)

var _ pharox.LeaseVerdictStore = (*Store)(nil)

// auditRecord is an audit entry's JSON in the audit:e hash; its time is
// kept apart, before it (see audit_append.lua).
type auditRecord struct {
	Actor      string `json:"a"`
	Action     string `json:"x"`
	TargetKind string `json:"k"`
	TargetID   string `json:"t"`
	Detail     string `json:"d,omitempty"`
}

// AppendAudit stores e in one script, idempotent on e.ID: an id already
// stored keeps its entry, so a retried append stores one. A zero ID gets a
// fresh one, a zero At the server's clock.
func (s *Store) AppendAudit(ctx context.Context, e pharox.AuditEntry) error {
	if err := e.Validate(); err != nil {
		return fmt.Errorf("redis: append audit entry: %w", err)
	}
	if e.ID == uuid.Nil {
		e.ID = uuid.New()
	}
	rec, err := jsonString(auditRecord{Actor: e.Actor, Action: e.Action, TargetKind: e.TargetKind, TargetID: e.TargetID, Detail: e.Detail})
	if err != nil {
		return fmt.Errorf("redis: append audit entry %s: %w", e.ID, err)
	}
	at := ""
	if !e.At.IsZero() {
		at = strconv.FormatInt(e.At.UnixMicro(), 10)
	}
	if _, err := s.run(ctx, scriptAuditAppend, e.ID.String(), at, rec); err != nil {
		return wrap(err, "append audit entry %s", e.ID)
	}
	return nil
}

// decodeAudit decodes an audit:e entry, "<at>|<JSON>".
func decodeAudit(id, v string) (*pharox.AuditEntry, error) {
	at, js, ok := strings.Cut(v, "|")
	var r auditRecord
	if !ok || json.Unmarshal([]byte(js), &r) != nil {
		return nil, fmt.Errorf("audit entry %s: malformed record", id)
	}
	e := &pharox.AuditEntry{Actor: r.Actor, Action: r.Action, TargetKind: r.TargetKind, TargetID: r.TargetID, Detail: r.Detail}
	var errs [2]error
	e.ID, errs[0] = uuid.Parse(id)
	e.At, errs[1] = micros(at)
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("audit entry %s: malformed record: %v", id, err)
	}
	return e, nil
}

// ListAudit returns the entries matching q (see [pharox.AuditQuery.Matches]),
// newest first, entries with one time latest-appended first. It reads the
// audit sorted set backwards from q.Until in pages, outside any script,
// and filters actor and action here: the cost grows with the entries of
// the time range read before the last match, not with the whole log.
func (s *Store) ListAudit(ctx context.Context, q pharox.AuditQuery) ([]*pharox.AuditEntry, error) {
	limit, err := q.EffectiveLimit()
	if err != nil {
		return nil, fmt.Errorf("redis: list audit: %w", err)
	}
	maxScore, minScore := "+inf", "-inf"
	if !q.Until.IsZero() {
		maxScore = "(" + ceilMicros(q.Until)
	}
	if !q.Since.IsZero() {
		minScore = ceilMicros(q.Since)
	}
	out := []*pharox.AuditEntry{}
	for offset := int64(0); ; offset += cleanupBatch {
		members, err := s.rdb.ZRevRangeByScore(ctx, s.prefix+"audit", &goredis.ZRangeBy{
			Max: maxScore, Min: minScore, Offset: offset, Count: cleanupBatch,
		}).Result()
		if err != nil {
			return nil, wrap(err, "list audit")
		}
		if len(members) == 0 {
			return out, nil
		}
		ids := make([]string, len(members))
		for i, m := range members {
			_, ids[i], _ = strings.Cut(m, ":") // after the sequence number
		}
		vals, err := s.rdb.HMGet(ctx, s.prefix+"audit:e", ids...).Result()
		if err != nil {
			return nil, wrap(err, "list audit")
		}
		for i, v := range vals {
			str, ok := v.(string)
			if !ok {
				continue // purged meanwhile
			}
			e, err := decodeAudit(ids[i], str)
			if err != nil {
				return nil, fmt.Errorf("redis: list audit: %w", err)
			}
			if !q.Matches(e) {
				continue
			}
			out = append(out, e)
			if len(out) == limit {
				return out, nil
			}
		}
		if len(members) < cleanupBatch {
			return out, nil
		}
	}
}

// ceilMicros is t in whole microseconds, rounded up: times are stored
// in whole microseconds, so x >= t and x < t hold exactly when they hold
// for t rounded up.
func ceilMicros(t time.Time) string {
	us := t.UnixMicro()
	if t.After(time.UnixMicro(us)) {
		us++
	}
	return strconv.FormatInt(us, 10)
}

// PurgeAudit deletes the entries older than before, in batches of at most
// cleanupBatch per script, and returns how many it deleted.
func (s *Store) PurgeAudit(ctx context.Context, before time.Time) (int, error) {
	total := 0
	for {
		v, err := s.run(ctx, scriptAuditPurge, ceilMicros(before), cleanupBatch)
		if err != nil {
			return total, wrap(err, "purge audit")
		}
		n, _ := v.(int64)
		total += int(n)
		if n < cleanupBatch {
			return total, nil
		}
	}
}

// ClaimLeaseVerdict records that the lease's verdict was given, in one
// script that checks the lease exists ([pharox.ErrLeaseNotFound]) and sets
// its entry in the verdicts hash only if absent. The entry holds the
// call's token, so the same call sent again (a client's retry) still
// reports true; the entry is forgotten with the lease.
func (s *Store) ClaimLeaseVerdict(ctx context.Context, leaseID uuid.UUID) (bool, error) {
	v, err := s.run(ctx, scriptVerdict, leaseID.String(), callToken())
	if err != nil {
		return false, wrap(err, "claim verdict of lease %s", leaseID)
	}
	n, _ := v.(int64)
	return n == 1, nil
}
