package storagetest

import (
	"strings"
	"testing"
)

func TestMaxOverlap(t *testing.T) {
	iv := func(from, to int) heldInterval { return heldInterval{at(from), at(to)} }
	for _, tc := range []struct {
		ivs  []heldInterval
		want int
	}{
		{nil, 0},
		{[]heldInterval{iv(0, 10)}, 1},
		{[]heldInterval{iv(0, 10), iv(10, 20)}, 1}, // touching is not overlapping
		{[]heldInterval{iv(0, 10), iv(9, 20)}, 2},
		{[]heldInterval{iv(0, 100), iv(10, 20), iv(15, 30), iv(20, 40)}, 3},
		{[]heldInterval{iv(5, 5), iv(0, 10)}, 1}, // an empty interval shows nothing held
	} {
		if got := maxOverlap(tc.ivs); got != tc.want {
			t.Errorf("maxOverlap(%v) = %d, want %d", tc.ivs, got, tc.want)
		}
	}
}

func TestAuditConsumerCap(t *testing.T) {
	lease := func(c, from, to int) mpCappedLease { return mpCappedLease{Consumer: c, From: at(from), To: at(to)} }
	for _, tc := range []struct {
		name    string
		tallies []*workerTally
		want    string // "" for no report
	}{
		{"within the cap, reached", []*workerTally{
			{Worker: 0, CappedLeases: []mpCappedLease{lease(0, 0, 10), lease(0, 5, 15), lease(1, 0, 100)}},
			{Worker: 1, CappedLeases: []mpCappedLease{lease(0, 10, 20), lease(1, 100, 200)}},
		}, ""},
		{"over the cap across workers", []*workerTally{
			{Worker: 0, CappedLeases: []mpCappedLease{lease(2, 0, 10), lease(2, 5, 15)}},
			{Worker: 1, CappedLeases: []mpCappedLease{lease(2, 8, 20)}},
		}, "held 3 leases at once"},
		{"never reached", []*workerTally{
			{Worker: 0, CappedLeases: []mpCappedLease{lease(0, 0, 10), lease(1, 5, 15)}},
		}, "never reached"},
		{"no capped lease", []*workerTally{{Worker: 0}}, "no worker leased"},
	} {
		r := &recorder{TB: t}
		auditConsumerCap(r, tc.tallies, 2, 0)
		got := strings.Join(r.msgs, "\n")
		if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
			t.Errorf("%s: audit reported %q, want %q", tc.name, got, tc.want)
		}
	}
}
