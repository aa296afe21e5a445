package pharox

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox/internal/ptrutil"
)

func sampleProxy() *Proxy {
	checked := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return &Proxy{
		ID: uuid.New(), PoolID: uuid.New(), Host: "10.1.2.3", Port: 8080, Protocol: ProtocolHTTP,
		Credentials: &Credentials{User: "user@x", Password: "p@ss:w/rd"},
		Country:     "AR", ASN: ptrutil.Ptr(0), Latitude: ptrutil.Ptr(-34.6), Longitude: ptrutil.Ptr(-58.4),
		Tags: []string{"a", "b"}, Status: StatusActive, MaxConcurrency: ptrutil.Ptr(2),
		CheckedAt: &checked, StatusChangedAt: &checked,
	}
}

func TestCloneIsDeep(t *testing.T) {
	p := sampleProxy()
	c := p.Clone()
	*c.Latitude, *c.Longitude, *c.ASN, *c.MaxConcurrency = 1, 2, 3, 4
	c.Credentials.Password = "changed"
	c.Tags[0] = "z"
	*c.CheckedAt = time.Time{}
	*c.StatusChangedAt = time.Time{}
	if *p.Latitude != -34.6 || *p.Longitude != -58.4 || *p.ASN != 0 || *p.MaxConcurrency != 2 ||
		p.Credentials.Password != "p@ss:w/rd" || p.Tags[0] != "a" || p.CheckedAt.IsZero() || p.StatusChangedAt.IsZero() {
		t.Fatalf("clone shares state with the original: %+v", p)
	}
	if (*Proxy)(nil).Clone() != nil {
		t.Fatal("nil clone should be nil")
	}
	l := &Lease{ID: uuid.New(), ReleasedAt: ptrutil.Ptr(time.Now()), Proxy: p}
	lc := l.Clone()
	*lc.ReleasedAt = time.Time{}
	lc.Proxy.Host = "other"
	if l.ReleasedAt.IsZero() || l.Proxy.Host != "10.1.2.3" {
		t.Fatal("lease clone shares state")
	}
}

func TestURLEscapesCredentialsAndBracketsIPv6(t *testing.T) {
	p := sampleProxy()
	if got, want := p.URL(), "http://user%40x:p%40ss%3Aw%2Frd@10.1.2.3:8080"; got != want {
		t.Fatalf("URL() = %q, want %q", got, want)
	}
	p.Host, p.Protocol, p.Credentials = "2001:db8::1", ProtocolSOCKS5, nil
	if got, want := p.URL(), "socks5://[2001:db8::1]:8080"; got != want {
		t.Fatalf("URL() = %q, want %q", got, want)
	}
}

func TestPasswordNeverPrinted(t *testing.T) {
	p := sampleProxy()
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "proxy", p, "creds", *p.Credentials)
	js, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	outputs := map[string]string{
		"String": p.String(), "%v": fmt.Sprintf("%v", p), "%+v": fmt.Sprintf("%+v", p),
		"creds %v": fmt.Sprintf("%v", *p.Credentials), "creds %+v": fmt.Sprintf("%+v", *p.Credentials),
		"creds %#v": fmt.Sprintf("%#v", *p.Credentials), "slog": logs.String(), "json": string(js),
	}
	for name, out := range outputs {
		if strings.Contains(out, "p@ss") || strings.Contains(out, "p%40ss") {
			t.Errorf("%s leaks the password: %s", name, out)
		}
	}
	if !strings.Contains(p.String(), "10.1.2.3:8080") {
		t.Errorf("String() lost the address: %s", p.String())
	}
}

