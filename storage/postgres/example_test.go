package postgres_test

import (
	"context"
	"log"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/postgres"
)

// A service sharing its proxy inventory with other processes: migrate at
// start, then lease through a Manager.
func ExampleNew() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if err := postgres.Migrate(ctx, pool, postgres.WithSchema("pharox")); err != nil {
		log.Fatal(err)
	}
	store, err := postgres.New(ctx, pool, postgres.WithSchema("pharox"))
	if err != nil {
		log.Fatal(err)
	}
	m := pharox.NewManager(store)
	err = m.WithLease(ctx, "residential", &pharox.AcquireOptions{Filters: &pharox.Filters{Country: "DE"}},
		func(ctx context.Context, l *pharox.Lease) error {
			log.Printf("using %s", l.Proxy) // String() masks the password
			return nil
		})
	if err != nil {
		log.Print(err)
	}
}
