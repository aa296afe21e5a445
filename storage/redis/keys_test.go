package redis

import (
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// TestRetriedKeyWritesSucceed checks that CreateAPIKey, RotateAPIKey,
// AppendAudit and ClaimLeaseVerdict sent twice by go-redis answer as their
// first run did: the key created (not ErrAlreadyExists for itself), the key
// rotated, one audit entry, the verdict claimed; while a call of its own
// still gets ErrAlreadyExists or false.
func TestRetriedKeyWritesSucceed(t *testing.T) {
	ctx := t.Context()
	type step struct {
		what  string
		op    func(s *Store) error
		again func(s *Store) error // a call of its own afterwards: nil when it behaves as wanted
	}
	steps := func() []step {
		var key *pharox.APIKey
		var lease *pharox.Lease
		entry := pharox.AuditEntry{ID: uuid.New(), Actor: "admin", Action: "pool.create", TargetKind: "pool", TargetID: "p"}
		digest := pharox.APIKeyDigest("phx_rotated")
		return []step{
			{"CreateAPIKey", func(s *Store) error {
				k, err := s.CreateAPIKey(ctx, pharox.APIKey{Name: "k", Role: pharox.KeyRoleConsumer,
					Digest: pharox.APIKeyDigest("phx_first"), Hint: "phx_firs", Consumers: []string{"c"}})
				key = k
				return err
			}, func(s *Store) error {
				_, err := s.CreateAPIKey(ctx, pharox.APIKey{Name: "k", Role: pharox.KeyRoleViewer, Digest: pharox.APIKeyDigest("phx_other")})
				if !errors.Is(err, pharox.ErrAlreadyExists) {
					return errors.New("a second key named k: err = " + errString(err) + ", want ErrAlreadyExists")
				}
				return nil
			}},
			{"RotateAPIKey", func(s *Store) error {
				_, err := s.RotateAPIKey(ctx, key.ID, digest, "phx_rota")
				return err
			}, func(s *Store) error {
				got, err := s.GetAPIKeyByDigest(ctx, digest)
				if err != nil || got.ID != key.ID || got.Hint != "phx_rota" {
					return errors.New("the rotated key is not found by its new digest: " + errString(err))
				}
				if _, err := s.GetAPIKeyByDigest(ctx, pharox.APIKeyDigest("phx_first")); !errors.Is(err, pharox.ErrKeyNotFound) {
					return errors.New("the old secret still matches: err = " + errString(err))
				}
				return nil
			}},
			{"AppendAudit", func(s *Store) error { return s.AppendAudit(ctx, entry) }, func(s *Store) error {
				if err := s.AppendAudit(ctx, entry); err != nil {
					return err
				}
				got, err := s.ListAudit(ctx, pharox.AuditQuery{})
				if err != nil || len(got) != 1 || got[0].ID != entry.ID {
					return errors.New("the audit log does not hold exactly the one entry appended twice: " + errString(err))
				}
				return nil
			}},
			{"ClaimLeaseVerdict", func(s *Store) error {
				_, req := retryPool(t, s)
				l, err := s.AcquireLease(ctx, req)
				if err != nil {
					return err
				}
				lease = l
				first, err := s.ClaimLeaseVerdict(ctx, lease.ID)
				if err == nil && !first {
					err = errors.New("the first claim, sent twice, reported false")
				}
				return err
			}, func(s *Store) error {
				first, err := s.ClaimLeaseVerdict(ctx, lease.ID)
				if err != nil || first {
					return errors.New("a second claim of its own reported true or failed: " + errString(err))
				}
				return nil
			}},
		}
	}
	for attempt := 0; ; attempt++ {
		rs := newRetryingStore(t)
		all := true
		for _, st := range steps() {
			var err error
			if !rs.stalled(t, func() { err = st.op(rs.Store) }) {
				all = false
			}
			if err != nil {
				t.Fatalf("%s sent twice: %v", st.what, err)
			}
			if err := st.again(rs.Store); err != nil {
				t.Errorf("%s: %v", st.what, err)
			}
		}
		if all {
			return
		}
		if attempt == 2 {
			t.Fatal("the store's client did not retry every step in three attempts")
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}

// TestVerdictsForgottenWithLeases checks that a lease's verdict entry goes
// when the lease is purged or its proxy deleted, so the verdicts hash does
// not outgrow the lease retention.
func TestVerdictsForgottenWithLeases(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	proxy, req := retryPool(t, s)
	for _, purge := range []bool{true, false} {
		l, err := s.AcquireLease(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if first, err := s.ClaimLeaseVerdict(ctx, l.ID); err != nil || !first {
			t.Fatalf("ClaimLeaseVerdict = %v, %v; want true", first, err)
		}
		if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
			t.Fatal(err)
		}
		if purge {
			if _, err := s.PurgeEndedLeases(ctx, time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		} else if err := s.DeleteProxy(ctx, proxy.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ClaimLeaseVerdict(ctx, l.ID); !errors.Is(err, pharox.ErrLeaseNotFound) {
			t.Errorf("claim on a forgotten lease: err = %v, want ErrLeaseNotFound", err)
		}
		if n := s.rdb.HLen(ctx, s.prefix+"verdicts").Val(); n != 0 {
			t.Errorf("verdicts hash holds %d entries after the lease was forgotten", n)
		}
	}
}
