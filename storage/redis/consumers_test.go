package redis

import (
	"errors"
	"testing"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// TestGetConsumerWithoutIDRecord: a consumer stored before the "cbyid"
// hash existed (only in "consumers" and "cids") is still found by id, and
// the id record is filled in.
func TestGetConsumerWithoutIDRecord(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	c, err := s.EnsureConsumer(ctx, "legacy")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.rdb.HDel(ctx, s.prefix+"cbyid", c.ID.String()).Err(); err != nil {
		t.Fatal(err)
	}
	other, err := New(s.rdb, WithPrefix(s.prefix)) // a process with empty caches
	if err != nil {
		t.Fatal(err)
	}
	got, err := other.GetConsumer(ctx, c.ID)
	if err != nil || got.ID != c.ID || got.Name != "legacy" || !got.CreatedAt.Equal(c.CreatedAt) {
		t.Fatalf("GetConsumer of a consumer without id record = %+v, %v; want %+v", got, err, c)
	}
	if n, err := s.rdb.HExists(ctx, s.prefix+"cbyid", c.ID.String()).Result(); err != nil || !n {
		t.Fatalf("id record after GetConsumer: exists=%v, %v; want it filled in", n, err)
	}
	got, err = other.GetConsumer(ctx, c.ID)
	if err != nil || got.Name != "legacy" || !got.CreatedAt.Equal(c.CreatedAt) {
		t.Fatalf("GetConsumer from the filled-in record = %+v, %v; want %+v", got, err, c)
	}
	if _, err := other.GetConsumer(ctx, uuid.New()); !errors.Is(err, pharox.ErrConsumerNotFound) {
		t.Fatalf("GetConsumer(unknown) err = %v, want ErrConsumerNotFound", err)
	}
}
