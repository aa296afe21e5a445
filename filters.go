package pharox

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// EarthRadiusKM is the mean Earth radius used for radius filters.
const EarthRadiusKM = 6371.0

// CoordinateTolerance is how close a proxy's coordinates must be to a
// filter's point to match when no radius is given.
const CoordinateTolerance = 1e-6

// Filters narrows the proxies a lease may use. Empty fields do not filter.
// All set fields must match (AND); AllOf, AnyOf and NoneOf combine nested
// filters.
type Filters struct {
	Source   string   `json:"source,omitempty"`
	Country  string   `json:"country,omitempty"`
	City     string   `json:"city,omitempty"`
	ISP      string   `json:"isp,omitempty"`
	ASN      *int     `json:"asn,omitempty"` // nil does not filter; 0 is a real ASN
	Protocol Protocol `json:"protocol,omitempty"`
	// Tags: the proxy must carry every one of them.
	Tags []string `json:"tags,omitempty"`

	// Latitude and Longitude select proxies near a point: within RadiusKM
	// (great-circle distance on a sphere of EarthRadiusKM) when it is set,
	// otherwise at the same point within CoordinateTolerance degrees.
	// Proxies without coordinates never match a point filter.
	Latitude  *float64 `json:"latitude,omitempty"`
	Longitude *float64 `json:"longitude,omitempty"`
	RadiusKM  *float64 `json:"radius_km,omitempty"`

	AllOf  []Filters `json:"all_of,omitempty"`
	AnyOf  []Filters `json:"any_of,omitempty"`
	NoneOf []Filters `json:"none_of,omitempty"`

	// Predicate, when set, must also accept the proxy. Only in-process
	// stores can run it; others return ErrUnsupported.
	Predicate func(*Proxy) bool `json:"-"`
}

// IsZero reports whether f filters nothing.
func (f *Filters) IsZero() bool {
	return f == nil || (f.Source == "" && f.Country == "" && f.City == "" && f.ISP == "" &&
		f.ASN == nil && f.Protocol == "" && len(f.Tags) == 0 && f.Latitude == nil &&
		f.Longitude == nil && f.RadiusKM == nil && len(f.AllOf) == 0 && len(f.AnyOf) == 0 &&
		len(f.NoneOf) == 0 && f.Predicate == nil)
}

// HasPredicate reports whether f or any nested filter carries a Predicate.
func (f *Filters) HasPredicate() bool {
	if f == nil {
		return false
	}
	if f.Predicate != nil {
		return true
	}
	for _, group := range [][]Filters{f.AllOf, f.AnyOf, f.NoneOf} {
		for i := range group {
			if group[i].HasPredicate() {
				return true
			}
		}
	}
	return false
}

// Normalize canonicalises f in place the same way [Proxy.Normalize] does
// (upper-case country, lower-case protocol), including nested filters.
func (f *Filters) Normalize() {
	if f == nil {
		return
	}
	f.Country = strings.ToUpper(strings.TrimSpace(f.Country))
	f.City = strings.TrimSpace(f.City)
	f.Source = strings.TrimSpace(f.Source)
	f.ISP = strings.TrimSpace(f.ISP)
	f.Protocol = Protocol(strings.ToLower(strings.TrimSpace(string(f.Protocol))))
	for _, group := range [][]Filters{f.AllOf, f.AnyOf, f.NoneOf} {
		for i := range group {
			group[i].Normalize()
		}
	}
}

// NormalizedClone returns a normalized copy of f that shares no nested
// groups with it, so normalizing never changes the caller's filters. Tags
// are shared: nothing modifies them. A nil f gives nil.
func (f *Filters) NormalizedClone() *Filters {
	if f == nil {
		return nil
	}
	c := *f
	for _, g := range []*[]Filters{&c.AllOf, &c.AnyOf, &c.NoneOf} {
		if *g != nil {
			group := make([]Filters, len(*g))
			for i := range *g {
				group[i] = *(*g)[i].NormalizedClone()
			}
			*g = group
		}
	}
	c.Normalize()
	return &c
}

// Limits on one filter: every term is evaluated against every candidate
// while a store chooses (under the memory store's lock, inside Redis's
// script), so hostile input must not be able to stall other consumers or
// exhaust the stack.
const (
	maxFilterDepth = 8
	// MaxFilterTerms caps the groups (the filter itself, AllOf, AnyOf and
	// NoneOf entries, at any depth) plus tags of one filter.
	MaxFilterTerms = 256
)

