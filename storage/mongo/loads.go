package mongo

import (
	"context"
	"math/rand/v2"

	"github.com/google/uuid"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/pharox/pharox"
)

// unlimitedRoom is the free slots a proxy without max_concurrency counts.
const unlimitedRoom = int64(1) << 40

// loadDoc is a document of the proxy_loads collection: a proxy's lease
// count as acquisitions and releases keep it (N: $inc at each lease taken
// and ended; Room: its free slots, max_concurrency - N), its status rank,
// and copies of the fields filters read, so that LeastUsed and Random
// find candidates with free slots through an index, in their order,
// without reading the pool. Candidates are always checked against their
// proxy and their slots before they are leased: a count that is off (a
// process that died between a slot's insert and the count's update, or
// on FerretDB v1, whose $inc is not atomic, two updates of one proxy's
// count at once) changes the order, never what is leased; a walk that
// finds no candidate through the loads reads the pool and repairs them
// (repairLoads).
type loadDoc struct {
	ID   string `bson:"_id"` // the proxy id
	Pool string `bson:"pool"`
	Rank int    `bson:"rank"`
	N    int64  `bson:"n"`
	Room int64  `bson:"room"`

	Protocol string   `bson:"protocol"`
	Source   string   `bson:"source"`
	Country  string   `bson:"country"`
	City     string   `bson:"city"`
	ISP      string   `bson:"isp"`
	ASN      *int64   `bson:"asn,omitempty"`
	Lat      *float64 `bson:"lat,omitempty"`
	Lon      *float64 `bson:"lon,omitempty"`
	Tags     []string `bson:"tags"`
}

// newLoadDoc returns the load document of proxy d with n leases.
func newLoadDoc(d *proxyDoc, n int64) loadDoc {
	return loadDoc{
		ID: d.ID, Pool: d.Pool, Rank: d.Rank, N: n, Room: room(d.MaxC, n),
		Protocol: d.Protocol, Source: d.Source, Country: d.Country, City: d.City, ISP: d.ISP,
		ASN: d.ASN, Lat: d.Lat, Lon: d.Lon, Tags: d.Tags,
	}
}

// room is the free slots of a proxy of max concurrency maxc with n leases.
func room(maxc, n int64) int64 {
	if maxc == 0 {
		return unlimitedRoom - n
	}
	return maxc - n
}

// countLease moves the lease count of proxy id by delta (+1 when a slot
// is taken, -1 when it is freed).
func (s *Store) countLease(ctx context.Context, id string, delta int64) error {
	_, err := s.loads.UpdateOne(context.WithoutCancel(ctx), bson.D{{Key: "_id", Value: id}},
		bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: delta}, {Key: "room", Value: -delta}}}})
	return wrapErr(err)
}

// loads offers LeastUsed or Random candidates found through the
// proxy_loads indexes: the pool's loads of rank 0 or 1 with room that the
// filter's query selects, in pages, LeastUsed in (rank, count, id) order,
// Random from a random id on, wrapping around. Each page's proxies and
// their slots are read by id, so a page costs what it holds, whatever the
// pool's size; LeastUsed orders the page by the counts read, Random
// shuffles it. Loads found off are corrected.
func (w *walker) loads(ctx context.Context, q bson.D, st pharox.Strategy) (bool, error) {
	base := append(bson.D{
		{Key: "pool", Value: w.pool.ID}, {Key: "rank", Value: bson.D{{Key: "$in", Value: bson.A{0, 1}}}},
		{Key: "room", Value: bson.D{{Key: "$gt", Value: 0}}},
	}, q...)
	sort := bson.D{{Key: "rank", Value: 1}, {Key: "n", Value: 1}, {Key: "_id", Value: 1}}
	ranges := []bson.D{base}
	if st == pharox.Random {
		sort = bson.D{{Key: "_id", Value: 1}}
		from := uuid.New().String()
		ranges = []bson.D{
			append(bson.D{{Key: "_id", Value: bson.D{{Key: "$gte", Value: from}}}}, base...),
			append(bson.D{{Key: "_id", Value: bson.D{{Key: "$lt", Value: from}}}}, base...),
		}
	}
	for _, r := range ranges {
		stop, err := w.loadPages(ctx, r, sort, st)
		if stop || err != nil {
			return stop, err
		}
	}
	return false, nil
}

// loadPages reads the loads matching q in sort order, in pages growing
// from firstPage to maxPage, and offers each page's candidates.
func (w *walker) loadPages(ctx context.Context, q, sort bson.D, st pharox.Strategy) (bool, error) {
	s := w.s
	cur, err := s.loads.Find(ctx, q, options.Find().SetSort(sort).SetBatchSize(firstPage))
	if err != nil {
		return true, wrapErr(err)
	}
	defer cur.Close(ctx)
	size := firstPage
	page := make([]loadDoc, 0, size)
	flush := func() (bool, error) {
		if len(page) == 0 {
			return false, nil
		}
		cands, counts, err := s.loadCandidates(ctx, page)
		if err != nil {
			return true, err
		}
		if st == pharox.Random {
			rand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
		} else {
			sortLeastUsed(cands, counts)
		}
		return w.offerCounted(cands, counts)
	}
	for cur.Next(ctx) {
		var d loadDoc
		if err := cur.Decode(&d); err != nil {
			return true, err
		}
		page = append(page, d)
		if len(page) == size {
			if stop, err := flush(); stop || err != nil {
				return true, err
			}
			size = min(size*4, maxPage)
			cur.SetBatchSize(int32(size))
			page = make([]loadDoc, 0, size)
		}
	}
	if err := cur.Err(); err != nil {
		return true, wrapErr(err)
	}
	return flush()
}

