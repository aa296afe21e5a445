package mongo

import (
	"errors"
	"strings"
	"testing"

	"github.com/pharox/pharox"
)

// TestBadOptionsAreRefused: the first invalid option's error wraps
// ErrInvalidArgument in one sentence naming the option and the value; nil
// options are skipped. No server is needed: options are checked before
// any connection.
func TestBadOptionsAreRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []Option
		want string
	}{
		{"budget too small", []Option{WithFilterScanBudget(5)}, "mongo: WithFilterScanBudget: budget must be in 10-1000000, got 5"},
		{"prefix", []Option{WithCollectionPrefix("Bad-Prefix")}, `mongo: WithCollectionPrefix: prefix "Bad-Prefix" must be lower-case letters, digits and underscores, at most 32 bytes, not starting with a digit`},
		{"first error wins", []Option{nil, WithFilterScanBudget(100), WithCollectionPrefix(""), WithFilterScanBudget(0)}, `mongo: WithCollectionPrefix: prefix "" must be lower-case letters`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := buildConfig(tc.opts)
			if !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("buildConfig: %v; want ErrInvalidArgument saying %q", err, tc.want)
			}
		})
	}
	c, err := buildConfig([]Option{nil, WithFilterScanBudget(10), WithCollectionPrefix("p_1")})
	if err != nil || c.budget != 10 || c.prefix != "p_1" {
		t.Fatalf("boundary values: %+v, %v", c, err)
	}
}
