package postgres

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/pharox/pharox"
)

// args collects bind parameters while a statement is generated. Values are
// never written into SQL text: add returns the placeholder to write.
type args struct{ vals []any }

func (a *args) add(v any) string {
	a.vals = append(a.vals, v)
	return "$" + strconv.Itoa(len(a.vals))
}

// filterSQL translates f into a boolean SQL expression over the proxy alias
// p that is never NULL (so NOT works like Go's !), following
// [pharox.Filters.Match] field by field. f must be normalized and valid and
// carry no Predicate.
func filterSQL(f *pharox.Filters, p string, a *args) string {
	if f == nil {
		return "true"
	}
	var conds []string
	eq := func(col, val string) {
		if val != "" {
			conds = append(conds, p+"."+col+" = "+a.add(val)+"::text")
		}
	}
	eq("source", f.Source)
	eq("country", f.Country)
	eq("city", f.City)
	eq("isp", f.ISP)
	eq("protocol", string(f.Protocol))
	if f.ASN != nil {
		conds = append(conds, fmt.Sprintf("(%[1]s.asn IS NOT NULL AND %[1]s.asn = %[2]s::bigint)", p, a.add(int64(*f.ASN))))
	}
	if len(f.Tags) > 0 {
		conds = append(conds, p+".tags @> "+a.add(f.Tags)+"::text[]")
	}
	if f.Latitude != nil && f.Longitude != nil {
		conds = append(conds, pointSQL(*f.Latitude, *f.Longitude, f.RadiusKM, p, a))
	}
	for i := range f.AllOf {
		conds = append(conds, filterSQL(&f.AllOf[i], p, a))
	}
	if len(f.AnyOf) > 0 {
		alts := make([]string, len(f.AnyOf))
		for i := range f.AnyOf {
			alts[i] = filterSQL(&f.AnyOf[i], p, a)
		}
		conds = append(conds, "("+strings.Join(alts, " OR ")+")")
	}
	for i := range f.NoneOf {
		conds = append(conds, "NOT coalesce("+filterSQL(&f.NoneOf[i], p, a)+", false)")
	}
	switch len(conds) {
	case 0:
		return "true"
	case 1:
		return conds[0]
	}
	return "(" + strings.Join(conds, " AND ") + ")"
}

// pointSQL selects proxies near (lat, lon). Without a radius it mirrors the
// CoordinateTolerance comparison. With one, a bounding box that contains
// the whole circle lets the (pool_id, latitude, longitude) index narrow the
// rows, and the haversine distance on a sphere of EarthRadiusKM (the same
// formula as pharox.HaversineKM) decides. No PostGIS needed.
func pointSQL(lat, lon float64, radius *float64, p string, a *args) string {
	notNull := p + ".latitude IS NOT NULL AND " + p + ".longitude IS NOT NULL"
	if radius == nil {
		const tol = pharox.CoordinateTolerance
		la, lo := a.add(lat), a.add(lon)
		// The BETWEEN bounds are a slightly widened prefilter for the
		// index; abs() is the exact rule of Filters.Match.
		return fmt.Sprintf("(%s AND %s.latitude BETWEEN %s AND %s AND %s.longitude BETWEEN %s AND %s"+
			" AND abs(%s.latitude - %s::float8) <= %s AND abs(%s.longitude - %s::float8) <= %s)",
			notNull, p, a.add(lat-2*tol), a.add(lat+2*tol), p, a.add(lon-2*tol), a.add(lon+2*tol),
			p, la, strconv.FormatFloat(tol, 'g', -1, 64), p, lo, strconv.FormatFloat(tol, 'g', -1, 64))
	}
	r := *radius
	la, lo, rr := a.add(lat), a.add(lon), a.add(r)
	conds := []string{notNull}
	conds = append(conds, boxSQL(lat, lon, r, p, a)...)
	conds = append(conds, fmt.Sprintf(
		"2 * %[5]s * asin(least(1.0, sqrt(power(sin(radians(%[1]s.latitude - %[2]s::float8) / 2), 2)"+
			" + cos(radians(%[2]s::float8)) * cos(radians(%[1]s.latitude)) * power(sin(radians(%[1]s.longitude - %[3]s::float8) / 2), 2))))"+
			" <= %[4]s::float8",
		p, la, lo, rr, strconv.FormatFloat(pharox.EarthRadiusKM, 'f', -1, 64)))
	return "(" + strings.Join(conds, " AND ") + ")"
}

