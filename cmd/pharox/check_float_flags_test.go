package main

import (
	"errors"
	"testing"

	"github.com/pharox/pharox"
)

// strconv.ParseFloat accepts NaN and Inf; every comparison with NaN is
// false, so "--max-banned-share NaN" passed the range check and silently
// turned the ban guard off, and "--rate NaN" silently meant no limit.
func TestCheckRejectsNonFiniteFloats(t *testing.T) {
	_, target := checkFixture(t)
	for _, args := range [][]string{
		{"--max-banned-share", "NaN"},
		{"--rate", "NaN"},
		{"--rate", "+Inf"},
	} {
		full := append([]string{"--storage", "memory://test", "--pool", "edge", "--target", target}, args...)
		if _, _, err := runCheckCmd(t, full...); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("check %v = %v, want ErrInvalidArgument", args, err)
		}
	}
}
