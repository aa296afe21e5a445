package storagetest

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

var filterTests = []subtest{
	{name: "Fields", fn: testFilterFields},
	{name: "Geo", fn: testFilterGeo},
	{name: "Combinators", fn: testFilterCombinators},
	{name: "Predicate", fn: testFilterPredicate},
}

// Real places, so radius filters are checked against known distances.
var (
	buenosAires = [2]float64{-34.6037, -58.3816}
	laPlata     = [2]float64{-34.9214, -57.9545}
	montevideo  = [2]float64{-34.9011, -56.1645}
	madrid      = [2]float64{40.4168, -3.7038}
)

// filterCase is one filter and, as an extra guard against a wrong oracle,
// the labels of the proxies it must select.
type filterCase struct {
	name    string
	filters pharox.Filters
	want    []string
}

// filterPool stores labelled exclusive proxies and returns them by label.
func (f *fixture) filterPool(name string, ps map[string]pharox.Proxy) (map[string]*pharox.Proxy, names) {
	f.t.Helper()
	pool := f.pool(name)
	labels := slices.Sorted(mapKeys(ps))
	in := make([]pharox.Proxy, len(labels))
	for i, label := range labels {
		p := ps[label]
		base := f.proxy(pool)
		p.PoolID, p.Host, p.Port = pool.ID, base.Host, base.Port
		if p.Protocol == "" {
			p.Protocol = pharox.ProtocolHTTP
		}
		if p.MaxConcurrency == nil {
			p.MaxConcurrency = ptrutil.Ptr(1)
		}
		in[i] = p
	}
	out := f.add(in...)
	byLabel := map[string]*pharox.Proxy{}
	nm := names{}
	for i, label := range labels {
		byLabel[label] = out[i]
		nm[out[i].ID] = label
	}
	return byLabel, nm
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// checkFilter leases with c.filters until nothing is left and compares the
// proxies it got with the reference semantics (Filters.Match) and with
// c.want. It then releases what it took.
func (f *fixture) checkFilter(pool string, proxies map[string]*pharox.Proxy, nm names, c filterCase) {
	f.t.Helper()
	t := f.t
	var oracle []string
	for label, p := range proxies {
		if c.filters.Match(p) {
			oracle = append(oracle, label)
		}
	}
	slices.Sort(oracle)
	want := slices.Sorted(slices.Values(c.want))
	if !slices.Equal(oracle, want) {
		t.Fatalf("filter %s: test bug: Filters.Match selects %v, the case says %v", c.name, oracle, want)
	}

	filters := c.filters
	if len(want) > 0 {
		p, err := f.s.FindAvailableProxy(f.ctx, pool, &filters, pharox.FirstAvailable)
		if err != nil {
			t.Fatalf("filter %s: FindAvailableProxy: %v", c.name, err)
		}
		if !slices.Contains(want, nm.of(p.ID)) {
			t.Fatalf("filter %s: FindAvailableProxy = %s, want one of %v", c.name, nm.of(p.ID), want)
		}
	} else if p, err := f.s.FindAvailableProxy(f.ctx, pool, &filters, pharox.FirstAvailable); !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("filter %s: FindAvailableProxy = %v, %v; want ErrNoProxyAvailable", c.name, p, err)
	}

	req := f.req(pool)
	req.Filters = &filters
	leases, err := f.drain(req, len(proxies)+1)
	if err != nil {
		t.Fatalf("filter %s: AcquireLease: %v", c.name, err)
	}
	var got []string
	for _, l := range leases {
		got = append(got, nm.of(l.ProxyID))
	}
	slices.Sort(got)
	f.releaseAll(leases)
	if !slices.Equal(got, want) {
		t.Fatalf("filter %s: leased %v, want exactly %v", c.name, got, want)
	}
}

