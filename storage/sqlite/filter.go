package sqlite

import (
	"fmt"
	"math"
	"strings"

	"github.com/pharox/pharox"
)

// sqlFilter is the part of a Filters that SQL can apply through the
// proxies' columns. It never rejects a proxy Filters.Match accepts; when
// exact is set it also accepts no proxy Match rejects.
type sqlFilter struct {
	where string // starts with " AND " when not empty
	args  []any
	exact bool
}

// prefilter translates the AND-ed part of f (its own fields and AllOf,
// recursively) to SQL. AnyOf, NoneOf and predicates are left to Match, as
// is the exact distance test of a radius, for which SQL only applies a
// bounding box.
func prefilter(f *pharox.Filters) sqlFilter {
	var b filterBuilder
	b.exact = true
	b.add(f)
	return sqlFilter{where: b.sb.String(), args: b.args, exact: b.exact}
}

type filterBuilder struct {
	sb    strings.Builder
	args  []any
	exact bool
}

func (b *filterBuilder) cond(sql string, args ...any) {
	b.sb.WriteString(" AND ")
	b.sb.WriteString(sql)
	b.args = append(b.args, args...)
}

func (b *filterBuilder) add(f *pharox.Filters) {
	if f == nil {
		return
	}
	if f.Source != "" {
		b.cond("source = ?", f.Source)
	}
	if f.Country != "" {
		b.cond("country = ?", f.Country)
	}
	if f.City != "" {
		b.cond("city = ?", f.City)
	}
	if f.ISP != "" {
		b.cond("isp = ?", f.ISP)
	}
	if f.Protocol != "" {
		b.cond("protocol = ?", string(f.Protocol))
	}
	if f.ASN != nil {
		b.cond("asn = ?", int64(*f.ASN))
	}
	for _, t := range f.Tags {
		// Unqualified: the column of whichever row source the
		// condition is applied to (the proxies table or a walk of it).
		b.cond("EXISTS (SELECT 1 FROM json_each(tags) WHERE json_each.value = ?)", t)
	}
	if f.Latitude != nil && f.Longitude != nil {
		b.point(*f.Latitude, *f.Longitude, f.RadiusKM)
	}
	for i := range f.AllOf {
		b.add(&f.AllOf[i])
	}
	if len(f.AnyOf) > 0 || len(f.NoneOf) > 0 || f.Predicate != nil {
		b.exact = false
	}
}

// point restricts latitude and longitude to a box that contains every point
// Match accepts. Boxes are widened by a small margin so rounding in the
// bounds can only let extra rows through, which Match then rejects.
func (b *filterBuilder) point(lat, lon float64, radiusKM *float64) {
	b.exact = false
	const margin = 1e-9
	if radiusKM == nil {
		tol := pharox.CoordinateTolerance * (1 + 1e-6)
		b.cond("latitude BETWEEN ? AND ? AND longitude BETWEEN ? AND ?",
			lat-tol-margin, lat+tol+margin, lon-tol-margin, lon+tol+margin)
		return
	}
	// Angular radius in degrees, widened for rounding.
	ang := *radiusKM / pharox.EarthRadiusKM
	dLat := ang*180/math.Pi*(1+1e-9) + margin
	if dLat >= 180 {
		b.cond("latitude IS NOT NULL AND longitude IS NOT NULL")
		return
	}
	b.cond("latitude BETWEEN ? AND ?", lat-dLat, lat+dLat)
	// The longitude span of a spherical cap is asin(sin(ang)/cos(lat)); it
	// is unbounded when the cap reaches a pole, and crossing the
	// antimeridian would need two ranges: skip the longitude bound then.
	if math.Abs(lat)+dLat >= 90 || ang >= math.Pi/2 {
		b.cond("longitude IS NOT NULL")
		return
	}
	s := math.Sin(ang) / math.Cos(lat*math.Pi/180)
	if s >= 1 {
		b.cond("longitude IS NOT NULL")
		return
	}
	dLon := math.Asin(s)*180/math.Pi*(1+1e-9) + margin
	if lon-dLon < -180 || lon+dLon > 180 {
		b.cond("longitude IS NOT NULL")
		return
	}
	b.cond("longitude BETWEEN ? AND ?", lon-dLon, lon+dLon)
}

// prefixed qualifies every column of a column list with prefix.
func prefixed(prefix, cols string) string {
	parts := strings.Split(cols, ",")
	for i, c := range parts {
		parts[i] = prefix + strings.TrimSpace(c)
	}
	return strings.Join(parts, ", ")
}

// matcher applies a Filters to candidate rows with the reference semantics
// of Filters.Match. A Predicate sees a copy, so it cannot alter the row that
// becomes the lease's snapshot, and a Predicate that panics fails the
// operation with ErrInvalidArgument instead of unwinding through an open
// transaction.
type matcher struct {
	f    *pharox.Filters
	pred bool
}

func newMatcher(f *pharox.Filters) matcher { return matcher{f: f, pred: f.HasPredicate()} }

func (m matcher) match(p *pharox.Proxy) (ok bool, err error) {
	if m.f == nil {
		return true, nil
	}
	if !m.pred {
		return m.f.Match(p), nil
	}
	defer func() {
		if r := recover(); r != nil {
			ok, err = false, fmt.Errorf("%w: filter predicate panicked: %v", pharox.ErrInvalidArgument, r)
		}
	}()
	return m.f.Match(p.Clone()), nil
}
