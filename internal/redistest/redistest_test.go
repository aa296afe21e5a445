package redistest

import (
	"context"
	"strconv"
	"testing"
)

func TestEscapeGlob(t *testing.T) {
	for in, want := range map[string]string{
		"plain:":          "plain:",
		"{pharoxtest-1}:": "{pharoxtest-1}:",
		`a*b?c[d]e\f`:     `a\*b\?c\[d\]e\\f`,
	} {
		if got := EscapeGlob(in); got != want {
			t.Errorf("EscapeGlob(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestDeletePrefix checks that exactly the keys under the prefix go, the
// prefix taken literally ("[x]" is not a character class).
func TestDeletePrefix(t *testing.T) {
	c := Client(t)
	ctx := context.Background()
	prefix := "{redistest-" + t.Name() + "}[x]:"
	other := "{redistest-" + t.Name() + "}x:" // what "[x]" would match as a glob
	t.Cleanup(func() { c.Del(ctx, other+"k") })
	for i := range 1200 { // more than one batch
		if err := c.Set(ctx, prefix+strconv.Itoa(i), 1, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Set(ctx, other+"k", 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	DeletePrefix(t, c, prefix)
	if n, err := c.Keys(ctx, EscapeGlob(prefix)+"*").Result(); err != nil || len(n) != 0 {
		t.Errorf("after DeletePrefix: %d keys under %s (err %v), want 0", len(n), prefix, err)
	}
	if n, err := c.Exists(ctx, other+"k").Result(); err != nil || n != 1 {
		t.Errorf("DeletePrefix(%q) deleted %sk (exists %d, err %v)", prefix, other, n, err)
	}
}
