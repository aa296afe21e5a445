package api

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

func TestTimeUsesNumericOffset(t *testing.T) {
	ts := time.Date(2026, 1, 1, 0, 5, 0, 0, time.UTC)
	b, err := json.Marshal(NewTime(ts))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `"2026-01-01T00:05:00.000000+00:00"` {
		t.Fatalf("got %s", b)
	}
	var back Time
	if err := json.Unmarshal([]byte(`"2026-01-01T01:05:00+01:00"`), &back); err != nil {
		t.Fatal(err)
	}
	if !back.Equal(ts) {
		t.Fatalf("round trip: got %v want %v", back, ts)
	}
	if err := json.Unmarshal([]byte(`"yesterday"`), &back); err == nil {
		t.Fatal("accepted a non-ISO timestamp")
	}
	if err := json.Unmarshal([]byte(`12`), &back); err == nil {
		t.Fatal("accepted a non-ISO timestamp")
	}
}

func TestProxySecretsOnlyWhenAsked(t *testing.T) {
	p := &pharox.Proxy{
		ID: uuid.New(), Host: "10.0.0.1", Port: 8080, Protocol: pharox.ProtocolHTTP,
		Credentials: &pharox.Credentials{User: "u", Password: "s3cr3t-pw"}, Status: pharox.StatusActive,
	}
	plain, _ := json.Marshal(FromProxy(p, false))
	if strings.Contains(string(plain), "s3cr3t-pw") {
		t.Fatalf("password leaked without secrets: %s", plain)
	}
	if !strings.Contains(string(plain), `"username":"u"`) {
		t.Fatalf("username missing: %s", plain)
	}
	full, _ := json.Marshal(FromProxy(p, true))
	if !strings.Contains(string(full), `"password":"s3cr3t-pw"`) || !strings.Contains(string(full), "http://u:s3cr3t-pw@10.0.0.1:8080") {
		t.Fatalf("secrets missing when asked: %s", full)
	}
}

func TestCreateProxyRequestValidates(t *testing.T) {
	pool := uuid.New()
	r := CreateProxyRequest{Host: " [::1] ", Port: 1080, Protocol: "SOCKS5", Country: "ar", Username: "a", Password: "b"}
	p, err := r.ToProxy(pool)
	if err != nil {
		t.Fatal(err)
	}
	if p.Host != "::1" || p.Protocol != pharox.ProtocolSOCKS5 || p.Country != "AR" || p.Status != pharox.StatusActive || p.PoolID != pool {
		t.Fatalf("not normalized: %+v", p)
	}
	back := FromProxyModel(&p)
	if back.Password != "b" || back.Host != "::1" {
		t.Fatalf("inverse lost data: %+v", back)
	}
	for _, bad := range []CreateProxyRequest{
		{Host: "", Port: 80}, {Host: "h", Port: 0}, {Host: "h", Port: 70000},
		{Host: "h", Port: 80, Protocol: "ftp"}, {Host: "bad host", Port: 80},
	} {
		if _, err := bad.ToProxy(pool); err == nil {
			t.Errorf("%+v: accepted", bad)
		}
	}
}