// boxSQL returns the bounding-box conditions for a circle of r km around
// (lat, lon), or none when the box would not narrow anything. The box is
// widened by a small margin: it only has to contain the circle.
func boxSQL(lat, lon, r float64, p string, a *args) []string {
	const margin = 1e-6 // degrees
	ang := r / pharox.EarthRadiusKM
	if ang >= math.Pi/2 {
		return nil
	}
	dLat := ang*180/math.Pi + margin
	minLat, maxLat := lat-dLat, lat+dLat
	if minLat <= -90 || maxLat >= 90 {
		// The circle reaches a pole: every longitude is inside.
		return []string{fmt.Sprintf("%s.latitude BETWEEN %s::float8 AND %s::float8", p, a.add(max(minLat, -90)), a.add(min(maxLat, 90)))}
	}
	conds := []string{fmt.Sprintf("%s.latitude BETWEEN %s::float8 AND %s::float8", p, a.add(minLat), a.add(maxLat))}
	s := math.Sin(ang) / math.Cos(lat*math.Pi/180)
	if s >= 1 {
		return conds
	}
	dLon := math.Asin(s)*180/math.Pi + margin
	minLon, maxLon := lon-dLon, lon+dLon
	switch {
	case minLon < -180:
		conds = append(conds, fmt.Sprintf("(%[1]s.longitude >= %[2]s::float8 OR %[1]s.longitude <= %[3]s::float8)", p, a.add(minLon+360), a.add(maxLon)))
	case maxLon > 180:
		conds = append(conds, fmt.Sprintf("(%[1]s.longitude >= %[2]s::float8 OR %[1]s.longitude <= %[3]s::float8)", p, a.add(minLon), a.add(maxLon-360)))
	default:
		conds = append(conds, fmt.Sprintf("%s.longitude BETWEEN %s::float8 AND %s::float8", p, a.add(minLon), a.add(maxLon)))
	}
	return conds
}

// DefaultFilterScanBudget is how many free proxies one acquisition
// examines for a filter unless WithFilterScanBudget says otherwise.
const DefaultFilterScanBudget = 1000

// leasableSQL is the predicate of the proxies_free_* indexes over alias p:
// a leasable status and a free slot.
func leasableSQL(p string) string {
	return p + ".status IN ('active', 'slow') AND " + p + ".has_room"
}

// allowanceSQL is the condition that proxy p's traffic allowance (the byte
// limits of its quota) is not used up: allowance_until, set when a release
// used it up (or SetQuota found it so), is NULL or past. It reads only the
// proxy row, which every walk reads anyway, so a proxy passed over costs
// what a busy one in the walk's index would, and a pool without proxy
// quotas pays one comparison per candidate.
func allowanceSQL(p string) string {
	return "(" + p + ".allowance_until IS NULL OR " + p + ".allowance_until <= clock_timestamp())"
}

// freeSQL is the condition for a proxy p with a free slot that AcquireLease
// may lease: a leasable status, current_leases below max_concurrency, a
// traffic allowance not used up, and the filters. It reads only the proxy
// row, so walking an index of candidates costs no lease lookups.
func freeSQL(p, filter string) string {
	return leasableSQL(p) + " AND " + allowanceSQL(p) + " AND " + filter
}

// expiredSQL is the condition for a full proxy p that holds an expired,
// unreclaimed lease: AcquireLease may reclaim that lease and take its slot
// in the same statement. Only looked for when no proxy has a free slot.
func expiredSQL(p, filter string) string {
	return p + ".status IN ('active', 'slow') AND " + allowanceSQL(p) +
		" AND NOT " + p + ".has_room" +
		" AND EXISTS (SELECT 1 FROM {s}.leases x WHERE x.proxy_id = " + p + ".id AND x.status = 'active' AND x.expires_at <= clock_timestamp())" +
		" AND " + filter
}

// candidateSQL is either: a proxy AcquireLease could lease now.
func candidateSQL(p, filter string) string {
	return "((" + freeSQL(p, filter) + ") OR (" + expiredSQL(p, filter) + "))"
}