// loadCandidates reads the proxies of a page of loads and their slots by
// id and returns the proxies with their live slots. Loads whose proxy is
// gone are deleted. Counts found off are left alone: acquisitions and
// releases in flight have taken or freed slots whose count they have not
// moved yet, and a correction would undo their move.
func (s *Store) loadCandidates(ctx context.Context, page []loadDoc) ([]proxyDoc, map[string]int, error) {
	ids := make(bson.A, len(page))
	for i := range page {
		ids[i] = page[i].ID
	}
	var ds []proxyDoc
	if err := s.findAll(ctx, s.proxies, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}}, nil, &ds); err != nil {
		return nil, nil, err
	}
	live, _, err := s.tallySlots(ctx, bson.D{{Key: "proxy", Value: bson.D{{Key: "$in", Value: ids}}}})
	if err != nil {
		return nil, nil, err
	}
	byID := make(map[string]*proxyDoc, len(ds))
	for i := range ds {
		byID[ds[i].ID] = &ds[i]
	}
	cands := make([]proxyDoc, 0, len(ds))
	var fix []mongo.WriteModel
	for i := range page {
		l := &page[i]
		d := byID[l.ID]
		if d == nil {
			// A proxy deleted between its load's read and now, or one
			// whose delete left its load behind.
			fix = append(fix, mongo.NewDeleteOneModel().SetFilter(bson.D{{Key: "_id", Value: l.ID}, {Key: "pool", Value: l.Pool}}))
			continue
		}
		cands = append(cands, *d)
	}
	if len(fix) > 0 {
		if _, err := s.loads.BulkWrite(ctx, fix, options.BulkWrite().SetOrdered(false)); err != nil {
			return nil, nil, wrapErr(err)
		}
	}
	return cands, live, nil
}

// loadFix is the write that sets proxy d's load to n leases.
func loadFix(d *proxyDoc, n int64) mongo.WriteModel {
	l := newLoadDoc(d, n)
	return mongo.NewReplaceOneModel().SetFilter(bson.D{{Key: "_id", Value: d.ID}}).SetReplacement(l).SetUpsert(true)
}

// repairLoads sets the loads of every proxy of the pool to what its
// proxies and slots say (and deletes loads of proxies gone). A walk calls
// it when the loads missed a free candidate.
func (s *Store) repairLoads(ctx context.Context, pool string) error {
	byPool := bson.D{{Key: "pool", Value: pool}}
	var ds []proxyDoc
	if err := s.findAll(ctx, s.proxies, byPool, nil, &ds); err != nil {
		return err
	}
	var ls []loadDoc
	if err := s.findAll(ctx, s.loads, byPool, nil, &ls); err != nil {
		return err
	}
	_, all, err := s.tallySlots(ctx, byPool)
	if err != nil {
		return err
	}
	have := make(map[string]*loadDoc, len(ls))
	for i := range ls {
		have[ls[i].ID] = &ls[i]
	}
	var fix []mongo.WriteModel
	for i := range ds {
		d := &ds[i]
		n := int64(all[d.ID])
		if l := have[d.ID]; l == nil || l.N != n || l.Rank != d.Rank || l.Room != room(d.MaxC, n) {
			fix = append(fix, loadFix(d, n))
		}
		delete(have, d.ID)
	}
	for id := range have {
		fix = append(fix, mongo.NewDeleteOneModel().SetFilter(bson.D{{Key: "_id", Value: id}}))
	}
	if len(fix) == 0 {
		return nil
	}
	_, err = s.loads.BulkWrite(ctx, fix, options.BulkWrite().SetOrdered(false))
	return wrapErr(err)
}

// tallySlots counts the slot documents matching q per proxy: live ones
// (not past ExpiresAt) and all of them.
func (s *Store) tallySlots(ctx context.Context, q bson.D) (live, all map[string]int, err error) {
	cur, err := s.slots.Find(ctx, q, options.Find().SetProjection(bson.D{{Key: "proxy", Value: 1}, {Key: "expires_at", Value: 1}}))
	if err != nil {
		return nil, nil, wrapErr(err)
	}
	var docs []leaseDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, nil, wrapErr(err)
	}
	live, all = map[string]int{}, map[string]int{}
	t := now()
	for _, d := range docs {
		all[d.Proxy]++
		if d.ExpiresAt.After(t) {
			live[d.Proxy]++
		}
	}
	return live, all, nil
}