func TestNormalizeAndValidate(t *testing.T) {
	p := Proxy{Host: " [::1] ", Port: 1, Protocol: "HTTPS", Country: " ar ", Tags: []string{" x ", "", "x", "y"}}
	p.Normalize()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if p.Host != "::1" || p.Protocol != ProtocolHTTPS || p.Country != "AR" || p.Status != StatusActive ||
		strings.Join(p.Tags, ",") != "x,y" {
		t.Fatalf("normalize: %+v", p)
	}
	bad := []Proxy{
		{Host: "", Port: 80, Protocol: "http", Status: "active"},
		{Host: "a b", Port: 80, Protocol: "http", Status: "active"},
		{Host: "h", Port: 0, Protocol: "http", Status: "active"},
		{Host: "h", Port: 65536, Protocol: "http", Status: "active"},
		{Host: "h", Port: 80, Protocol: "ftp", Status: "active"},
		{Host: "h", Port: 80, Protocol: "http", Status: "dead"},
		{Host: "h", Port: 80, Protocol: "http", Status: "active", MaxConcurrency: ptrutil.Ptr(0)},
		{Host: "h", Port: 80, Protocol: "http", Status: "active", Latitude: ptrutil.Ptr(1.0)},
		{Host: "h", Port: 80, Protocol: "http", Status: "active", Latitude: ptrutil.Ptr(91.0), Longitude: ptrutil.Ptr(0.0)},
		{Host: "h", Port: 80, Protocol: "http", Status: "active", Latitude: ptrutil.Ptr(0.0), Longitude: ptrutil.Ptr(181.0)},
		{Host: strings.Repeat("a", 64) + ".com", Port: 80, Protocol: "http", Status: "active"},
	}
	for _, b := range bad {
		if err := b.Validate(); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%+v: got %v, want ErrInvalidArgument", b, err)
		}
	}
}

func TestApplyHealthCheckStreakAndRecovery(t *testing.T) {
	p := &Proxy{Status: StatusActive}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fail := HealthCheckResult{Status: StatusInactive, FailureThreshold: 3, Error: "timeout", CheckedAt: t0}
	for i := 1; i <= 2; i++ {
		p.ApplyHealthCheck(fail)
		if p.Status != StatusActive || p.FailureStreak != i || p.StatusChangedAt != nil {
			t.Fatalf("after %d failures below threshold: %+v", i, p)
		}
	}
	fail.CheckedAt = t0.Add(time.Minute)
	p.ApplyHealthCheck(fail)
	if p.Status != StatusInactive || p.FailureStreak != 3 || !p.StatusChangedAt.Equal(t0.Add(time.Minute)) || p.LastError != "timeout" {
		t.Fatalf("threshold reached: %+v", p)
	}
	p.ApplyHealthCheck(HealthCheckResult{Status: StatusSlow, Latency: 1500 * time.Millisecond, StatusCode: 200, CheckedAt: t0.Add(2 * time.Minute)})
	if p.Status != StatusSlow || p.FailureStreak != 0 || p.LatencyMS != 1500 || p.LastError != "" || p.LastStatusCode != 200 {
		t.Fatalf("recovery: %+v", p)
	}
	p.ApplyHealthCheck(HealthCheckResult{Status: StatusBanned, CheckedAt: t0.Add(3 * time.Minute)})
	if p.Status != StatusBanned {
		t.Fatalf("threshold 0 applies at once: %+v", p)
	}
}

func TestParsers(t *testing.T) {
	if p, err := ParseProtocol(" SOCKS5 "); err != nil || p != ProtocolSOCKS5 {
		t.Fatal(p, err)
	}
	if _, err := ParseProtocol("gopher"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatal(err)
	}
	if s, err := ParseProxyStatus("Banned"); err != nil || s != StatusBanned {
		t.Fatal(s, err)
	}
	if _, err := ParseProxyStatus("zombie"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatal(err)
	}
	if s, err := ParseStrategy(""); err != nil || s != FirstAvailable {
		t.Fatal(s, err)
	}
	if _, err := ParseStrategy("fastest"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatal(err)
	}
}

func TestURLWithUserOnly(t *testing.T) {
	p := &Proxy{Host: "h", Port: 1080, Protocol: ProtocolSOCKS4, Credentials: &Credentials{User: "userid"}}
	if got, want := p.URL(), "socks4://userid@h:1080"; got != want {
		t.Fatalf("URL() = %q, want %q", got, want)
	}
	if got, want := p.String(), "socks4://userid@h:1080"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}
