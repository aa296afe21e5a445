package outage_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	goredis "github.com/redis/go-redis/v9"
	_ "modernc.org/sqlite"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/outage"
	"github.com/pharox/pharox/internal/redistest"
)

// TestReasonOfDriverErrors classifies errors as the drivers make them.
func TestReasonOfDriverErrors(t *testing.T) {
	refused := dialClosedPort(t)
	_, missingDir := os.OpenFile(filepath.Join(t.TempDir(), "no-such-dir", "pharox.db"), os.O_RDWR|os.O_CREATE, 0o600)
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain error", errors.New("syntax error at or near SELEC"), false},
		{"not found", fmt.Errorf("postgres: get pool: %w", pharox.ErrPoolNotFound), false},
		{"invalid argument", pharox.ErrInvalidArgument, false},
		{"pharox.ErrUnavailable", fmt.Errorf("store: %w", pharox.ErrUnavailable), true},
		{"connection refused", fmt.Errorf("postgres: acquire: %w", refused), true},
		{"connection lost", fmt.Errorf("redis: %w", io.EOF), true},
		{"unexpected EOF", io.ErrUnexpectedEOF, true},
		{"pg admin shutdown", &pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}, true},
		{"pg starting up", &pgconn.PgError{Code: "57P03", Message: "the database system is starting up"}, true},
		{"pg connection failure", &pgconn.PgError{Code: "08006"}, true},
		{"pg too many connections", &pgconn.PgError{Code: "53300"}, true},
		{"pg read-only", fmt.Errorf("postgres: acquire: %w", &pgconn.PgError{Code: "25006"}), true},
		{"pg lock timeout", &pgconn.PgError{Code: "55P03"}, true},
		{"pg statement timeout", &pgconn.PgError{Code: "57014"}, true},
		{"pg serialization failure", &pgconn.PgError{Code: "40001"}, true},
		{"pg unique violation", &pgconn.PgError{Code: "23505"}, false},
		{"pg undefined table", &pgconn.PgError{Code: "42P01"}, false},
		{"redis pool timeout", errors.New("redis: connection pool timeout"), true},
		{"pgxpool closed", errors.New("closed pool"), true},
		// *fs.PathError has Timeout(), so it is a net.Error too; a missing
		// directory is a configuration error, not a store that is down.
		// Manager.AcquireWait's miss at its deadline: exit 75 before.
		{"wait ended without a proxy", fmt.Errorf("acquire from pool %q: waited 1s: %w: %w", "main", pharox.ErrNoProxyAvailable, context.DeadlineExceeded), false},
		{"missing directory", fmt.Errorf("create SQLite database: %w", missingDir), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := outage.Is(tc.err); got != tc.want {
				t.Errorf("Is(%v) = %v, want %v (reason %q)", tc.err, got, tc.want, outage.Reason(tc.err))
			}
		})
	}
}

// dialClosedPort returns the error of dialing a loopback port nothing
// listens on.
func dialClosedPort(t *testing.T) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
		t.Skip("something listens on the freed port")
	}
	return err
}

// TestReasonOfSQLiteBusy classifies SQLITE_BUSY after the busy timeout,
// made by a real second writer.
func TestReasonOfSQLiteBusy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "busy.db")
	dsn := "file:" + path + "?_pragma=busy_timeout(50)"
	a, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if _, err := a.ExecContext(ctx, "CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	tx, err := a.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	_, err = b.ExecContext(ctx, "INSERT INTO t VALUES (2)")
	if err == nil {
		t.Fatal("a second writer wrote while the first held the write lock")
	}
	if !outage.Is(err) {
		t.Errorf("Is(%v) = false, want true", err)
	}
}

// TestReasonOfRedisReplies classifies error replies a real Redis sends.
func TestReasonOfRedisReplies(t *testing.T) {
	c := redistest.Client(t, func(o *goredis.Options) { o.MaxRetries = -1 })
	ctx := context.Background()
	for _, tc := range []struct {
		reply string
		want  bool
	}{
		{"LOADING Redis is loading the dataset in memory", true},
		{"READONLY You can't write against a read only replica.", true},
		{"MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", true},
		{"CLUSTERDOWN The cluster is down", true},
		{"WRONGTYPE Operation against a key holding the wrong kind of value", false},
		{"ERR unknown command", false},
	} {
		err := c.Eval(ctx, "return redis.error_reply(ARGV[1])", nil, tc.reply).Err()
		if err == nil {
			t.Fatalf("script returned no error for %q", tc.reply)
		}
		if got := outage.Is(fmt.Errorf("redis: acquire: %w", err)); got != tc.want {
			t.Errorf("Is(%v) = %v, want %v", err, got, tc.want)
		}
	}
}
