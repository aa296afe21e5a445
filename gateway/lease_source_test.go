package gateway

import (
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/pharox/pharox/client"
	"github.com/pharox/pharox/internal/testpeers"
)

// TestLeaseSourceUnavailable checks that a lease source that cannot be
// reached (the pharox service is down) gets the gateway's own 503 with
// Retry-After, not a 502: the client may retry.
func TestLeaseSourceUnavailable(t *testing.T) {
	testpeers.CheckLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	c, err := client.New(down, client.WithAPIKey("consumer-key"), client.WithRetry(0, 0), client.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(cfg *Config) { cfg.Leaser = NewRemoteLeaser(c) })
	resp, err := e.client.Get(e.tg.Plain.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	reason := resp.Header.Get(ReasonHeader)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(reason, "lease source unavailable") {
		t.Fatalf("status %d reason %q, want 503 naming the unavailable lease source", resp.StatusCode, reason)
	}
	if ra := resp.Header.Get("Retry-After"); ra == "" {
		t.Fatal("503 without Retry-After")
	}
}