// notCoolingSQL is the condition that proxy p is not cooling down for the
// target bound to placeholder ph (see pharox.TargetState): one
// primary-key probe of proxy_targets per candidate. It is a scalar
// subquery, never NULL, rather than NOT EXISTS: the planner runs it as a
// SubPlan for each row the walk reaches and cannot turn it into an anti
// join that reads every entry of the target, so the cost of a walk grows
// with the cooling proxies it passes, never with the pool or the target's
// entries.
func notCoolingSQL(p, ph string) string {
	return "NOT coalesce((SELECT t.cooling_until > clock_timestamp() FROM {s}.proxy_targets t WHERE t.proxy_id = " + p + ".id AND t.target = " + ph + "), false)"
}

// withTarget returns filter narrowed to proxies of alias p not cooling
// down for the target in placeholder ph ("" for no target).
func withTarget(filter, p, ph string) string {
	if ph == "" {
		return filter
	}
	return "(" + filter + " AND " + notCoolingSQL(p, ph) + ")"
}

// targetValue is the value a new lease's target column gets: the target
// in placeholder ph, or ” for none.
func targetValue(ph string) string {
	if ph == "" {
		return "''"
	}
	return ph + "::text"
}

// pick describes one use of pickSQL.
type pick struct {
	strategy pharox.Strategy
	// cols are the selected columns over alias p.
	cols string
	// filter is the filter condition over alias p ("true" for none).
	filter string
	// gate is a condition that does not depend on the row (a one-time
	// filter, e.g. "the consumer exists"); "" for none.
	gate string
	// limit is how many proxies to return (an SQL expression).
	limit string
	// lock is the locking clause ("FOR UPDATE OF p SKIP LOCKED"), "" for
	// none.
	lock string
	// target is the placeholder of AcquireRequest.Target, "" for none:
	// the walk passes over proxies cooling down for it (notCoolingSQL).
	target string
}

// pickSQL returns a SELECT of up to pk.limit proxies of the pool (the
// statement's CTE "pool") with a free slot that match the filter, in
// strategy order, each locked with pk.lock. Every form walks one of the
// proxies_free_* partial indexes, which hold only leasable proxies with a
// free slot, so busy proxies cost nothing:
//
//   - FirstAvailable and LeastUsed walk their index in order.
//   - RoundRobin walks proxies_free_id from just after the pool's position
//     (CTE "cur"), then from the start: two range scans, the second run
//     only when the first found nothing.
//   - Random does the same on proxies_free_random from a random point
//     (CTE "rs"); the acquisition redraws the position of the proxy it took.
//
// With a target, each entry the walk reaches is first probed in
// proxy_targets by primary key (notCoolingSQL) and passed over while it
// cools down for that target; those entries do not count against the
// scan budget.
//
// A proxy whose traffic allowance is used up (allowanceSQL) is passed
// over where the walk reads its row, like a proxy the filter rejects.
//
// Without a filter the first unlocked entry is taken. With one, the walk
// visits at most the scan budget (WithFilterScanBudget) entries per range
// (a subquery with that LIMIT), and each is looked up by primary key,
// checked against the filter and locked in a LATERAL subquery: the nested loop keeps the
// strategy order, and rows that fail the filter are never locked. (Its
// LIMIT 1, a no-op on a primary-key lookup, keeps the planner from
// turning it into a join of its own choosing.)
func (s *Store) pickSQL(pk pick) string {
	type rng struct{ cond, order string }
	var ranges []rng
	switch pk.strategy.OrDefault() {
	case pharox.LeastUsed:
		ranges = []rng{{"", "%[1]s.status_rank, %[1]s.current_leases, %[1]s.id"}}
	case pharox.RoundRobin:
		const cur = "coalesce((SELECT last_proxy_id FROM cur), '00000000-0000-0000-0000-000000000000'::uuid)"
		ranges = []rng{{" AND %[1]s.id > " + cur, "%[1]s.id"}, {" AND %[1]s.id <= " + cur, "%[1]s.id"}}
	case pharox.Random:
		ranges = []rng{{" AND %[1]s.rnd >= (SELECT r FROM rs)", "%[1]s.rnd"}, {" AND %[1]s.rnd < (SELECT r FROM rs)", "%[1]s.rnd"}}
	default:
		ranges = []rng{{"", "%[1]s.status_rank, %[1]s.checked_at DESC NULLS LAST, %[1]s.id"}}
	}
	gate := ""
	if pk.gate != "" {
		gate = " AND " + pk.gate
	}
	cool := func(p string) string {
		if pk.target == "" {
			return ""
		}
		return " AND " + notCoolingSQL(p, pk.target)
	}
	branches := make([]string, len(ranges))
	for i, r := range ranges {
		if pk.filter == "true" {
			branches[i] = fmt.Sprintf("SELECT %s FROM {s}.proxies p WHERE p.pool_id = (SELECT id FROM pool)%s AND %s%s%s ORDER BY %s LIMIT %s %s",
				pk.cols, gate, leasableSQL("p")+" AND "+allowanceSQL("p"), strings.ReplaceAll(r.cond, "%[1]s", "p"), cool("p"), strings.ReplaceAll(r.order, "%[1]s", "p"), pk.limit, pk.lock)
			continue
		}
		branches[i] = fmt.Sprintf("SELECT x.* FROM (SELECT q.id FROM {s}.proxies q WHERE q.pool_id = (SELECT id FROM pool)%s AND %s%s%s ORDER BY %s LIMIT %d) w"+
			" CROSS JOIN LATERAL (SELECT %s FROM {s}.proxies p WHERE p.id = w.id AND %s LIMIT 1 %s) x LIMIT %s",
			gate, leasableSQL("q"), strings.ReplaceAll(r.cond, "%[1]s", "q"), cool("q"), strings.ReplaceAll(r.order, "%[1]s", "q"), s.cfg.scanBudget,
			pk.cols, freeSQL("p", pk.filter), pk.lock, pk.limit)
	}
	if len(branches) == 1 {
		return branches[0]
	}
	return unionSQL(branches, pk.limit)
}

