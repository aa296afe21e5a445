package main

import (
	"errors"

	"github.com/pharox/pharox/internal/outage"
)

// Exit codes. A command line the CLI cannot read exits with exitUsage, as
// usage errors do by convention. A store or service that is down for now exits with
// exitUnavailable (EX_TEMPFAIL of sysexits.h), so scripts can tell a
// failure worth retrying from one that is not.
const (
	exitFailure     = 1
	exitUsage       = 2
	exitUnavailable = 75
)

// exitCode is the process exit code for a command that failed with err.
func exitCode(err error) int {
	if errors.As(err, &usageError{}) {
		return exitUsage
	}
	if outage.Is(err) {
		return exitUnavailable
	}
	return exitFailure
}

// unavailableHint is what follows the error message of a command that
// failed because the store or service is down for now.
func unavailableHint(err error) string {
	if reason := outage.Reason(err); reason != "" {
		return "\npharox: temporarily unavailable (" + reason + "); retry later"
	}
	return ""
}