// Validate reports the first invalid field as an ErrInvalidArgument.
func (f *Filters) Validate() error {
	if n := f.terms(); n > MaxFilterTerms {
		return fmt.Errorf("%w: filters have %d groups and tags; at most %d are allowed", ErrInvalidArgument, n, MaxFilterTerms)
	}
	return f.validate(0)
}

// terms counts f's groups (f included) and tags, stopping early once past
// the limit so a huge filter costs no more than a legal one.
func (f *Filters) terms() int {
	if f == nil {
		return 0
	}
	n := 1 + len(f.Tags)
	for _, group := range [][]Filters{f.AllOf, f.AnyOf, f.NoneOf} {
		for i := range group {
			if n > MaxFilterTerms {
				return n
			}
			n += group[i].terms()
		}
	}
	return n
}

func (f *Filters) validate(depth int) error {
	if f == nil {
		return nil
	}
	if depth > maxFilterDepth {
		return fmt.Errorf("%w: filters nested deeper than %d levels", ErrInvalidArgument, maxFilterDepth)
	}
	if f.Protocol != "" && !f.Protocol.Valid() {
		return fmt.Errorf("%w: filter: unknown protocol %q", ErrInvalidArgument, f.Protocol)
	}
	if (f.Latitude == nil) != (f.Longitude == nil) {
		return fmt.Errorf("%w: filter: latitude and longitude must be given together", ErrInvalidArgument)
	}
	if f.RadiusKM != nil {
		if f.Latitude == nil {
			return fmt.Errorf("%w: filter: radius_km needs latitude and longitude", ErrInvalidArgument)
		}
		if !(*f.RadiusKM >= 0) || math.IsInf(*f.RadiusKM, 0) {
			return fmt.Errorf("%w: filter: radius_km must be a finite number >= 0", ErrInvalidArgument)
		}
	}
	if f.Latitude != nil {
		if err := validateLatLon(*f.Latitude, *f.Longitude); err != nil {
			return fmt.Errorf("filter: %w", err)
		}
	}
	if f.ASN != nil && *f.ASN < 0 {
		return fmt.Errorf("%w: filter: asn is negative", ErrInvalidArgument)
	}
	for _, group := range [][]Filters{f.AllOf, f.AnyOf, f.NoneOf} {
		for i := range group {
			if err := group[i].validate(depth + 1); err != nil {
				return err
			}
		}
	}
	return nil
}

// Match reports whether p satisfies f. It is the reference semantics every
// storage driver implements; a nil f matches every proxy. f should be
// normalized.
func (f *Filters) Match(p *Proxy) bool {
	if f == nil {
		return true
	}
	if f.Source != "" && p.Source != f.Source ||
		f.Country != "" && p.Country != f.Country ||
		f.City != "" && p.City != f.City ||
		f.ISP != "" && p.ISP != f.ISP ||
		f.Protocol != "" && p.Protocol != f.Protocol {
		return false
	}
	if f.ASN != nil && (p.ASN == nil || *p.ASN != *f.ASN) {
		return false
	}
	for _, t := range f.Tags {
		if !slices.Contains(p.Tags, t) {
			return false
		}
	}
	if f.Latitude != nil && f.Longitude != nil {
		if p.Latitude == nil || p.Longitude == nil {
			return false
		}
		if f.RadiusKM != nil {
			if HaversineKM(*f.Latitude, *f.Longitude, *p.Latitude, *p.Longitude) > *f.RadiusKM {
				return false
			}
		} else if math.Abs(*p.Latitude-*f.Latitude) > CoordinateTolerance ||
			math.Abs(*p.Longitude-*f.Longitude) > CoordinateTolerance {
			return false
		}
	}
	for i := range f.AllOf {
		if !f.AllOf[i].Match(p) {
			return false
		}
	}
	if len(f.AnyOf) > 0 {
		if !slices.ContainsFunc(f.AnyOf, func(g Filters) bool { return g.Match(p) }) {
			return false
		}
	}
	for i := range f.NoneOf {
		if f.NoneOf[i].Match(p) {
			return false
		}
	}
	return f.Predicate == nil || f.Predicate(p)
}

// HaversineKM returns the great-circle distance in kilometres between two
// points given in degrees, on a sphere of EarthRadiusKM.
func HaversineKM(lat1, lon1, lat2, lon2 float64) float64 {
	const rad = math.Pi / 180
	dLat := (lat2 - lat1) * rad
	dLon := (lon2 - lon1) * rad
	a := math.Sin(dLat/2)*math.Sin(dLat/2) +
		math.Cos(lat1*rad)*math.Cos(lat2*rad)*math.Sin(dLon/2)*math.Sin(dLon/2)
	return 2 * EarthRadiusKM * math.Asin(math.Min(1, math.Sqrt(a)))
}