// unionSQL runs the SELECTs in order until limit rows came out: Append
// never starts a branch once the LIMIT above it is satisfied. Each branch
// is wrapped in a subquery because a locking clause is not allowed on a
// branch of UNION itself.
func unionSQL(branches []string, limit string) string {
	for i, b := range branches {
		branches[i] = fmt.Sprintf("SELECT * FROM (%s) u%d", b, i)
	}
	return "SELECT * FROM (" + strings.Join(branches, " UNION ALL ") + ") u LIMIT " + limit
}

// staleSQL returns a SELECT of the id of a full proxy of the pool holding
// an expired, unreclaimed lease that matches the filter, locked with lock.
// It walks the pool's expired leases, oldest first, through
// leases_active_pool (at most the scan budget of them), so it costs
// nothing per busy proxy that has no expired lease.
func (s *Store) staleSQL(filter, gate, lock string) string {
	if gate != "" {
		gate = " AND " + gate
	}
	return fmt.Sprintf("SELECT x.id FROM (SELECT e.proxy_id FROM {s}.leases e WHERE e.pool_id = (SELECT id FROM pool)%s"+
		" AND e.status = 'active' AND e.expires_at <= clock_timestamp() ORDER BY e.expires_at LIMIT %d) w"+
		" CROSS JOIN LATERAL (SELECT p.id FROM {s}.proxies p WHERE p.id = w.proxy_id AND p.status IN ('active', 'slow') AND NOT p.has_room AND %s AND %s LIMIT 1 %s) x LIMIT 1",
		gate, s.cfg.scanBudget, allowanceSQL("p"), filter, lock)
}

// budgetSpentSQL is true when the pool has more free proxies (not cooling
// down for the target in placeholder target, "" for none) than a filtered
// walk may examine: a filtered acquisition that found nothing may then
// have stopped at its budget.
func (s *Store) budgetSpentSQL(target string) string {
	cool := ""
	if target != "" {
		cool = " AND " + notCoolingSQL("q", target)
	}
	return fmt.Sprintf("(SELECT count(*) FROM (SELECT 1 FROM {s}.proxies q WHERE q.pool_id = (SELECT id FROM pool) AND %s%s ORDER BY q.id LIMIT %d) z) > %d",
		leasableSQL("q"), cool, s.cfg.scanBudget+1, s.cfg.scanBudget)
}
