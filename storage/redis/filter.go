package redis

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/pharox/pharox"
)

// spec is a filter as select.lua evaluates it (see doc.go, Acquisition cost).
type spec struct {
	// K lists index-set suffixes every candidate must belong to.
	K []string `json:"k,omitempty"`
	// E is the whole filter, set when K alone does not express it.
	E *node `json:"e,omitempty"`
	// G narrows the set path of a geo filter without index sets.
	G *geoSearch `json:"g,omitempty"`
	// A, for a filter without K, lists the index sets of each alternative
	// of an AnyOf in its conjunction: every match is in all the sets of
	// one alternative.
	A [][]string `json:"a,omitempty"`
}

type node struct {
	Src   string   `json:"src,omitempty"`
	CC    string   `json:"cc,omitempty"`
	City  string   `json:"city,omitempty"`
	ISP   string   `json:"isp,omitempty"`
	ASN   string   `json:"asn,omitempty"`
	Proto string   `json:"proto,omitempty"`
	Tags  []string `json:"tags,omitempty"`
	Geo   *geoNode `json:"geo,omitempty"`
	All   []node   `json:"all,omitempty"`
	Any   []node   `json:"any,omitempty"`
	None  []node   `json:"none,omitempty"`
	// U, on the root only, is how many of the packed filter fields the
	// tree reads (see fieldsRead).
	U int `json:"u,omitempty"`
}

type geoNode struct {
	Lat float64  `json:"lat"`
	Lon float64  `json:"lon"`
	R   *float64 `json:"r,omitempty"`
}

type geoSearch struct {
	Lat float64 `json:"lat"`
	Lon float64 `json:"lon"`
	R   float64 `json:"r"`
}

// geoMarginFactor covers Redis' Earth radius (6372.797 km) being larger than
// pharox.EarthRadiusKM, so GEOSEARCH distances are up to 0.03% longer.
const geoMarginFactor = 6372.7976 / pharox.EarthRadiusKM * 1.0001

// geoPointRadiusKM is the search radius for a point filter without radius:
// CoordinateTolerance (1e-6°, under 0.2 m) plus GEO's cell error (under 1 m).
const geoPointRadiusKM = 0.01

// compileFilters turns f into the JSON spec select.lua reads; "" means no
// filter. Input is normalized on a copy, so callers' filters stay as given.
func compileFilters(f *pharox.Filters) (string, error) {
	if f.IsZero() {
		return "", nil
	}
	if f.HasPredicate() {
		return "", fmt.Errorf("%w: predicate filters cannot run in Redis", pharox.ErrUnsupported)
	}
	if err := f.Validate(); err != nil {
		return "", err
	}
	n := toNode(f)
	sp := spec{}
	collectKeys(&n, &sp.K)
	if needsEval(&n) {
		n.U = fieldsRead(&n)
		sp.E = &n
		if len(sp.K) == 0 {
			sp.G = geoPrefilter(&n)
			sp.A = anyKeys(&n)
		}
	}
	if len(sp.K) == 0 && sp.E == nil {
		return "", nil // only empty nested filters: matches every proxy
	}
	b, err := json.Marshal(sp)
	if err != nil {
		return "", fmt.Errorf("redis: encode filters: %w", err)
	}
	return string(b), nil
}

func toNode(f *pharox.Filters) node {
	n := node{
		Src:   strings.TrimSpace(f.Source),
		CC:    strings.ToUpper(strings.TrimSpace(f.Country)),
		City:  strings.TrimSpace(f.City),
		ISP:   strings.TrimSpace(f.ISP),
		Proto: strings.ToLower(strings.TrimSpace(string(f.Protocol))),
		Tags:  f.Tags,
	}
	if f.ASN != nil {
		n.ASN = strconv.Itoa(*f.ASN)
	}
	if f.Latitude != nil && f.Longitude != nil {
		n.Geo = &geoNode{Lat: *f.Latitude, Lon: *f.Longitude, R: f.RadiusKM}
	}
	for i := range f.AllOf {
		n.All = append(n.All, toNode(&f.AllOf[i]))
	}
	for i := range f.AnyOf {
		n.Any = append(n.Any, toNode(&f.AnyOf[i]))
	}
	for i := range f.NoneOf {
		n.None = append(n.None, toNode(&f.NoneOf[i]))
	}
	return n
}

// collectKeys gathers the index sets implied by n's conjunction: its own
// equality fields and tags, and those of its AllOf children.
func collectKeys(n *node, keys *[]string) {
	add := func(field, v string) {
		if v == "" && field != "tag" { // an empty field does not filter; an empty tag matches nothing
			return
		}
		k := "i:" + field + ":" + v
		for _, have := range *keys {
			if have == k {
				return
			}
		}
		*keys = append(*keys, k)
	}
	add("src", n.Src)
	add("cc", n.CC)
	add("city", n.City)
	add("isp", n.ISP)
	add("asn", n.ASN)
	add("proto", n.Proto)
	for _, t := range n.Tags {
		add("tag", t)
	}
	for i := range n.All {
		collectKeys(&n.All[i], keys)
	}
}

// needsEval reports whether n says more than its index sets: a geo
// condition or an AnyOf/NoneOf anywhere in its conjunction.
func needsEval(n *node) bool {
	if n.Geo != nil || len(n.Any) > 0 || len(n.None) > 0 {
		return true
	}
	for i := range n.All {
		if needsEval(&n.All[i]) {
			return true
		}
	}
	return false
}

// geoPrefilter returns a GEOSEARCH that covers every proxy n's conjunction
// admits by position, or nil.
func geoPrefilter(n *node) *geoSearch {
	if g := n.Geo; g != nil && g.Lat <= maxGeoLat && g.Lat >= -maxGeoLat {
		r := geoPointRadiusKM
		if g.R != nil {
			r = *g.R*geoMarginFactor + geoPointRadiusKM
		}
		return &geoSearch{Lat: g.Lat, Lon: g.Lon, R: r}
	}
	for i := range n.All {
		if g := geoPrefilter(&n.All[i]); g != nil {
			return g
		}
	}
	return nil
}

// anyKeys returns the index sets of each alternative of the first AnyOf in
// n's conjunction whose every alternative implies some, or nil.
func anyKeys(n *node) [][]string {
	if len(n.Any) > 0 {
		alts := make([][]string, 0, len(n.Any))
		for i := range n.Any {
			var keys []string
			collectKeys(&n.Any[i], &keys)
			if len(keys) == 0 {
				alts = nil
				break
			}
			alts = append(alts, keys)
		}
		if alts != nil {
			return alts
		}
	}
	for i := range n.All {
		if alts := anyKeys(&n.All[i]); alts != nil {
			return alts
		}
	}
	return nil
}

// fieldsRead returns how many of the packed filter fields (filterFields
// in codec.go: source, country, city, ISP, ASN, protocol, latitude,
// longitude, then the tags) n's tree reads, counted from the first, so
// that select.lua unpacks no more of each proxy's entry than it needs.
func fieldsRead(n *node) int {
	u := 0
	for i, set := range [...]bool{n.Src != "", n.CC != "", n.City != "", n.ISP != "", n.ASN != "", n.Proto != ""} {
		if set {
			u = i + 1
		}
	}
	if n.Geo != nil {
		u = 8
	}
	if len(n.Tags) > 0 {
		u = 9
	}
	for _, kids := range [...][]node{n.All, n.Any, n.None} {
		for i := range kids {
			u = max(u, fieldsRead(&kids[i]))
		}
	}
	return u
}
