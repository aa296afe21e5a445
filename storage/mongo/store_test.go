package mongo

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

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/storagetest"
)

// envURL points the tests at a MongoDB-compatible server; without it they
// start FerretDB (envFerretDB, or ferretdb on PATH or in GOPATH/bin) on a
// free loopback port over SQLite in a temporary directory.
const (
	envURL      = "PHAROX_TEST_MONGO_URL"
	envFerretDB = "PHAROX_TEST_FERRETDB"
)

const howToGetFerretDB = "set " + envURL + "=mongodb://host:27017/ (a MongoDB 6+ server), or build FerretDB v1 as .ci/run does " +
	"(copy the module github.com/FerretDB/FerretDB@v1.24.2, write v1.24.2 into build/version/version.txt, go build ./cmd/ferretdb) " +
	"and put it on PATH or in " + envFerretDB

var (
	serverOnce sync.Once
	serverURL  string
	serverSkip string
	serverErr  error
	ferret     *exec.Cmd
	ferretDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if ferret != nil {
		_ = ferret.Process.Kill()
		_ = ferret.Wait()
		_ = os.RemoveAll(ferretDir)
	}
	os.Exit(code)
}

// ferretBinary finds a ferretdb binary, or returns "".
func ferretBinary() string {
	if p := os.Getenv(envFerretDB); p != "" {
		return p
	}
	if p, err := exec.LookPath("ferretdb"); err == nil {
		return p
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "ferretdb")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// startFerretDB starts FerretDB on a free loopback port and waits until it
// answers a ping.
func startFerretDB(bin string) (string, error) {
	dir, err := os.MkdirTemp("", "pharox-ferretdb-")
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
		"--handler=sqlite", "--sqlite-url=file:"+dir+"/", "--state-dir="+dir,
		"--listen-addr="+addr, "--debug-addr=-", "--telemetry=disable", "--log-level=ERROR")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("start %s: %w", bin, err)
	}
	ferret, ferretDir = cmd, dir
	url := "mongodb://" + addr + "/"
	client, err := mongo.Connect(options.Client().ApplyURI(url).SetServerSelectionTimeout(time.Second))
	if err != nil {
		return "", err
	}
	defer client.Disconnect(context.Background())
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = client.Ping(ctx, nil)
		cancel()
		if err == nil {
			return url, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("FerretDB on %s did not answer within 30s: %w", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testURL returns the server URL (without a database), or skips.
func testURL(t testing.TB) string {
	t.Helper()
	serverOnce.Do(func() {
		if u := os.Getenv(envURL); u != "" {
			serverURL = u
			return
		}
		bin := ferretBinary()
		if bin == "" {
			serverSkip = "no MongoDB server: " + howToGetFerretDB
			return
		}
		serverURL, serverErr = startFerretDB(bin)
		if serverErr == nil {
			// Worker processes of the multi-process audit inherit it.
			serverErr = os.Setenv(envURL, serverURL)
		}
	})
	if serverSkip != "" {
		t.Skip(serverSkip)
	}
	if serverErr != nil {
		t.Fatalf("MongoDB test server: %v", serverErr)
	}
	return serverURL
}

// dbURL returns the URL of database db on the test server.
func dbURL(t testing.TB, db string) string {
	u := testURL(t)
	base, query, _ := strings.Cut(u, "?")
	base = strings.TrimRight(base, "/")
	if i := strings.Index(base[len("mongodb://"):], "/"); i >= 0 {
		base = base[:len("mongodb://")+i]
	}
	u = base + "/" + db
	if query != "" {
		u += "?" + query
	}
	return u
}

func uniqueDB() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "pxt_" + hex.EncodeToString(b[:])
}

// openDB opens a store on database db and drops the database when t ends
// (unless keep).
func openDB(t testing.TB, db string, drop bool, opts ...Option) *Store {
	t.Helper()
	s, err := Open(context.Background(), dbURL(t, db), opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if drop {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if err := s.Database().Drop(ctx); err != nil {
				t.Errorf("drop database %s: %v", db, err)
			}
			cancel()
		}
		_ = s.Close()
	})
	return s
}

// newTestStore opens a store on a fresh database, dropped when t ends.
func newTestStore(t testing.TB, opts ...Option) *Store {
	t.Helper()
	return openDB(t, uniqueDB(), true, opts...)
}

// largePool is the LargePool size: FerretDB v1 answers every query but an
// _id lookup by reading the whole collection and filtering and sorting it
// in Go, so each acquisition there costs a pass over the pool and
// filling 20,000 proxies would take the better part of an hour. A real
// MongoDB (PHAROX_TEST_MONGO_URL) runs the full size.
func largePoolOption() []storagetest.Option {
	if os.Getenv(envURL) != "" && ferret == nil {
		return nil
	}
	return []storagetest.Option{storagetest.WithLargePoolSize(1000,
		"FerretDB v1 evaluates every query other than an _id lookup by scanning the collection in Go, "+
			"so one acquisition costs a pass over the pool; a real MongoDB runs the full size")}
}

func TestConformance(t *testing.T) {
	testURL(t)
	storagetest.Run(t, func(t *testing.T) pharox.Storage { return newTestStore(t) }, largePoolOption()...)
}

// TestMultiProcess runs storagetest's multi-process audit: 4 worker
// processes of 8 goroutines each lease from one pool of 10 proxies with
// max_concurrency 2 through one shared database.
func TestMultiProcess(t *testing.T) {
	testURL(t)
	storagetest.RunMultiProcess(t, storagetest.MultiProcessConfig{
		Processes:      4,
		Goroutines:     8,
		Proxies:        10,
		MaxConcurrency: 2,
		Duration:       4 * time.Second,
		Open: func(t testing.TB, namespace string) pharox.Storage {
			return openDB(t, namespace, !storagetest.IsWorkerProcess())
		},
	})
}
