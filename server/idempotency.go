package server

import (
	"errors"
	"net/http"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// IdempotencyKeyHeader names the header that makes POST /v1/leases/ safe
// to repeat: acquisitions by the same consumer with the same key get the
// same lease, as it is now (active or ended), and never a second one. A
// key is remembered as long as its lease record is kept
// (Options.LeaseRetention).
const IdempotencyKeyHeader = "Idempotency-Key"

// maxIdempotencyKey bounds the header's length.
const maxIdempotencyKey = 255

// idempotencySpace is the namespace of the name-based (version 5) lease
// ids made from idempotency keys. Fixed forever: changing it would forget
// every key in flight.
var idempotencySpace = uuid.MustParse("6f1c3a52-8d0e-4b7a-9f65-3e2d1c0b9a87")

// idempotentLeaseID returns the lease id an acquisition with this request's
// Idempotency-Key gets: a version 5 UUID of the consumer and the key, so
// that a repeated request names the same lease and the store returns it
// instead of taking a second slot. uuid.Nil when the header is absent.
func idempotentLeaseID(r *http.Request, consumer string) (uuid.UUID, error) {
	key := r.Header.Get(IdempotencyKeyHeader)
	if key == "" {
		return uuid.Nil, nil
	}
	if len(key) > maxIdempotencyKey {
		return uuid.Nil, unprocessable("%s header is %d bytes long; at most %d are allowed", IdempotencyKeyHeader, len(key), maxIdempotencyKey)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x21 || c > 0x7e {
			return uuid.Nil, unprocessable("%s header must be printable ASCII without spaces", IdempotencyKeyHeader)
		}
	}
	if consumer == "" {
		// The Manager acquires as the default consumer then: one key means
		// one lease whether or not the client named that consumer.
		consumer = pharox.DefaultConsumerName
	}
	// The NUL cannot occur in a consumer name or a key: the pair is
	// unambiguous.
	return uuid.NewSHA1(idempotencySpace, []byte(consumer+"\x00"+key)), nil
}

// idempotencyConflict turns the store's answer to a key reused for a
// different acquisition (another pool) into a clear client error.
func idempotencyConflict(r *http.Request, err error) error {
	if errors.Is(err, pharox.ErrAlreadyExists) && r.Header.Get(IdempotencyKeyHeader) != "" {
		return unprocessable("%s was already used by this consumer to acquire from another pool; use a new key for a new acquisition", IdempotencyKeyHeader)
	}
	return err
}

// echoIdempotencyKey repeats an acquisition's Idempotency-Key on its
// answer, whatever the answer: it tells a client that this server honours
// keys, so that repeating the acquisition after a 503 or a lost answer
// cannot take a second lease.
func echoIdempotencyKey(w http.ResponseWriter, r *http.Request, rt *route) {
	if rt.ID != "acquireLease" {
		return
	}
	if key := r.Header.Get(IdempotencyKeyHeader); key != "" {
		w.Header().Set(IdempotencyKeyHeader, key)
	}
}