func testFilterFields(t *testing.T, f *fixture) {
	proxies, nm := f.filterPool("fields", map[string]pharox.Proxy{
		"ar-a": {Country: "AR", City: "Buenos Aires", Source: "vendor-a", ISP: "Telecom", ASN: ptrutil.Ptr(7303),
			Tags: []string{"residential", "fast"}},
		"ar-b": {Country: "AR", City: "Cordoba", Source: "vendor-b", ISP: "Claro", ASN: ptrutil.Ptr(0),
			Protocol: pharox.ProtocolSOCKS5, Tags: []string{"residential"}},
		"uy": {Country: "UY", City: "Montevideo", Source: "vendor-a", ISP: "Antel", ASN: ptrutil.Ptr(6057),
			Protocol: pharox.ProtocolSOCKS5, Tags: []string{"fast", "datacenter"}},
		"de": {Country: "DE", City: "Berlin", Source: "vendor-b", ISP: "Telekom",
			Protocol: pharox.ProtocolHTTPS},
		"bare": {},
	})
	cases := []filterCase{
		{"none", pharox.Filters{}, []string{"ar-a", "ar-b", "bare", "de", "uy"}},
		{"country", pharox.Filters{Country: "AR"}, []string{"ar-a", "ar-b"}},
		{"country none", pharox.Filters{Country: "FR"}, nil},
		{"city", pharox.Filters{City: "Montevideo"}, []string{"uy"}},
		{"source", pharox.Filters{Source: "vendor-b"}, []string{"ar-b", "de"}},
		{"isp", pharox.Filters{ISP: "Telecom"}, []string{"ar-a"}},
		{"asn", pharox.Filters{ASN: ptrutil.Ptr(7303)}, []string{"ar-a"}},
		{"asn zero is a value", pharox.Filters{ASN: ptrutil.Ptr(0)}, []string{"ar-b"}},
		{"protocol", pharox.Filters{Protocol: pharox.ProtocolSOCKS5}, []string{"ar-b", "uy"}},
		{"protocol http", pharox.Filters{Protocol: pharox.ProtocolHTTP}, []string{"ar-a", "bare"}},
		{"one tag", pharox.Filters{Tags: []string{"fast"}}, []string{"ar-a", "uy"}},
		{"all tags required", pharox.Filters{Tags: []string{"fast", "residential"}}, []string{"ar-a"}},
		{"unknown tag", pharox.Filters{Tags: []string{"fast", "mobile"}}, nil},
		{"fields AND", pharox.Filters{Country: "AR", Source: "vendor-a"}, []string{"ar-a"}},
		{"fields AND none", pharox.Filters{Country: "UY", Protocol: pharox.ProtocolHTTP}, nil},
	}
	for _, c := range cases {
		f.checkFilter("fields", proxies, nm, c)
	}
}

