package servertest

import (
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/internal/ptrutil"
)

// Outcome reports change proxies' health, so a holder must not be able to
// replay them: only active leases report, each lease gives one failure or
// ban verdict, and the guard on the share of a pool taken out of service
// covers failures as it covers bans.

// outcome posts an outcome on the lease with the consumer key.
func (e *Env) outcome(leaseID string, o api.OutcomeRequest) *Response {
	e.T.Helper()
	return e.Consumer("POST", "/v1/leases/"+leaseID+"/outcome", o)
}

// proxy reads a proxy with the admin key.
func (e *Env) proxy(pool api.Pool, id string) api.Proxy {
	e.T.Helper()
	var p api.Proxy
	e.Admin("GET", "/v1/pools/"+pool.ID.String()+"/proxies/"+id, nil).Expect(e.T, 200).Decode(e.T, &p)
	return p
}

// testOutcomeOnEndedLease: after a release, four replayed banned reports on
// the ended lease used to drive the proxy to banned. An ended lease (released
// or expired) now answers 409 and changes nothing.
func testOutcomeOnEndedLease(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	proxy := e.AddProxy(pool, api.CreateProxyRequest{Host: "10.20.0.1", Port: 80})
	l := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String()})
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/release", nil).Expect(t, 200)
	for range 4 {
		r := e.outcome(l.ID.String(), api.OutcomeRequest{Kind: "banned"}).Expect(t, 409)
		if d := r.Detail(); !strings.Contains(d, l.ID.String()) || !strings.Contains(d, "not active") {
			t.Fatalf("outcome on a released lease: detail %q does not say the lease is not active", d)
		}
	}
	if p := e.proxy(pool, proxy.ID.String()); p.Status != "active" || p.FailureStreak != 0 {
		t.Fatalf("after banned reports on a released lease the proxy is %s with streak %d, want active with 0", p.Status, p.FailureStreak)
	}

	// An expired lease, reclaimed or not, is as ended.
	short := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), TTLSeconds: ptrutil.Ptr(0.001)})
	time.Sleep(20 * time.Millisecond)
	e.outcome(short.ID.String(), api.OutcomeRequest{Kind: "failure"}).Expect(t, 409)
	if p := e.proxy(pool, proxy.ID.String()); p.Status != "active" || p.FailureStreak != 0 {
		t.Fatalf("after a failure on an expired lease the proxy is %s with streak %d", p.Status, p.FailureStreak)
	}
}

// testOneVerdictPerLease: one active lease replaying banned or failure
// reports counts once; the replays are answered 200 and change nothing.
func testOneVerdictPerLease(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	proxy := e.AddProxy(pool, api.CreateProxyRequest{Host: "10.21.0.1", Port: 80})
	l := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String()})
	var p api.Proxy
	for range 4 {
		e.outcome(l.ID.String(), api.OutcomeRequest{Kind: "banned", StatusCode: 429}).Expect(t, 200).Decode(t, &p)
	}
	// The default ban threshold is two in a row.
	if p.Status != "active" || p.FailureStreak != 1 {
		t.Fatalf("after four banned reports on one lease: %s with streak %d, want active with 1", p.Status, p.FailureStreak)
	}
	// A failure on the same lease is a second verdict: not counted.
	e.outcome(l.ID.String(), api.OutcomeRequest{Kind: "failure"}).Expect(t, 200).Decode(t, &p)
	if p.FailureStreak != 1 {
		t.Fatalf("a failure after the lease's ban counted: streak %d", p.FailureStreak)
	}
	// Another lease has its own verdict; its replays do not count either.
	other := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String()})
	for range 4 {
		e.outcome(other.ID.String(), api.OutcomeRequest{Kind: "failure", Reason: "reset"}).Expect(t, 200).Decode(t, &p)
	}
	if p.Status != "active" || p.FailureStreak != 2 {
		t.Fatalf("after a second lease's four failures: %s with streak %d, want active with 2", p.Status, p.FailureStreak)
	}
	// Successes are not verdicts: they always count.
	e.outcome(l.ID.String(), api.OutcomeRequest{Kind: "success"}).Expect(t, 200).Decode(t, &p)
	if p.FailureStreak != 0 || p.ID != proxy.ID {
		t.Fatalf("a success did not end the streak: %+v", p)
	}
}

// testFailureGuard: failure reports used to make any number of a pool's
// proxies inactive. Now, as for bans, once banned and inactive proxies make
// up MaxBannedShare of the pool (default half), failures and bans only count
// in the streak and leave the status to a health probe.
func testFailureGuard(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	a := e.AddProxy(pool, api.CreateProxyRequest{Host: "10.22.0.1", Port: 80, Country: "AR"})
	b := e.AddProxy(pool, api.CreateProxyRequest{Host: "10.22.0.2", Port: 80, Country: "UY"})
	failThrice := func(country string) api.Proxy {
		t.Helper()
		var p api.Proxy
		for range pharox.DefaultOutcomePolicy().FailureThreshold {
			l := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), Filters: &pharox.Filters{Country: country}})
			e.outcome(l.ID.String(), api.OutcomeRequest{Kind: "failure", Reason: "reset"}).Expect(t, 200).Decode(t, &p)
		}
		return p
	}
	if p := failThrice("AR"); p.ID != a.ID || p.Status != "inactive" {
		t.Fatalf("first proxy after three failures: %+v", p)
	}
	p := failThrice("UY")
	if p.ID != b.ID || p.Status != "active" || p.FailureStreak != 3 || !strings.Contains(p.LastError, "not marked inactive") {
		t.Fatalf("second proxy of two after three failures: status %s streak %d error %q; want it kept active by the guard",
			p.Status, p.FailureStreak, p.LastError)
	}
	// Bans share the budget.
	l := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), Filters: &pharox.Filters{Country: "UY"}})
	e.outcome(l.ID.String(), api.OutcomeRequest{Kind: "banned"}).Expect(t, 200).Decode(t, &p)
	if p.Status != "active" || !strings.Contains(p.LastError, "ban not applied") {
		t.Fatalf("ban of the last leasable proxy: status %s error %q", p.Status, p.LastError)
	}
}
