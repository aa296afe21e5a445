package storagetest

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// usageTests cover usage metering ([pharox.UsageStore]): what a release
// with a usage report stores on the lease and in the hourly buckets, and
// how QueryUsage and PurgeUsage read and drop those buckets.
var usageTests = []subtest{
	{name: "ReleaseStoresUsageAndTarget", fn: testUsageOnLease},
	{name: "ReleaseTwiceCountsOnce", fn: testUsageReleaseTwice},
	{name: "NilUsageCountsNothing", fn: testUsageNil},
	{name: "ExpiryCountsNothing", fn: testUsageExpiry},
	{name: "QueryEveryGrouping", fn: testUsageQueryGroups},
	{name: "QueryBounds", fn: testUsageQueryBounds},
	{name: "Purge", fn: testUsagePurge},
	{name: "BadQuery", fn: testUsageBadQuery},
}

// releaseUsage releases a lease reporting u and fails the test on error.
func (f *fixture) releaseUsage(id uuid.UUID, u pharox.Usage) *pharox.Lease {
	f.t.Helper()
	l, err := f.s.ReleaseLease(f.ctx, id, &u)
	if err != nil {
		f.t.Fatalf("ReleaseLease(%s, usage %+v): %v", id, u, err)
	}
	return l
}

// queryUsage runs QueryUsage and fails the test on error.
func (f *fixture) queryUsage(q pharox.UsageQuery) []pharox.UsageRow {
	f.t.Helper()
	rows, err := f.s.QueryUsage(f.ctx, q)
	if err != nil {
		f.t.Fatalf("QueryUsage(%s): %v", describeQuery(q), err)
	}
	return rows
}

func describeQuery(q pharox.UsageQuery) string {
	s := "group_by=" + string(q.GroupBy)
	if !q.Since.IsZero() {
		s += " since=" + q.Since.Format(time.RFC3339Nano)
	}
	if !q.Until.IsZero() {
		s += " until=" + q.Until.Format(time.RFC3339Nano)
	}
	if q.PoolID != uuid.Nil {
		s += " pool=" + q.PoolID.String()
	}
	if q.ConsumerID != uuid.Nil {
		s += " consumer=" + q.ConsumerID.String()
	}
	return s
}

// consumerNamed ensures a consumer.
func (f *fixture) consumerNamed(name string) *pharox.Consumer {
	f.t.Helper()
	c, err := f.s.EnsureConsumer(f.ctx, name)
	if err != nil {
		f.t.Fatalf("EnsureConsumer(%q): %v", name, err)
	}
	return c
}

// as returns req acquiring as consumer c.
func as(req pharox.AcquireRequest, c *pharox.Consumer) pharox.AcquireRequest {
	req.ConsumerID, req.ConsumerName = c.ID, c.Name
	return req
}

func wantUsage(t *testing.T, what string, got *pharox.Usage, want pharox.Usage) {
	t.Helper()
	if got == nil {
		t.Fatalf("%s: Usage is nil, want %+v", what, want)
	}
	if *got != want {
		t.Fatalf("%s: Usage = %+v, want %+v", what, *got, want)
	}
}

func testUsageOnLease(t *testing.T, f *fixture) {
	pool := f.pool("usage")
	f.addN(pool, 2, 0)
	req := f.req(pool.Name)
	req.Target = "shop.example"
	l := f.acquire(req)
	if l.Target != "shop.example" {
		t.Fatalf("AcquireLease(target shop.example) returned Target %q", l.Target)
	}
	if l.Usage != nil {
		t.Fatalf("an active lease has Usage %+v, want nil", *l.Usage)
	}
	if got := f.getLease(l.ID); got.Target != "shop.example" || got.Usage != nil {
		t.Fatalf("GetLease of an active lease: Target %q, Usage %v; want shop.example, nil", got.Target, got.Usage)
	}
	u := pharox.Usage{Requests: 3, BytesSent: 1200, BytesReceived: 45000}
	rel := f.releaseUsage(l.ID, u)
	wantUsage(t, "ReleaseLease's lease", rel.Usage, u)
	if rel.Target != "shop.example" {
		t.Fatalf("ReleaseLease's lease Target = %q, want shop.example", rel.Target)
	}
	rel.Usage.Requests = 999 // the caller's copy
	got := f.getLease(l.ID)
	wantUsage(t, "GetLease after release", got.Usage, u)
	if got.Target != "shop.example" {
		t.Fatalf("GetLease after release: Target %q, want shop.example", got.Target)
	}
	got.Usage.BytesSent = 1
	ls := f.leases(pharox.LeaseQuery{PoolID: pool.ID})
	if len(ls) != 1 {
		t.Fatalf("ListLeases: %d leases, want 1", len(ls))
	}
	wantUsage(t, "ListLeases after release", ls[0].Usage, u)
	if ls[0].Target != "shop.example" {
		t.Fatalf("ListLeases: Target %q, want shop.example", ls[0].Target)
	}

	// Without a target the lease has none; a zero report is a report.
	plain := f.acquire(f.req(pool.Name))
	if plain.Target != "" {
		t.Fatalf("a lease taken without a target has Target %q", plain.Target)
	}
	rel = f.releaseUsage(plain.ID, pharox.Usage{})
	wantUsage(t, "ReleaseLease with a zero report", rel.Usage, pharox.Usage{})
	wantUsage(t, "GetLease after a zero report", f.getLease(plain.ID).Usage, pharox.Usage{})
	rows := f.queryUsage(pharox.UsageQuery{GroupBy: pharox.UsageByTarget})
	want := []pharox.UsageRow{{Key: "", Leases: 1}, {Key: "shop.example", Leases: 1, Usage: u}}
	if !slices.Equal(rows, want) {
		t.Fatalf("QueryUsage by target = %+v, want %+v (a zero report counts a lease)", rows, want)
	}
}

