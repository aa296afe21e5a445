package main

import (
	"errors"
	"net/url"
	"strings"

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
	reason := outage.Reason(err)
	if reason == "" {
		return ""
	}
	// outage speaks of the store; a request that never got an answer
	// from a --server failed on the way to the server instead.
	var ue *url.Error
	if errors.As(err, &ue) {
		reason = strings.Replace(reason, "the store", "the server", 1)
	}
	return "\npharox: temporarily unavailable (" + reason + "); retry later"
}

// messageError is an error with its own message that keeps its cause for
// errors.Is and errors.As (and so for the exit code).
type messageError struct {
	msg string
	err error
}

func (e messageError) Error() string { return e.msg }
func (e messageError) Unwrap() error { return e.err }

// wrapMessage returns an error reading msg whose cause is err.
func wrapMessage(msg string, err error) error { return messageError{msg, err} }
