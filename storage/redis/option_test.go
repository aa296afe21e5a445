package redis

import (
	"errors"
	"testing"
	"time"

	"github.com/pharox/pharox"
	goredis "github.com/redis/go-redis/v9"
)

// TestNewRefusesBadOptions: New fails with the first invalid option's
// error, wrapping ErrInvalidArgument in one sentence that names the option
// and the value. New does not contact Redis, so no server is needed.
func TestNewRefusesBadOptions(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { c.Close() })
	for _, tc := range []struct {
		name string
		opts []Option
		want string
	}{
		{"empty prefix", []Option{WithPrefix("")}, "redis: WithPrefix: prefix is empty"},
		{"lease retention", []Option{WithEndedLeaseRetention(-time.Hour)}, "redis: WithEndedLeaseRetention: retention must not be negative, got -1h0m0s"},
		{"usage retention", []Option{WithUsageRetention(-time.Minute)}, "redis: WithUsageRetention: retention must not be negative, got -1m0s"},
		{"max batch 0", []Option{WithMaxBatch(0)}, "redis: WithMaxBatch: batch size must be in 1-1000, got 0"},
		{"max batch 1001", []Option{WithMaxBatch(1001)}, "redis: WithMaxBatch: batch size must be in 1-1000, got 1001"},
		{"first error wins", []Option{nil, WithPrefix("{a}:"), WithMaxBatch(-1), WithPrefix("")}, "redis: WithMaxBatch: batch size must be in 1-1000, got -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(c, tc.opts...)
			if !errors.Is(err, pharox.ErrInvalidArgument) || err.Error() != pharox.ErrInvalidArgument.Error()+": "+tc.want {
				t.Fatalf("New: %v, %v; want ErrInvalidArgument saying %q", s, err, tc.want)
			}
		})
	}
	// Zero retentions (keep until purged) and nil options are valid.
	s, err := New(c, nil, WithEndedLeaseRetention(0), WithUsageRetention(0), WithMaxBatch(1000))
	if err != nil {
		t.Fatal(err)
	}
	if s.retention != 0 || s.usageRetention != 0 || s.maxBatch != 1000 {
		t.Errorf("store retention %v, usage retention %v, max batch %d; want 0, 0, 1000", s.retention, s.usageRetention, s.maxBatch)
	}
}
