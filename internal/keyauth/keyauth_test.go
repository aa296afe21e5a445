package keyauth

import (
	"context"
	"errors"
	"testing"

	"github.com/pharox/pharox"
)

func TestBootstrapRoles(t *testing.T) {
	a := New(nil, []string{"admin-1", ""}, []string{"cons-1", "cons-2"})
	for key, want := range map[string]pharox.KeyRole{
		"admin-1": pharox.KeyRoleAdmin, "cons-1": pharox.KeyRoleConsumer, "cons-2": pharox.KeyRoleConsumer,
		"": "", "admin-": "", "admin-12": "", "CONS-1": "",
	} {
		id, err := a.Authenticate(context.Background(), key)
		switch {
		case want == "" && !errors.Is(err, ErrUnknownKey):
			t.Errorf("%q: %v, %v; want ErrUnknownKey", key, id, err)
		case want != "" && (err != nil || id.Role != want || id.Name != BootstrapName || id.Scoped()):
			t.Errorf("%q: %+v, %v; want unscoped bootstrap %s", key, id, err, want)
		}
	}
	if !New(nil, nil, []string{""}).Empty() {
		t.Error("empty keys must not count as configured")
	}
}
