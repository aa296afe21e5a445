package mongo

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/pharox/pharox"
)

var _ pharox.LeaseVerdictStore = (*Store)(nil)

// ClaimLeaseVerdict marks the lease's verdict as given with one insert into
// the verdicts collection, keyed by the lease id: of concurrent claims,
// from any process, exactly one insert succeeds and reports true.
func (s *Store) ClaimLeaseVerdict(ctx context.Context, leaseID uuid.UUID) (bool, error) {
	id := idString(leaseID)
	d, err := s.findLease(ctx, id)
	if err != nil {
		return false, fmt.Errorf("mongo: claim lease verdict %s: %w", leaseID, err)
	}
	_, err = s.verdicts.InsertOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "pool", Value: d.Pool}, {Key: "proxy", Value: d.Proxy}})
	if mongo.IsDuplicateKeyError(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("mongo: claim lease verdict %s: %w", leaseID, wrapErr(err))
	}
	return true, nil
}