func testUsageReleaseTwice(t *testing.T, f *fixture) {
	pool := f.pool("usage")
	f.addN(pool, 1, 0)
	l := f.acquire(f.req(pool.Name))
	u := pharox.Usage{Requests: 1, BytesSent: 10, BytesReceived: 20}
	f.releaseUsage(l.ID, u)
	_, err := f.s.ReleaseLease(f.ctx, l.ID, &pharox.Usage{Requests: 5, BytesSent: 500, BytesReceived: 500})
	wantErr(t, "second ReleaseLease with usage", err, pharox.ErrLeaseNotActive)
	wantUsage(t, "GetLease after a second release", f.getLease(l.ID).Usage, u)
	rows := f.queryUsage(pharox.UsageQuery{GroupBy: pharox.UsageByConsumer})
	want := []pharox.UsageRow{{Key: f.consumer.ID.String(), Leases: 1, Usage: u}}
	if !slices.Equal(rows, want) {
		t.Fatalf("QueryUsage after releasing twice = %+v, want %+v", rows, want)
	}
}

func testUsageNil(t *testing.T, f *fixture) {
	pool := f.pool("usage")
	f.addN(pool, 1, 0)
	l := f.acquire(f.req(pool.Name))
	if rel := f.release(l.ID); rel.Usage != nil {
		t.Fatalf("ReleaseLease(nil usage) returned Usage %+v, want nil", *rel.Usage)
	}
	if got := f.getLease(l.ID); got.Usage != nil {
		t.Fatalf("GetLease after ReleaseLease(nil usage): Usage %+v, want nil", *got.Usage)
	}
	for _, g := range []pharox.UsageGroup{pharox.UsageByConsumer, pharox.UsageByProxy, pharox.UsageByPool, pharox.UsageByTarget} {
		if rows := f.queryUsage(pharox.UsageQuery{GroupBy: g}); len(rows) != 0 {
			t.Fatalf("QueryUsage by %s after a release without usage = %+v, want no rows", g, rows)
		}
	}
	if n, err := f.s.PurgeUsage(f.ctx, time.Now().Add(time.Hour)); err != nil || n != 0 {
		t.Fatalf("PurgeUsage with no buckets = %d, %v; want 0, nil", n, err)
	}
}

// testUsageExpiry: an expired lease reports nothing; a late release counts
// only where the store releases late leases.
func testUsageExpiry(t *testing.T, f *fixture) {
	late := f.cfg.needLateRelease(t)
	pool := f.pool("usage")
	f.addN(pool, 2, 0)
	req := f.req(pool.Name)
	req.Duration = shortTTL
	abandoned := f.acquire(req)
	released := f.acquire(req)
	time.Sleep(shortWait)
	u := pharox.Usage{Requests: 1, BytesSent: 7, BytesReceived: 8}
	_, err := f.s.ReleaseLease(f.ctx, released.ID, &u)
	if _, cerr := f.s.CleanupExpiredLeases(f.ctx); cerr != nil {
		t.Fatalf("CleanupExpiredLeases: %v", cerr)
	}
	if got := f.getLease(abandoned.ID); got.Usage != nil {
		t.Fatalf("an expired lease has Usage %+v, want nil", *got.Usage)
	}
	rows := f.queryUsage(pharox.UsageQuery{GroupBy: pharox.UsageByConsumer})
	switch late {
	case LateReleaseReleases:
		if err != nil {
			t.Fatalf("ReleaseLease past ExpiresAt (store releases late leases): %v", err)
		}
		want := []pharox.UsageRow{{Key: f.consumer.ID.String(), Leases: 1, Usage: u}}
		if !slices.Equal(rows, want) {
			t.Fatalf("QueryUsage after one late release and one expiry = %+v, want %+v", rows, want)
		}
	case LateReleaseExpires:
		wantErr(t, "ReleaseLease past ExpiresAt", err, pharox.ErrLeaseNotActive)
		if len(rows) != 0 {
			t.Fatalf("QueryUsage after leases expired (the late release refused) = %+v, want no rows", rows)
		}
	}
}

