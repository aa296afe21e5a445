package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/testfactory"
)

// randomNumberingFaults returns what is wrong with the dense numbering
// Random draws from: per pool, random_slots must number exactly the
// proxies with a free slot, 0..n-1, with n in random_counts. It reads the
// file with its own connection.
func randomNumberingFaults(t testing.TB, path string) []string {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var faults []string
	rows, err := db.Query(`
		SELECT 'pool ' || c.pool_id || ': count ' || c.n || ', ' || (SELECT count(*) FROM random_slots s WHERE s.pool_id = c.pool_id)
			|| ' numbered, ' || (SELECT count(*) FROM proxies p WHERE p.pool_id = c.pool_id AND p.has_free_slot = 1) || ' free, numbers '
			|| coalesce((SELECT min(pos) || '..' || max(pos) FROM random_slots s WHERE s.pool_id = c.pool_id), 'none')
		FROM random_counts c
		WHERE c.n <> (SELECT count(*) FROM random_slots s WHERE s.pool_id = c.pool_id)
			OR c.n <> (SELECT count(*) FROM proxies p WHERE p.pool_id = c.pool_id AND p.has_free_slot = 1)
			OR c.n <> coalesce((SELECT max(pos) + 1 FROM random_slots s WHERE s.pool_id = c.pool_id), 0)
			OR 0 <> coalesce((SELECT min(pos) FROM random_slots s WHERE s.pool_id = c.pool_id), 0)
		UNION ALL
		SELECT 'proxy ' || p.id || ' free but not numbered' FROM proxies p
		WHERE p.has_free_slot = 1 AND NOT EXISTS (SELECT 1 FROM random_slots s WHERE s.proxy_id = p.id)
		UNION ALL
		SELECT 'proxy ' || s.proxy_id || ' numbered but not free' FROM random_slots s
		WHERE NOT EXISTS (SELECT 1 FROM proxies p WHERE p.id = s.proxy_id AND p.has_free_slot = 1)`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var f string
		if err := rows.Scan(&f); err != nil {
			t.Fatal(err)
		}
		faults = append(faults, f)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return faults
}

// TestRandomNumbering drives a pool through random acquisitions, releases,
// status changes, health results, deletions and additions, and checks after
// each step that the triggers kept the numbering Random draws from dense
// and exact.
func TestRandomNumbering(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "pharox.db")
	s := openPath(t, path)
	pool, ps := testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("p")}, 12, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(2)})
	testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("other")}, 5, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(1)})
	c := testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("c")})
	rng := rand.New(rand.NewPCG(7, 8))
	var held []*pharox.Lease
	statuses := []pharox.ProxyStatus{pharox.StatusActive, pharox.StatusSlow, pharox.StatusInactive, pharox.StatusBanned}
	next := 100
	for step := range 300 {
		var what string
		switch op := rng.IntN(10); {
		case op < 4:
			r := req("p", c)
			r.Strategy = pharox.AllStrategies[rng.IntN(4)]
			l, err := s.AcquireLease(ctx, r)
			if err != nil && !errors.Is(err, pharox.ErrNoProxyAvailable) {
				t.Fatal(err)
			}
			if l != nil {
				held = append(held, l)
			}
			what = "acquire " + string(r.Strategy)
		case op < 7 && len(held) > 0:
			i := rng.IntN(len(held))
			if _, err := s.ReleaseLease(ctx, held[i].ID, nil); err != nil {
				t.Fatal(err)
			}
			held = append(held[:i], held[i+1:]...)
			what = "release"
		case op < 8:
			p := ps[rng.IntN(len(ps))]
			if _, err := s.SetProxyStatus(ctx, p.ID, statuses[rng.IntN(4)]); err != nil && !errors.Is(err, pharox.ErrProxyNotFound) {
				t.Fatal(err)
			}
			what = "set status"
		case op < 9:
			p := ps[rng.IntN(len(ps))]
			if _, err := s.ApplyHealthCheckResult(ctx, pharox.HealthCheckResult{ProxyID: p.ID, Status: statuses[rng.IntN(4)]}); err != nil {
				t.Fatal(err)
			}
			what = "health result"
		default:
			i := rng.IntN(len(ps))
			err := s.DeleteProxy(ctx, ps[i].ID)
			switch {
			case err == nil:
				next++
				added, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: fmt.Sprintf("10.9.0.%d", next%250+1),
					Port: next, Protocol: pharox.ProtocolHTTP, MaxConcurrency: ptrutil.Ptr(1 + rng.IntN(2))}})
				if err != nil {
					t.Fatal(err)
				}
				ps[i] = added[0]
				what = "delete and add"
			case errors.Is(err, pharox.ErrInUse), errors.Is(err, pharox.ErrProxyNotFound):
				what = "delete refused"
			default:
				t.Fatal(err)
			}
		}
		if faults := randomNumberingFaults(t, path); len(faults) > 0 {
			t.Fatalf("step %d (%s): %v", step, what, faults)
		}
	}
	// Deleting the pool leaves nothing behind.
	for _, l := range held {
		if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeletePool(ctx, pool.ID); err != nil {
		t.Fatal(err)
	}
	if faults := randomNumberingFaults(t, path); len(faults) > 0 {
		t.Fatalf("after DeletePool: %v", faults)
	}
}

// TestMigrationNumbersExistingProxies: a file made before the Random
// numbering existed (schema 2, with free, full and inactive proxies in two
// pools) gets every proxy with a free slot numbered when it is opened, and
// Random then draws only among them.
func TestMigrationNumbersExistingProxies(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "pharox.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for v, name := range []string{"0001_init.sql", "0002_caller_lease_ids.sql"} {
		body, err := os.ReadFile(filepath.Join("migrations", name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(string(body)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := db.Exec(`INSERT INTO schema_migrations VALUES (?, ?, 0)`, v+1, name); err != nil {
			t.Fatal(err)
		}
	}
	free := map[string]bool{}
	for p, pool := range []string{"a", "b"} {
		poolID := uuid.NewString()
		if _, err := db.Exec(`INSERT INTO pools (id, name, created_at) VALUES (?, ?, 0)`, poolID, pool); err != nil {
			t.Fatal(err)
		}
		for i := range 30 {
			id := uuid.NewString()
			status, leases := "active", 0
			switch i % 3 {
			case 1:
				leases = 1 // full
			case 2:
				status = "inactive"
			}
			if _, err := db.Exec(`INSERT INTO proxies (id, pool_id, host, port, protocol, status, max_concurrency, current_leases, created_at)
				VALUES (?, ?, ?, ?, 'http', ?, 1, ?, 0)`, id, poolID, fmt.Sprintf("10.3.%d.%d", p, i+1), 8000+i, status, leases); err != nil {
				t.Fatal(err)
			}
			if pool == "a" && i%3 == 0 {
				free[id] = true
			}
		}
	}
	db.Close()

	s := openPath(t, path)
	if faults := randomNumberingFaults(t, path); len(faults) > 0 {
		t.Fatalf("after migrating: %v", faults)
	}
	seen := map[string]bool{}
	for range 200 {
		p, err := s.FindAvailableProxy(ctx, "a", nil, pharox.Random)
		if err != nil {
			t.Fatal(err)
		}
		if !free[p.ID.String()] {
			t.Fatalf("Random chose %s, not a free proxy of pool a", p.ID)
		}
		seen[p.ID.String()] = true
	}
	// 200 draws over 10: missing one has probability 10 * 0.9^200, ~7e-9.
	if len(seen) != len(free) {
		t.Fatalf("Random reached %d of the %d free proxies in 200 draws", len(seen), len(free))
	}
}