func testFilterGeo(t *testing.T, f *fixture) {
	at := func(p [2]float64) pharox.Proxy {
		return pharox.Proxy{Latitude: ptrutil.Ptr(p[0]), Longitude: ptrutil.Ptr(p[1])}
	}
	near := buenosAires
	near[0] += 5e-7 // within CoordinateTolerance
	off := buenosAires
	off[1] += 2e-5 // outside CoordinateTolerance, still in the city
	proxies, nm := f.filterPool("geo", map[string]pharox.Proxy{
		"ba":       at(buenosAires),
		"ba-near":  at(near),
		"ba-off":   at(off),
		"la-plata": at(laPlata),
		"mvd":      at(montevideo),
		"madrid":   at(madrid),
		"nowhere":  {},
	})

	// The distances the radii below are chosen around, from the oracle.
	dist := func(to [2]float64) float64 { return pharox.HaversineKM(buenosAires[0], buenosAires[1], to[0], to[1]) }
	dLP, dMVD, dMAD := dist(laPlata), dist(montevideo), dist(madrid)
	if !(dLP > 40 && dLP < 60 && dMVD > 150 && dMVD < 250 && dMAD > 9000 && dMAD < 11000) {
		t.Fatalf("test bug: distances from Buenos Aires: La Plata %.1f km, Montevideo %.1f km, Madrid %.1f km", dLP, dMVD, dMAD)
	}
	point := func(p [2]float64, radius *float64) pharox.Filters {
		return pharox.Filters{Latitude: ptrutil.Ptr(p[0]), Longitude: ptrutil.Ptr(p[1]), RadiusKM: radius}
	}
	cases := []filterCase{
		{"exact point", point(buenosAires, nil), []string{"ba", "ba-near"}},
		{"exact point elsewhere", point(montevideo, nil), []string{"mvd"}},
		{"exact point no proxy", point([2]float64{0, 0}, nil), nil},
		{"radius 1km", point(buenosAires, ptrutil.Ptr(1.0)), []string{"ba", "ba-near", "ba-off"}},
		{"radius just past La Plata", point(buenosAires, ptrutil.Ptr(dLP+1)), []string{"ba", "ba-near", "ba-off", "la-plata"}},
		{"radius just short of La Plata", point(buenosAires, ptrutil.Ptr(dLP-1)), []string{"ba", "ba-near", "ba-off"}},
		{"radius includes Montevideo", point(buenosAires, ptrutil.Ptr(dMVD+5)), []string{"ba", "ba-near", "ba-off", "la-plata", "mvd"}},
		{"radius excludes Montevideo", point(buenosAires, ptrutil.Ptr(dMVD-5)), []string{"ba", "ba-near", "ba-off", "la-plata"}},
		{"radius around Madrid", point(madrid, ptrutil.Ptr(500.0)), []string{"madrid"}},
		{"radius whole earth", point(madrid, ptrutil.Ptr(25000.0)), []string{"ba", "ba-near", "ba-off", "la-plata", "madrid", "mvd"}},
		{"radius zero", point(montevideo, ptrutil.Ptr(0.0)), []string{"mvd"}},
	}
	for _, c := range cases {
		f.checkFilter("geo", proxies, nm, c)
	}
}

func testFilterCombinators(t *testing.T, f *fixture) {
	proxies, nm := f.filterPool("combo", map[string]pharox.Proxy{
		"ar-res":  {Country: "AR", Tags: []string{"residential"}, ASN: ptrutil.Ptr(7303)},
		"ar-dc":   {Country: "AR", Tags: []string{"datacenter"}, Protocol: pharox.ProtocolSOCKS5},
		"uy-res":  {Country: "UY", Tags: []string{"residential"}, ASN: ptrutil.Ptr(6057)},
		"br-dc":   {Country: "BR", Tags: []string{"datacenter"}},
		"de-none": {Country: "DE"},
	})
	cases := []filterCase{
		{"any of countries", pharox.Filters{AnyOf: []pharox.Filters{{Country: "AR"}, {Country: "UY"}}},
			[]string{"ar-dc", "ar-res", "uy-res"}},
		{"all of", pharox.Filters{AllOf: []pharox.Filters{{Country: "AR"}, {Tags: []string{"datacenter"}}}},
			[]string{"ar-dc"}},
		{"none of", pharox.Filters{NoneOf: []pharox.Filters{{Country: "AR"}, {Tags: []string{"datacenter"}}}},
			[]string{"de-none", "uy-res"}},
		{"field and any of", pharox.Filters{Tags: []string{"residential"}, AnyOf: []pharox.Filters{{Country: "UY"}, {Country: "BR"}}},
			[]string{"uy-res"}},
		{"any of and none of", pharox.Filters{
			AnyOf:  []pharox.Filters{{Tags: []string{"datacenter"}}, {Country: "UY"}},
			NoneOf: []pharox.Filters{{Protocol: pharox.ProtocolSOCKS5}},
		}, []string{"br-dc", "uy-res"}},
		{"nested", pharox.Filters{AnyOf: []pharox.Filters{
			{AllOf: []pharox.Filters{{Country: "AR"}, {NoneOf: []pharox.Filters{{Tags: []string{"datacenter"}}}}}},
			{ASN: ptrutil.Ptr(6057)},
		}}, []string{"ar-res", "uy-res"}},
		{"any of nothing matches", pharox.Filters{AnyOf: []pharox.Filters{{Country: "FR"}, {Country: "IT"}}}, nil},
		{"none of everything", pharox.Filters{NoneOf: []pharox.Filters{{}}}, nil},
	}
	for _, c := range cases {
		f.checkFilter("combo", proxies, nm, c)
	}
}

