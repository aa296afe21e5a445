package mysql

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/pharox/pharox"
)

// filterSQL translates f into a boolean SQL expression over the proxy alias
// p that is never NULL (so NOT works like Go's !), following
// [pharox.Filters.Match] field by field, and appends its parameters to
// args. f must be normalized and valid and carry no Predicate.
func filterSQL(f *pharox.Filters, p string, args *[]any) string {
	if f == nil {
		return "TRUE"
	}
	var conds []string
	add := func(cond string, vals ...any) {
		conds = append(conds, cond)
		*args = append(*args, vals...)
	}
	eq := func(col, val string) {
		if val != "" {
			add(p+"."+col+" = ?", val)
		}
	}
	eq("source", f.Source)
	eq("country", f.Country)
	eq("city", f.City)
	eq("isp", f.ISP)
	eq("protocol", string(f.Protocol))
	if f.ASN != nil {
		add("("+p+".asn IS NOT NULL AND "+p+".asn = ?)", int64(*f.ASN))
	}
	for _, t := range f.Tags {
		add("("+p+".tags IS NOT NULL AND JSON_CONTAINS("+p+".tags, JSON_QUOTE(?)))", t)
	}
	if f.Latitude != nil && f.Longitude != nil {
		conds = append(conds, pointSQL(*f.Latitude, *f.Longitude, f.RadiusKM, p, args))
	}
	for i := range f.AllOf {
		conds = append(conds, filterSQL(&f.AllOf[i], p, args))
	}
	if len(f.AnyOf) > 0 {
		alts := make([]string, len(f.AnyOf))
		for i := range f.AnyOf {
			alts[i] = filterSQL(&f.AnyOf[i], p, args)
		}
		conds = append(conds, "("+strings.Join(alts, " OR ")+")")
	}
	for i := range f.NoneOf {
		conds = append(conds, "NOT COALESCE("+filterSQL(&f.NoneOf[i], p, args)+", FALSE)")
	}
	switch len(conds) {
	case 0:
		return "TRUE"
	case 1:
		return conds[0]
	}
	return "(" + strings.Join(conds, " AND ") + ")"
}

func fl(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// pointSQL selects proxies near (lat, lon): without a radius it mirrors the
// CoordinateTolerance comparison; with one, a bounding box that contains
// the whole circle narrows the rows and the haversine distance on a sphere
// of EarthRadiusKM (the formula of pharox.HaversineKM) decides.
func pointSQL(lat, lon float64, radius *float64, p string, args *[]any) string {
	notNull := p + ".latitude IS NOT NULL AND " + p + ".longitude IS NOT NULL"
	if radius == nil {
		tol := fl(pharox.CoordinateTolerance)
		*args = append(*args, lat, lon)
		return "(" + notNull + " AND ABS(" + p + ".latitude - ?) <= " + tol + " AND ABS(" + p + ".longitude - ?) <= " + tol + ")"
	}
	conds := []string{notNull}
	conds = append(conds, boxSQL(lat, lon, *radius, p, args)...)
	*args = append(*args, lat, lat, lon, *radius)
	conds = append(conds, "2 * "+fl(pharox.EarthRadiusKM)+" * ASIN(LEAST(1.0, SQRT(POWER(SIN(RADIANS("+p+".latitude - ?) / 2), 2)"+
		" + COS(RADIANS(?)) * COS(RADIANS("+p+".latitude)) * POWER(SIN(RADIANS("+p+".longitude - ?) / 2), 2)))) <= ?")
	return "(" + strings.Join(conds, " AND ") + ")"
}

// boxSQL returns the bounding-box conditions for a circle of r km around
// (lat, lon), or none when the box would not narrow anything. The box is
// widened by a small margin: it only has to contain the circle.
func boxSQL(lat, lon, r float64, p string, args *[]any) []string {
	const margin = 1e-6 // degrees
	ang := r / pharox.EarthRadiusKM
	if ang >= math.Pi/2 {
		return nil
	}
	dLat := ang*180/math.Pi + margin
	minLat, maxLat := lat-dLat, lat+dLat
	if minLat <= -90 || maxLat >= 90 {
		*args = append(*args, max(minLat, -90), min(maxLat, 90))
		return []string{p + ".latitude BETWEEN ? AND ?"}
	}
	*args = append(*args, minLat, maxLat)
	conds := []string{p + ".latitude BETWEEN ? AND ?"}
	s := math.Sin(ang) / math.Cos(lat*math.Pi/180)
	if s >= 1 {
		return conds
	}
	dLon := math.Asin(s)*180/math.Pi + margin
	minLon, maxLon := lon-dLon, lon+dLon
	switch {
	case minLon < -180:
		*args = append(*args, minLon+360, maxLon)
		conds = append(conds, fmt.Sprintf("(%[1]s.longitude >= ? OR %[1]s.longitude <= ?)", p))
	case maxLon > 180:
		*args = append(*args, minLon, maxLon-360)
		conds = append(conds, fmt.Sprintf("(%[1]s.longitude >= ? OR %[1]s.longitude <= ?)", p))
	default:
		*args = append(*args, minLon, maxLon)
		conds = append(conds, p+".longitude BETWEEN ? AND ?")
	}
	return conds
}