// usageRecord is one release with usage as the suite saw it, the oracle
// for QueryUsage.
type usageRecord struct {
	consumer, proxy, pool uuid.UUID
	target                string
	hour                  time.Time
	u                     pharox.Usage
}

// expectUsage totals records as QueryUsage must for q.
func expectUsage(records []usageRecord, q pharox.UsageQuery) []pharox.UsageRow {
	sums := map[string]*pharox.UsageRow{}
	for _, r := range records {
		if !q.Since.IsZero() && r.hour.Before(q.Since.Truncate(pharox.UsageBucket)) ||
			!q.Until.IsZero() && !r.hour.Before(q.Until) ||
			q.PoolID != uuid.Nil && r.pool != q.PoolID ||
			q.ConsumerID != uuid.Nil && r.consumer != q.ConsumerID {
			continue
		}
		var key string
		switch q.GroupBy {
		case pharox.UsageByConsumer:
			key = r.consumer.String()
		case pharox.UsageByProxy:
			key = r.proxy.String()
		case pharox.UsageByPool:
			key = r.pool.String()
		case pharox.UsageByTarget:
			key = r.target
		}
		row := sums[key]
		if row == nil {
			row = &pharox.UsageRow{Key: key}
			sums[key] = row
		}
		row.Leases++
		row.Usage = row.Usage.Add(r.u)
	}
	out := []pharox.UsageRow{}
	for _, k := range slices.Sorted(maps.Keys(sums)) {
		out = append(out, *sums[k])
	}
	return out
}

// usageScene releases leases of two consumers in two pools, with and
// without targets, reporting distinct usage, and returns the records.
func usageScene(f *fixture) ([]usageRecord, []*pharox.Pool, []*pharox.Consumer) {
	f.t.Helper()
	pools := []*pharox.Pool{f.pool("usage-a"), f.pool("usage-b")}
	f.addN(pools[0], 2, 0)
	f.addN(pools[1], 1, 0)
	consumers := []*pharox.Consumer{f.consumer, f.consumerNamed("usage-other")}
	targets := []string{"", "shop.example", "news.example"}
	var records []usageRecord
	for i := range 9 {
		pool, c, target := pools[i%2], consumers[i/2%2], targets[i%3]
		req := as(f.req(pool.Name), c)
		req.Strategy = pharox.RoundRobin
		req.Target = target
		l := f.acquire(req)
		u := pharox.Usage{Requests: int64(i + 1), BytesSent: int64(100 * (i + 1)), BytesReceived: int64(1000*(i+1) + 7)}
		rel := f.releaseUsage(l.ID, u)
		if rel.ReleasedAt == nil {
			f.t.Fatalf("released lease %s has no ReleasedAt", l.ID)
		}
		records = append(records, usageRecord{consumer: c.ID, proxy: l.ProxyID, pool: pool.ID, target: target,
			hour: rel.ReleasedAt.UTC().Truncate(pharox.UsageBucket), u: u})
	}
	// One lease released without usage counts nothing.
	f.release(f.acquire(f.req(pools[0].Name)).ID)
	return records, pools, consumers
}

func testUsageQueryGroups(t *testing.T, f *fixture) {
	records, pools, consumers := usageScene(f)
	for _, g := range []pharox.UsageGroup{pharox.UsageByConsumer, pharox.UsageByProxy, pharox.UsageByPool, pharox.UsageByTarget} {
		for _, pool := range []uuid.UUID{uuid.Nil, pools[0].ID, pools[1].ID} {
			for _, c := range []uuid.UUID{uuid.Nil, consumers[0].ID, consumers[1].ID} {
				q := pharox.UsageQuery{GroupBy: g, PoolID: pool, ConsumerID: c}
				got := f.queryUsage(q)
				if want := expectUsage(records, q); !slices.Equal(got, want) {
					t.Errorf("QueryUsage(%s) =\n  %+v\nwant\n  %+v", describeQuery(q), got, want)
				}
			}
		}
	}
	// Rows carry no names: the Manager fills them in.
	for _, r := range f.queryUsage(pharox.UsageQuery{GroupBy: pharox.UsageByPool}) {
		if r.Name != "" {
			t.Errorf("QueryUsage row %s has Name %q; stores leave names to the Manager", r.Key, r.Name)
		}
	}
	// Unknown ids select nothing.
	if rows := f.queryUsage(pharox.UsageQuery{GroupBy: pharox.UsageByConsumer, PoolID: uuid.New()}); len(rows) != 0 {
		t.Errorf("QueryUsage for an unknown pool = %+v, want no rows", rows)
	}
}

