package pharox

import (
	"cmp"
	"fmt"
	"strings"
)

// Strategy chooses among the proxies that can take a lease.
type Strategy string

// Selector strategies.
const (
	// FirstAvailable (the default) prefers active over slow proxies, then the
	// most recently checked (never-checked last), then the lowest id.
	FirstAvailable Strategy = "first_available"
	// LeastUsed prefers active over slow proxies, then the fewest current
	// leases, then the lowest id.
	LeastUsed Strategy = "least_used"
	// RoundRobin takes candidates in id order, continuing after the proxy
	// the pool handed out last under this strategy and wrapping around. The
	// position is kept in storage, so it holds across processes.
	RoundRobin Strategy = "round_robin"
	// Random picks uniformly among candidates.
	Random Strategy = "random"
)

// AllStrategies lists every strategy.
var AllStrategies = []Strategy{FirstAvailable, LeastUsed, RoundRobin, Random}

// Valid reports whether s is a known strategy. The empty strategy is valid
// and means FirstAvailable.
func (s Strategy) Valid() bool {
	switch s {
	case "", FirstAvailable, LeastUsed, RoundRobin, Random:
		return true
	}
	return false
}

// OrDefault returns s, or FirstAvailable when s is empty.
func (s Strategy) OrDefault() Strategy {
	if s == "" {
		return FirstAvailable
	}
	return s
}

// ParseStrategy parses a strategy name; the empty string is FirstAvailable.
func ParseStrategy(s string) (Strategy, error) {
	st := Strategy(strings.ToLower(strings.TrimSpace(s)))
	if !st.Valid() {
		return "", fmt.Errorf("%w: unknown strategy %q (want first_available, least_used, round_robin or random)", ErrInvalidArgument, s)
	}
	return st.OrDefault(), nil
}

// CompareFirstAvailable orders candidates for FirstAvailable: negative when
// a should be chosen before b.
func CompareFirstAvailable(a, b *Proxy) int {
	if c := cmp.Compare(a.Status.Rank(), b.Status.Rank()); c != 0 {
		return c
	}
	switch {
	case a.CheckedAt == nil && b.CheckedAt != nil:
		return 1
	case a.CheckedAt != nil && b.CheckedAt == nil:
		return -1
	case a.CheckedAt != nil && b.CheckedAt != nil:
		if c := b.CheckedAt.Compare(*a.CheckedAt); c != 0 {
			return c
		}
	}
	return compareIDs(a, b)
}

// CompareLeastUsed orders candidates for LeastUsed.
func CompareLeastUsed(a, b *Proxy) int {
	if c := cmp.Compare(a.Status.Rank(), b.Status.Rank()); c != 0 {
		return c
	}
	if c := cmp.Compare(a.CurrentLeases, b.CurrentLeases); c != 0 {
		return c
	}
	return compareIDs(a, b)
}

// compareIDs orders by the UUID's bytes, which is also the order of its
// canonical string and of PostgreSQL's uuid type.
func compareIDs(a, b *Proxy) int {
	for i := range a.ID {
		if c := cmp.Compare(a.ID[i], b.ID[i]); c != 0 {
			return c
		}
	}
	return 0
}
