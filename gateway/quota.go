package gateway

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/pharox/pharox"
)

// quotaRefusal is the answer to an acquisition a quota refused
// (pharox.ErrQuotaExceeded): 429 with Retry-After and a reason naming
// the quota, e.g.
//
//	consumer "scraper-1" is over its quota max_concurrent_leases=5; retry in 1s
func quotaRefusal(err error) *gwError {
	qe, ok := errors.AsType[*pharox.QuotaError](err)
	if !ok {
		// A lease source that says only that a quota refused.
		return &gwError{status: http.StatusTooManyRequests, reason: err.Error(), retryAfter: time.Second}
	}
	who := qe.SubjectID.String()
	if qe.Name != "" {
		who = strconv.Quote(qe.Name)
	}
	retry := max(qe.RetryAfter, time.Second)
	return &gwError{
		status:     http.StatusTooManyRequests,
		reason:     fmt.Sprintf("%s %s is over its quota %s=%d; retry in %s", qe.Subject, who, qe.Limit, qe.Value, time.Duration(retryAfterSeconds(retry))*time.Second),
		retryAfter: retry,
	}
}

// quotaLabels are the bounded metric labels of a quota refusal: the
// subject and limit when the lease source said which, "unknown" otherwise.
func quotaLabels(err error) (subject, limit string) {
	if qe, ok := errors.AsType[*pharox.QuotaError](err); ok && qe.Subject.Valid() && knownLimit(qe.Limit) {
		return string(qe.Subject), qe.Limit
	}
	return "unknown", "unknown"
}

func knownLimit(l string) bool {
	switch l {
	case pharox.LimitMaxConcurrentLeases, pharox.LimitRequestsPerMinute, pharox.LimitBytesPerDay, pharox.LimitBytesPerMonth:
		return true
	}
	return false
}
