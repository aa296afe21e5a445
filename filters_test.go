package pharox

import (
	"errors"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox/internal/ptrutil"
)

func TestHaversineKnownDistances(t *testing.T) {
	// Buenos Aires to Montevideo is about 205 km; to Madrid about 10,040 km.
	cases := []struct {
		lat1, lon1, lat2, lon2, want, tol float64
	}{
		{-34.6037, -58.3816, -34.9011, -56.1645, 205, 5},
		{-34.6037, -58.3816, 40.4168, -3.7038, 10040, 30},
		{0, 0, 0, 0, 0, 1e-9},
		{0, 0, 0, 180, math.Pi * EarthRadiusKM, 1e-6},
	}
	for _, c := range cases {
		got := HaversineKM(c.lat1, c.lon1, c.lat2, c.lon2)
		if math.Abs(got-c.want) > c.tol {
			t.Errorf("HaversineKM(%v,%v,%v,%v) = %v, want %v±%v", c.lat1, c.lon1, c.lat2, c.lon2, got, c.want, c.tol)
		}
	}
}

func TestFiltersMatch(t *testing.T) {
	p := sampleProxy()
	p.Source, p.City, p.ISP = "oxylabs", "Buenos Aires", "Telecom"
	cases := []struct {
		name string
		f    *Filters
		want bool
	}{
		{"nil", nil, true},
		{"country", &Filters{Country: "AR"}, true},
		{"other country", &Filters{Country: "UY"}, false},
		{"source+city", &Filters{Source: "oxylabs", City: "Buenos Aires"}, true},
		{"isp", &Filters{ISP: "Other"}, false},
		{"asn 0 is a value", &Filters{ASN: ptrutil.Ptr(0)}, true},
		{"asn mismatch", &Filters{ASN: ptrutil.Ptr(7)}, false},
		{"protocol", &Filters{Protocol: ProtocolSOCKS5}, false},
		{"tags all present", &Filters{Tags: []string{"b", "a"}}, true},
		{"tag missing", &Filters{Tags: []string{"a", "c"}}, false},
		{"exact point", &Filters{Latitude: ptrutil.Ptr(-34.6 + 5e-7), Longitude: ptrutil.Ptr(-58.4)}, true},
		{"point off", &Filters{Latitude: ptrutil.Ptr(-34.6 + 5e-6), Longitude: ptrutil.Ptr(-58.4)}, false},
		{"radius inside", &Filters{Latitude: ptrutil.Ptr(-34.9011), Longitude: ptrutil.Ptr(-56.1645), RadiusKM: ptrutil.Ptr(250.0)}, true},
		{"radius outside", &Filters{Latitude: ptrutil.Ptr(-34.9011), Longitude: ptrutil.Ptr(-56.1645), RadiusKM: ptrutil.Ptr(150.0)}, false},
		{"all of", &Filters{AllOf: []Filters{{Country: "AR"}, {Source: "oxylabs"}}}, true},
		{"all of fails", &Filters{AllOf: []Filters{{Country: "AR"}, {Source: "x"}}}, false},
		{"any of", &Filters{AnyOf: []Filters{{Country: "UY"}, {Country: "AR"}}}, true},
		{"any of none", &Filters{AnyOf: []Filters{{Country: "UY"}, {Country: "BR"}}}, false},
		{"none of", &Filters{NoneOf: []Filters{{Country: "UY"}}}, true},
		{"none of hit", &Filters{NoneOf: []Filters{{Country: "AR"}}}, false},
		{"predicate", &Filters{Predicate: func(p *Proxy) bool { return p.Port == 8080 }}, true},
		{"predicate rejects", &Filters{Predicate: func(p *Proxy) bool { return false }}, false},
	}
	for _, c := range cases {
		if got := c.f.Match(p); got != c.want {
			t.Errorf("%s: Match = %v, want %v", c.name, got, c.want)
		}
	}
	noGeo := &Proxy{Status: StatusActive}
	if (&Filters{Latitude: ptrutil.Ptr(1.0), Longitude: ptrutil.Ptr(1.0), RadiusKM: ptrutil.Ptr(1e6)}).Match(noGeo) {
		t.Error("a proxy without coordinates matched a point filter")
	}
}