// testFilterPredicate checks the predicate behaviour the store declares:
// it runs the predicate at any depth, or it refuses with ErrUnsupported
// and takes no slot. Silently ignoring it is always wrong.
func testFilterPredicate(t *testing.T, f *fixture) {
	proxies, nm := f.filterPool("pred", map[string]pharox.Proxy{
		"a": {Country: "AR"}, "b": {Country: "AR"}, "c": {Country: "UY"}, "d": {Country: "DE"},
	})
	chosen := map[uuid.UUID]bool{proxies["b"].ID: true, proxies["d"].ID: true}
	pred := func(p *pharox.Proxy) bool { return chosen[p.ID] }

	top := pharox.Filters{Predicate: pred}
	support := f.cfg.needPredicates(t)
	_, err := f.s.AcquireLease(f.ctx, func() pharox.AcquireRequest { r := f.req("pred"); r.Filters = &top; return r }())
	if support == PredicatesRefused {
		wantErr(t, "AcquireLease with a predicate on a store that declares it refuses predicates", err, pharox.ErrUnsupported)
		// Refusal must be consistent and take no slot.
		nested := pharox.Filters{AnyOf: []pharox.Filters{{Predicate: pred}}}
		r := f.req("pred")
		r.Filters = &nested
		_, err := f.s.AcquireLease(f.ctx, r)
		wantErr(t, "AcquireLease with a nested predicate on a store without predicates", err, pharox.ErrUnsupported)
		_, err = f.s.FindAvailableProxy(f.ctx, "pred", &top, pharox.FirstAvailable)
		wantErr(t, "FindAvailableProxy with a predicate on a store without predicates", err, pharox.ErrUnsupported)
		for label, p := range proxies {
			if got := f.getProxy(p.ID).CurrentLeases; got != 0 {
				t.Fatalf("refused predicate acquisition left proxy %s with %d leases", label, got)
			}
		}
		return
	}
	if err != nil {
		t.Fatalf("AcquireLease with a predicate: %v (the store declares that it runs predicates)", err)
	}
	// The store runs predicates: release everything and check properly.
	for _, l := range f.leases(pharox.LeaseQuery{Status: pharox.LeaseActive}) {
		f.release(l.ID)
	}
	cases := []filterCase{
		{"predicate", pharox.Filters{Predicate: pred}, []string{"b", "d"}},
		{"predicate and field", pharox.Filters{Country: "AR", Predicate: pred}, []string{"b"}},
		{"predicate in any of", pharox.Filters{AnyOf: []pharox.Filters{{Predicate: pred}, {Country: "UY"}}}, []string{"b", "c", "d"}},
		{"predicate in none of", pharox.Filters{NoneOf: []pharox.Filters{{Predicate: pred}}}, []string{"a", "c"}},
		{"predicate rejects all", pharox.Filters{Predicate: func(*pharox.Proxy) bool { return false }}, nil},
	}
	for _, c := range cases {
		f.checkFilter("pred", proxies, nm, c)
	}
	// The predicate gets the proxy's data.
	byCountry := pharox.Filters{Predicate: func(p *pharox.Proxy) bool { return strings.HasPrefix(p.Country, "U") }}
	f.checkFilter("pred", proxies, nm, filterCase{"predicate reads fields", byCountry, []string{"c"}})
}