func testUsageQueryBounds(t *testing.T, f *fixture) {
	records, _, _ := usageScene(f)
	first, last := records[0].hour, records[0].hour
	for _, r := range records {
		if r.hour.Before(first) {
			first = r.hour
		}
		if r.hour.After(last) {
			last = r.hour
		}
	}
	mid := first.Add(17*time.Minute + 3*time.Second) // inside the first hour
	queries := []pharox.UsageQuery{
		{Since: first.Add(-2 * time.Hour)},
		{Since: mid}, // truncated to the hour: the first hour counts
		{Since: last.Add(pharox.UsageBucket)},
		{Until: first}, // a bucket starting at Until is excluded
		{Until: first.Add(time.Nanosecond)},
		{Until: last.Add(pharox.UsageBucket)},
		{Since: mid, Until: mid.Add(time.Minute)}, // the hour started before Until
		{Since: last.Add(-time.Nanosecond), Until: last.Add(2 * time.Hour)},
		{Since: first.Add(-48 * time.Hour), Until: first.Add(-24 * time.Hour)},
	}
	for _, q := range queries {
		for _, g := range []pharox.UsageGroup{pharox.UsageByConsumer, pharox.UsageByTarget} {
			q.GroupBy = g
			got := f.queryUsage(q)
			if want := expectUsage(records, q); !slices.Equal(got, want) {
				t.Errorf("QueryUsage(%s) =\n  %+v\nwant\n  %+v", describeQuery(q), got, want)
			}
		}
	}
	if got := f.queryUsage(pharox.UsageQuery{GroupBy: pharox.UsageByConsumer, Since: mid}); len(got) == 0 {
		t.Fatalf("QueryUsage since %v (inside the hour of the first release) found nothing: Since must be truncated to the hour", mid)
	}
}

func testUsagePurge(t *testing.T, f *fixture) {
	records, _, _ := usageScene(f)
	buckets := map[string]time.Time{}
	first := records[0].hour
	for _, r := range records {
		buckets[fmt.Sprint(r.hour.Unix(), r.consumer, r.proxy, r.pool, r.target)] = r.hour
		if r.hour.Before(first) {
			first = r.hour
		}
	}
	n, err := f.s.PurgeUsage(f.ctx, first)
	if err != nil || n != 0 {
		t.Fatalf("PurgeUsage(before the first bucket's start %v) = %d, %v; want 0, nil", first, n, err)
	}
	q := pharox.UsageQuery{GroupBy: pharox.UsageByProxy}
	if got, want := f.queryUsage(q), expectUsage(records, q); !slices.Equal(got, want) {
		t.Fatalf("after purging nothing, QueryUsage = %+v, want %+v", got, want)
	}
	n, err = f.s.PurgeUsage(f.ctx, time.Now().Add(2*time.Hour))
	if err != nil || n != len(buckets) {
		t.Fatalf("PurgeUsage(every bucket) = %d, %v; want %d (the distinct hour, consumer, proxy, pool, target buckets), nil", n, err, len(buckets))
	}
	for _, g := range []pharox.UsageGroup{pharox.UsageByConsumer, pharox.UsageByProxy, pharox.UsageByPool, pharox.UsageByTarget} {
		if rows := f.queryUsage(pharox.UsageQuery{GroupBy: g}); len(rows) != 0 {
			t.Fatalf("QueryUsage by %s after purging every bucket = %+v, want no rows", g, rows)
		}
	}
	// The leases keep their usage: buckets are aggregates.
	ls := f.leases(pharox.LeaseQuery{ConsumerID: f.consumer.ID, Status: pharox.LeaseReleased})
	withUsage := 0
	for _, l := range ls {
		if l.Usage != nil {
			withUsage++
		}
	}
	if withUsage == 0 {
		t.Fatal("after PurgeUsage no released lease has its Usage: purging buckets must leave lease records alone")
	}
}

func testUsageBadQuery(t *testing.T, f *fixture) {
	now := time.Now()
	for _, q := range []pharox.UsageQuery{
		{},
		{GroupBy: "country"},
		{GroupBy: pharox.UsageByConsumer, Since: now, Until: now},
		{GroupBy: pharox.UsageByConsumer, Since: now, Until: now.Add(-time.Hour)},
	} {
		rows, err := f.s.QueryUsage(f.ctx, q)
		if err == nil {
			t.Errorf("QueryUsage(%s) = %+v, nil; want ErrInvalidArgument", describeQuery(q), rows)
			continue
		}
		wantErr(t, "QueryUsage("+describeQuery(q)+")", err, pharox.ErrInvalidArgument)
	}
}
