package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox/api"
)

// servedProcess is a real `pharox serve` process: this test binary run as
// the pharox command.
type servedProcess struct {
	url string
}

func startServeProcess(t *testing.T, storage, adminKey string) *servedProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], "serve", "--listen", "127.0.0.1:0", "--storage", storage, "--reap-interval", "1s", "--log-level", "warn")
	cmd.Env = append(os.Environ(), envRunAsPharox+"=1", "PHAROX_ADMIN_KEY="+adminKey)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr serveOutput
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		stdin.Close()
	})
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "pharox: serving on "); ok {
				u, _, _ := strings.Cut(rest, " ")
				urls <- u
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case u := <-urls:
		return &servedProcess{url: u}
	case <-time.After(60 * time.Second):
		t.Fatalf("pharox serve did not start; stderr:\n%s", stderr.String())
	}
	return nil
}

func (p *servedProcess) do(t *testing.T, method, path, key, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, p.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-Key", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

// waitFor repeats GET /v1/pools/ with key on p until it answers status,
// for at most 5 s.
func (p *servedProcess) waitFor(t *testing.T, key string, status int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, body := p.do(t, "GET", "/v1/pools/", key, "")
		if got == status {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still answers %d (%s) 5s after the change, want %d", p.url, got, body, status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTwoServeProcessesShareKeys: a key created through one `pharox serve`
// works on a second one sharing the SQLite database within 5 s, and a key
// revoked through the second stops on the first within 5 s.
func TestTwoServeProcessesShareKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two pharox serve processes")
	}
	const admin = "two-serves-admin-key-8c1d"
	storage := "sqlite://" + filepath.Join(t.TempDir(), "pharox.db")
	if err := createSQLiteFile(storage); err != nil {
		t.Fatal(err)
	}
	one := startServeProcess(t, storage, admin)
	two := startServeProcess(t, storage, admin)

	status, body := one.do(t, "POST", "/v1/keys/", admin, `{"name":"shared","role":"consumer","consumers":["c1"]}`)
	if status == http.StatusNotImplemented {
		t.Skipf("the SQLite store does not keep API keys yet: %s", body)
	}
	if status != http.StatusCreated {
		t.Fatalf("create key: %d %s", status, body)
	}
	var k api.CreatedKey
	if err := json.Unmarshal(body, &k); err != nil {
		t.Fatal(err)
	}
	two.waitFor(t, k.Secret, http.StatusOK)
	// The first serve has the key in its cache when it is revoked.
	one.waitFor(t, k.Secret, http.StatusOK)
	if status, body := two.do(t, "DELETE", "/v1/keys/shared", admin, ""); status != http.StatusOK {
		t.Fatalf("revoke through the second serve: %d %s", status, body)
	}
	one.waitFor(t, k.Secret, http.StatusUnauthorized)
}
