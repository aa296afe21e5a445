package mongo

import (
	"math"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/pharox/pharox"
)

// filterQuery translates f into a query that matches every proxy f
// matches. exact reports that it matches no other: radius and point terms
// become a latitude band (a superset), which a NoneOf cannot negate, so a
// NoneOf of an inexact group is left out of the query. The store always
// applies pharox.Filters.Match to what the query returns, so the answer is
// the reference's either way; the query only narrows what is read.
func filterQuery(f *pharox.Filters) (q bson.D, exact bool) {
	if f == nil {
		return bson.D{}, true
	}
	exact = true
	eq := func(key, v string) {
		if v != "" {
			q = append(q, bson.E{Key: key, Value: v})
		}
	}
	eq("source", f.Source)
	eq("country", f.Country)
	eq("city", f.City)
	eq("isp", f.ISP)
	eq("protocol", string(f.Protocol))
	if f.ASN != nil {
		q = append(q, bson.E{Key: "asn", Value: int64(*f.ASN)})
	}
	if len(f.Tags) > 0 {
		q = append(q, bson.E{Key: "tags", Value: bson.D{{Key: "$all", Value: f.Tags}}})
	}
	if f.Latitude != nil && f.Longitude != nil {
		// Any point within r km lies within r/R radians of latitude; the
		// exact point filter within its tolerance. Both widened a little
		// for rounding: Match decides.
		band := 2 * pharox.CoordinateTolerance
		if f.RadiusKM != nil {
			band = *f.RadiusKM/pharox.EarthRadiusKM*180/math.Pi + 1e-6
		}
		q = append(q,
			bson.E{Key: "lat", Value: bson.D{{Key: "$gte", Value: *f.Latitude - band}, {Key: "$lte", Value: *f.Latitude + band}}},
			bson.E{Key: "lon", Value: bson.D{{Key: "$exists", Value: true}}},
		)
		exact = false
	}
	var and bson.A
	for i := range f.AllOf {
		sub, ex := filterQuery(&f.AllOf[i])
		exact = exact && ex
		if len(sub) > 0 {
			and = append(and, sub)
		}
	}
	if len(f.AnyOf) > 0 {
		var or bson.A
		always := false
		for i := range f.AnyOf {
			sub, ex := filterQuery(&f.AnyOf[i])
			exact = exact && ex
			if len(sub) == 0 {
				always = true
			}
			or = append(or, sub)
		}
		if !always {
			and = append(and, bson.D{{Key: "$or", Value: or}})
		}
	}
	if len(f.NoneOf) > 0 {
		var nor bson.A
		for i := range f.NoneOf {
			sub, ex := filterQuery(&f.NoneOf[i])
			if !ex {
				exact = false
				continue
			}
			if len(sub) == 0 {
				// NoneOf an empty group matches nothing.
				sub = bson.D{{Key: "_id", Value: bson.D{{Key: "$exists", Value: true}}}}
			}
			nor = append(nor, sub)
		}
		if len(nor) > 0 {
			and = append(and, bson.D{{Key: "$nor", Value: nor}})
		}
	}
	if len(and) > 0 {
		q = append(q, bson.E{Key: "$and", Value: and})
	}
	return q, exact
}
