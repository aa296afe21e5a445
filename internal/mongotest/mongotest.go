// Package mongotest gives tests a MongoDB-compatible server: the one
// PHAROX_TEST_MONGO_URL names, or a FerretDB v1 process it starts on a
// free loopback port over SQLite in a temporary directory, stopped by
// [Stop] (call it from TestMain) or, on Linux, when the test process dies.
package mongotest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// EnvURL points the tests at a MongoDB-compatible server; without it they
// start FerretDB (EnvFerretDB, or ferretdb on PATH or in GOPATH/bin).
const (
	EnvURL      = "PHAROX_TEST_MONGO_URL"
	EnvFerretDB = "PHAROX_TEST_FERRETDB"
)

// HowTo says how to get a server when there is none.
const HowTo = "set " + EnvURL + "=mongodb://host:27017/ (a MongoDB 6+ server), or build FerretDB v1 as .ci/run does " +
	"(copy the module github.com/FerretDB/FerretDB@v1.24.2, write v1.24.2 into build/version/version.txt, " +
	"go build -o $(go env GOPATH)/bin/ferretdb ./cmd/ferretdb) or point " + EnvFerretDB + " at one"

var (
	once     sync.Once
	url      string
	skipMsg  string
	startErr error
	ferret   *exec.Cmd
	dir      string
)

// Stop stops the FerretDB process this package started, if any.
func Stop() {
	if ferret != nil {
		_ = ferret.Process.Kill()
		_ = ferret.Wait()
		_ = os.RemoveAll(dir)
		ferret = nil
	}
}

// Started reports whether the server is a FerretDB this package started.
func Started() bool { return ferret != nil }

// URL returns the server's URL (mongodb://host:port/, no database), or
// skips tb saying how to get one. The first call starts FerretDB when
// needed and exports EnvURL, so worker processes inherit the server.
func URL(tb testing.TB) string {
	tb.Helper()
	once.Do(func() {
		if u := os.Getenv(EnvURL); u != "" {
			url = u
			return
		}
		bin := binary()
		if bin == "" {
			skipMsg = "no MongoDB server: " + HowTo
			return
		}
		url, startErr = start(bin)
		if startErr == nil {
			startErr = os.Setenv(EnvURL, url)
		}
	})
	if skipMsg != "" {
		tb.Skip(skipMsg)
	}
	if startErr != nil {
		tb.Fatalf("MongoDB test server: %v", startErr)
	}
	return url
}

// DatabaseURL returns the URL of database db on the test server.
func DatabaseURL(tb testing.TB, db string) string {
	u := URL(tb)
	base, query, _ := strings.Cut(u, "?")
	scheme, rest, _ := strings.Cut(base, "://")
	host, _, _ := strings.Cut(rest, "/")
	out := scheme + "://" + host + "/" + db
	if query != "" {
		out += "?" + query
	}
	return out
}

// UniqueName returns a fresh database name starting with prefix.
func UniqueName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func binary() string {
	if p := os.Getenv(EnvFerretDB); p != "" {
		return p
	}
	if p, err := exec.LookPath("ferretdb"); err == nil {
		return p
	}
	if gopath, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "ferretdb")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func start(bin string) (string, error) {
	d, err := os.MkdirTemp("", "pharox-ferretdb-")
	if err != nil {
		return "", err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	_ = l.Close()
	cmd := exec.Command(bin,
		"--handler=sqlite", "--sqlite-url=file:"+d+"/", "--state-dir="+d,
		"--listen-addr="+addr, "--debug-addr=-", "--telemetry=disable", "--log-level=ERROR")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		_ = os.RemoveAll(d)
		return "", fmt.Errorf("start %s: %w", bin, err)
	}
	ferret, dir = cmd, d
	u := "mongodb://" + addr + "/"
	client, err := mongo.Connect(options.Client().ApplyURI(u).SetServerSelectionTimeout(time.Second))
	if err != nil {
		return "", err
	}
	defer func() { _ = client.Disconnect(context.Background()) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = client.Ping(ctx, nil)
		cancel()
		if err == nil {
			return u, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("FerretDB on %s did not answer within 30s: %w", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
