package pharox_test

import (
	"context"
	"fmt"
	"log"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
)

// Filters nest: here a proxy qualifies within 100 km of Buenos Aires or
// anywhere in Uruguay, unless it is tagged datacenter.
func ExampleFilters() {
	ctx := context.Background()
	store, err := memory.New()
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	pool, _ := pharox.BootstrapPool(ctx, store, "latam", "")
	type place struct {
		city, country string
		lat, lon      float64
		tags          []string
	}
	for i, p := range []place{
		{"Buenos Aires", "AR", -34.6037, -58.3816, nil},
		{"La Plata", "AR", -34.9214, -57.9545, []string{"datacenter"}},
		{"Cordoba", "AR", -31.4201, -64.1888, nil},
		{"Montevideo", "UY", -34.9011, -56.1645, nil},
		{"Madrid", "ES", 40.4168, -3.7038, nil},
	} {
		pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{
			Host: fmt.Sprintf("10.0.0.%d", i+1), Port: 3128, Protocol: pharox.ProtocolHTTP,
			City: p.city, Country: p.country, Latitude: &p.lat, Longitude: &p.lon, Tags: p.tags,
		})
	}

	lat, lon, radius := -34.6037, -58.3816, 100.0
	filters := &pharox.Filters{
		AnyOf: []pharox.Filters{
			{Latitude: &lat, Longitude: &lon, RadiusKM: &radius},
			{Country: "UY"},
		},
		NoneOf: []pharox.Filters{{Tags: []string{"datacenter"}}},
	}
	proxies, _ := store.ListProxies(ctx, pool.ID)
	for _, p := range proxies {
		fmt.Printf("%-12s %v\n", p.City, filters.Match(p))
	}

	manager := pharox.NewManager(store)
	for range 2 {
		lease, err := manager.Acquire(ctx, "latam", &pharox.AcquireOptions{Filters: filters, Strategy: pharox.LeastUsed})
		if err != nil {
			fmt.Println("acquire:", err)
			return
		}
		fmt.Println("leased in", lease.Proxy.City)
	}
	// Unordered output:
	// Buenos Aires true
	// La Plata     false
	// Cordoba      false
	// Montevideo   true
	// Madrid       false
	// leased in Buenos Aires
	// leased in Montevideo
}
