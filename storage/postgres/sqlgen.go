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

// freeSQL is the condition for a proxy p with a free slot that AcquireLease
// may lease: a leasable status, current_leases below max_concurrency, and
// the filters. It reads only the proxy row, so walking an index of
// candidates costs no lease lookups.
func freeSQL(p, filter string) string {
	return p + ".status IN ('active', 'slow')" +
		" AND (" + p + ".max_concurrency IS NULL OR " + p + ".current_leases < " + p + ".max_concurrency)" +
		" AND " + filter
}

// expiredSQL is the condition for a full proxy p that holds an expired,
// unreclaimed lease: AcquireLease may reclaim that lease and take its slot
// in the same statement. Only looked for when no proxy has a free slot.
func expiredSQL(p, filter string) string {
	return p + ".status IN ('active', 'slow')" +
		" AND " + p + ".max_concurrency IS NOT NULL AND " + p + ".current_leases >= " + p + ".max_concurrency" +
		" AND EXISTS (SELECT 1 FROM {s}.leases x WHERE x.proxy_id = " + p + ".id AND x.status = 'active' AND x.expires_at <= clock_timestamp())" +
		" AND " + filter
}

// candidateSQL is either: a proxy AcquireLease could lease now.
func candidateSQL(p, filter string) string {
	return "((" + freeSQL(p, filter) + ") OR (" + expiredSQL(p, filter) + "))"
}

// orderSQL is the ORDER BY list of a strategy, mirroring
// pharox.CompareFirstAvailable and pharox.CompareLeastUsed. cursor is an
// SQL expression for the round-robin position.
func orderSQL(st pharox.Strategy, p, cursor string) string {
	switch st.OrDefault() {
	case pharox.LeastUsed:
		return p + ".status_rank, " + p + ".current_leases, " + p + ".id"
	case pharox.RoundRobin:
		return p + ".id <= coalesce(" + cursor + ", '00000000-0000-0000-0000-000000000000'::uuid), " + p + ".id"
	case pharox.Random:
		return "random()"
	default:
		return p + ".status_rank, " + p + ".checked_at DESC NULLS LAST, " + p + ".id"
	}
}
