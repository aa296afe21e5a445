package transport

import (
	"time"

	"github.com/pharox/pharox"
)

// Observer receives a Transport's events, for metrics. Calls are made on
// the request's goroutine: keep them cheap. observe.TransportMetrics
// records them in Prometheus.
type Observer interface {
	// ObserveLeaseWait is called after each acquisition with the time it
	// took (waiting included) and its error (nil on success, wrapping
	// pharox.ErrNoProxyAvailable on a miss).
	ObserveLeaseWait(pool string, d time.Duration, err error)
	// ObserveOutcome is called for each attempt through a proxy with what
	// it said about the proxy (Kind empty: nothing).
	ObserveOutcome(pool string, o pharox.Outcome)
	// ObserveRequest is called when RoundTrip returns, with the attempts
	// made (0 when no proxy could be leased) and its error.
	ObserveRequest(pool string, attempts int, err error)
}

type nopObserver struct{}

func (nopObserver) ObserveLeaseWait(string, time.Duration, error) {}
func (nopObserver) ObserveOutcome(string, pharox.Outcome)         {}
func (nopObserver) ObserveRequest(string, int, error)             {}