func TestFiltersValidate(t *testing.T) {
	bad := []*Filters{
		{Protocol: "ftp"},
		{Latitude: ptrutil.Ptr(1.0)},
		{RadiusKM: ptrutil.Ptr(5.0)},
		{Latitude: ptrutil.Ptr(1.0), Longitude: ptrutil.Ptr(1.0), RadiusKM: ptrutil.Ptr(-1.0)},
		{Latitude: ptrutil.Ptr(1.0), Longitude: ptrutil.Ptr(1.0), RadiusKM: ptrutil.Ptr(math.NaN())},
		{Latitude: ptrutil.Ptr(100.0), Longitude: ptrutil.Ptr(1.0)},
		{ASN: ptrutil.Ptr(-1)},
		{AnyOf: []Filters{{Protocol: "nope"}}},
	}
	for _, f := range bad {
		if err := f.Validate(); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%+v: got %v", f, err)
		}
	}
	deep := Filters{}
	for range maxFilterDepth + 2 {
		deep = Filters{AllOf: []Filters{deep}}
	}
	if err := deep.Validate(); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("deep nesting accepted: %v", err)
	}
	if !(&Filters{}).IsZero() || (&Filters{Country: "AR"}).IsZero() {
		t.Error("IsZero wrong")
	}
	if !(&Filters{NoneOf: []Filters{{Predicate: func(*Proxy) bool { return true }}}}).HasPredicate() {
		t.Error("nested predicate not found")
	}
	f := &Filters{Country: " ar ", Protocol: "HTTP", AnyOf: []Filters{{Country: "uy"}}}
	f.Normalize()
	if f.Country != "AR" || f.Protocol != ProtocolHTTP || f.AnyOf[0].Country != "UY" {
		t.Errorf("normalize: %+v", f)
	}
}

func TestStrategyOrderings(t *testing.T) {
	t1 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	t2 := t1.Add(time.Hour)
	ids := []uuid.UUID{uuid.MustParse("00000000-0000-0000-0000-000000000001"), uuid.MustParse("00000000-0000-0000-0000-000000000002"), uuid.MustParse("00000000-0000-0000-0000-000000000003"), uuid.MustParse("00000000-0000-0000-0000-000000000004")}
	ps := []*Proxy{
		{ID: ids[3], Status: StatusSlow, CheckedAt: &t2, CurrentLeases: 0},
		{ID: ids[2], Status: StatusActive, CurrentLeases: 1},
		{ID: ids[1], Status: StatusActive, CheckedAt: &t1, CurrentLeases: 3},
		{ID: ids[0], Status: StatusActive, CheckedAt: &t2, CurrentLeases: 2},
	}
	order := func(cmp func(a, b *Proxy) int) []uuid.UUID {
		s := slices.Clone(ps)
		slices.SortFunc(s, cmp)
		var out []uuid.UUID
		for _, p := range s {
			out = append(out, p.ID)
		}
		return out
	}
	if got, want := order(CompareFirstAvailable), []uuid.UUID{ids[0], ids[1], ids[2], ids[3]}; !slices.Equal(got, want) {
		t.Errorf("first_available order %v, want %v", got, want)
	}
	if got, want := order(CompareLeastUsed), []uuid.UUID{ids[2], ids[0], ids[1], ids[3]}; !slices.Equal(got, want) {
		t.Errorf("least_used order %v, want %v", got, want)
	}
}

func TestNormalizedCloneLeavesOriginalAlone(t *testing.T) {
	f := &Filters{Country: "ar", AnyOf: []Filters{{Country: "uy", NoneOf: []Filters{{Protocol: "HTTP"}}}}}
	c := f.NormalizedClone()
	if c.Country != "AR" || c.AnyOf[0].Country != "UY" || c.AnyOf[0].NoneOf[0].Protocol != ProtocolHTTP {
		t.Fatalf("clone not normalized: %+v", c)
	}
	if f.Country != "ar" || f.AnyOf[0].Country != "uy" || f.AnyOf[0].NoneOf[0].Protocol != "HTTP" {
		t.Fatalf("original changed: %+v", f)
	}
	if (*Filters)(nil).NormalizedClone() != nil {
		t.Fatal("nil clone")
	}
}

func TestFiltersValidateCapsTerms(t *testing.T) {
	wide := &Filters{AnyOf: make([]Filters, MaxFilterTerms)}
	if err := wide.Validate(); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("%d groups accepted: %v", MaxFilterTerms+1, err)
	}
	tags := &Filters{Tags: make([]string, MaxFilterTerms)}
	if err := tags.Validate(); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("%d tags accepted: %v", MaxFilterTerms, err)
	}
	ok := &Filters{AnyOf: make([]Filters, MaxFilterTerms-1)}
	if err := ok.Validate(); err != nil {
		t.Fatalf("a filter at the limit was refused: %v", err)
	}
}
