package mysql

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
)

// execer is a transaction as the store's operations use it: a plain
// database/sql transaction (stdTx), or, on a pool Open configured, one
// that saves round trips (connTx).
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) scanner
	// later runs a write whose result nothing reads: at once in a stdTx,
	// with the COMMIT in the same round trip in a connTx. An error it
	// causes (a constraint, a deadlock) surfaces from the commit and
	// rolls the whole transaction back.
	later(ctx context.Context, query string, args ...any) error
}

// stdTx is a database/sql transaction.
type stdTx struct{ *sql.Tx }

func (t stdTx) QueryRowContext(ctx context.Context, query string, args ...any) scanner {
	return t.Tx.QueryRowContext(ctx, query, args...)
}

func (t stdTx) later(ctx context.Context, query string, args ...any) error {
	_, err := t.Tx.ExecContext(ctx, query, args...)
	return err
}

// connTx runs a transaction by hand on one connection of a pool Open made
// with multiStatements: START TRANSACTION travels with the first
// statement, and the writes queued with later travel with the COMMIT. A
// lease acquisition or release is then two round trips instead of five.
// Parameters are interpolated by the driver (Open sets
// interpolateParams), which multi-statement queries need.
type connTx struct {
	conn  *sql.Conn
	begun bool
	tail  []string
	args  []any
}

// begin returns query with START TRANSACTION in front of it the first
// time, and whether it did.
func (t *connTx) begin(query string) (string, bool) {
	if t.begun {
		return query, false
	}
	t.begun = true
	return "START TRANSACTION; " + query, true
}

func (t *connTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	query, _ = t.begin(query)
	// The driver reports the last statement's affected rows.
	return t.conn.ExecContext(ctx, query, args...)
}

func (t *connTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	query, begun := t.begin(query)
	rows, err := t.conn.QueryContext(ctx, query, args...)
	if err != nil || !begun {
		return rows, err
	}
	// The driver may already have skipped START TRANSACTION's empty
	// result (go-sql-driver does); otherwise skip it here.
	if cols, err := rows.Columns(); err == nil && len(cols) > 0 {
		return rows, nil
	}
	for rows.Next() {
	}
	if !rows.NextResultSet() {
		err := rows.Err()
		rows.Close()
		if err == nil {
			err = errors.New("mysql: multi-statement query returned no result for its query")
		}
		return nil, err
	}
	return rows, nil
}

func (t *connTx) QueryRowContext(ctx context.Context, query string, args ...any) scanner {
	rows, err := t.QueryContext(ctx, query, args...)
	return &rowScanner{rows: rows, err: err}
}

func (t *connTx) later(ctx context.Context, query string, args ...any) error {
	t.tail = append(t.tail, query)
	t.args = append(t.args, args...)
	return nil
}

// commit sends the queued writes and COMMIT in one round trip.
func (t *connTx) commit(ctx context.Context) error {
	if !t.begun && len(t.tail) == 0 {
		return nil
	}
	query, _ := t.begin(strings.Join(append(t.tail, "COMMIT"), "; "))
	_, err := t.conn.ExecContext(ctx, query, t.args...)
	return err
}

// rollback ends the transaction after a failure. When that fails too the
// connection's state is unknown, so it is discarded rather than returned
// to the pool.
func (t *connTx) rollback(ctx context.Context) {
	if !t.begun {
		return
	}
	if _, err := t.conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK"); err != nil {
		t.conn.Raw(func(any) error { return driver.ErrBadConn })
	}
}

// rowScanner is a *sql.Row over *sql.Rows.
type rowScanner struct {
	rows *sql.Rows
	err  error
}

func (r *rowScanner) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	defer r.rows.Close()
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return sql.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	return r.rows.Close()
}

// run runs fn in a READ COMMITTED transaction, a connTx on a pool Open
// made and a stdTx otherwise, and commits when fn returns nil (or an
// errAfterCommit), with the deadlock retries of retry.
func (s *Store) run(ctx context.Context, fn func(tx execer) error) error {
	return s.retry(ctx, func() error {
		if s.multi {
			return s.runConn(ctx, fn)
		}
		return s.txOnce(ctx, func(tx *sql.Tx) error { return fn(stdTx{tx}) })
	})
}

func (s *Store) runConn(ctx context.Context, fn func(tx execer) error) (err error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	t := &connTx{conn: conn}
	defer func() {
		if p := recover(); p != nil {
			t.rollback(ctx)
			panic(p)
		}
	}()
	err = fn(t)
	var keep errAfterCommit
	if err != nil && !errors.As(err, &keep) {
		t.rollback(ctx)
		return err
	}
	if cerr := t.commit(ctx); cerr != nil {
		t.rollback(ctx)
		return cerr
	}
	if err != nil {
		return keep.err
	}
	return nil
}

// queryEach runs queries in order and calls read with each one's rows
// (read consumes them with Next). On a connTx they travel as one
// multi-statement query, one round trip; otherwise one query each. Either
// way each statement starts after the one before it ended, so in READ
// COMMITTED a statement sees what was committed while an earlier one
// waited for a lock.
func queryEach(ctx context.Context, tx execer, queries []string, args [][]any, read func(i int, rows *sql.Rows) error) error {
	if t, ok := tx.(*connTx); ok {
		var flat []any
		for _, a := range args {
			flat = append(flat, a...)
		}
		rows, err := t.QueryContext(ctx, strings.Join(queries, "; "), flat...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for i := range queries {
			if i > 0 && !rows.NextResultSet() {
				if err := rows.Err(); err != nil {
					return err
				}
				return fmt.Errorf("mysql: multi-statement query returned %d results for %d statements", i, len(queries))
			}
			if err := read(i, rows); err != nil {
				return err
			}
			if err := rows.Err(); err != nil {
				return err
			}
		}
		return rows.Close()
	}
	for i, q := range queries {
		rows, err := tx.QueryContext(ctx, q, args[i]...)
		if err != nil {
			return err
		}
		err = read(i, rows)
		if err == nil {
			err = rows.Err()
		}
		rows.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
