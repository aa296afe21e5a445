package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/mongotest"
	"github.com/pharox/pharox/server/servertest"
	"github.com/pharox/pharox/storage/mongo"
	"github.com/pharox/pharox/storage/open"
)

// TestContractMongo runs the HTTP contract over MongoDB (PHAROX_TEST_MONGO_URL,
// or a FerretDB the tests start), each store in its own database, dropped
// afterwards.
func TestContractMongo(t *testing.T) {
	mongotest.URL(t)
	servertest.Run(t, func(t *testing.T) pharox.Storage {
		return backendOpenMongo(t, mongotest.DatabaseURL(t, backendNamespace("pxsrv_")), true)
	})
}

// TestMultiProcessMongo checks that two service processes sharing one
// MongoDB database never over-lease under concurrent load through HTTP.
func TestMultiProcessMongo(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	u := mongotest.DatabaseURL(t, backendNamespace("pxsrvmp_"))
	s := backendOpenMongo(t, u, true)
	mpRun(t, s, u)
}

// backendOpenMongo opens a store on the database u names through
// open.Open; the store is closed, and with drop its database dropped, when
// t ends.
func backendOpenMongo(t testing.TB, u string, drop bool) pharox.Storage {
	t.Helper()
	s, err := open.Open(backendOpenContext(t), u)
	if err != nil {
		t.Fatalf("open %s: %v", open.Redact(u), err)
	}
	t.Cleanup(func() {
		if drop {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if err := s.(*mongo.Store).Database().Drop(ctx); err != nil {
				t.Errorf("drop database of %s: %v", open.Redact(u), err)
			}
			cancel()
		}
		_ = s.Close()
	})
	return s
}
