package transport

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/pharox/pharox"
)

// Classifier decides what a response says about the proxy it came
// through. resp.Request is the request as sent. The returned outcome's
// Kind is pharox.OutcomeSuccess, OutcomeFailure or OutcomeBanned, or empty
// when the response says nothing about the proxy (nothing is reported and
// the request is not retried). The Transport fills in StatusCode and
// Latency when they are zero.
//
// A failure or a ban is reported to the pool at once and, for requests
// that may be sent again, makes the Transport retry on another proxy; the
// response of the last attempt is returned as it came.
//
// A classifier may read the start of the body with PeekBody; it must not
// otherwise consume or close it.
type Classifier func(resp *http.Response) pharox.Outcome

// blockPeekBytes is how much of a 403 or 503 body DefaultClassifier reads
// looking for a block page.
const blockPeekBytes = 4 << 10

// blockHeaders are response headers that anti-bot services set on the
// pages they answer instead of the site's.
var blockHeaders = []string{"Cf-Mitigated", "X-Datadome", "X-Amzn-Waf-Action", "X-Sucuri-Block"}

// blockMarkers are lower-case phrases of common block and challenge pages.
var blockMarkers = [][]byte{
	[]byte("captcha"),
	[]byte("cf-chl"),
	[]byte("challenge-platform"),
	[]byte("attention required"),
	[]byte("access denied"),
	[]byte("are you a robot"),
	[]byte("unusual traffic"),
	[]byte("request blocked"),
	[]byte("you have been blocked"),
	[]byte("datadome"),
}

// DefaultClassifier is the classifier a Transport uses unless given one:
//
//   - 407 Proxy Authentication Required is a failure of the proxy (it
//     refused its own credentials);
//   - 429 Too Many Requests is a ban: rate limits are per client address,
//     which is the proxy's;
//   - 403 Forbidden and 503 Service Unavailable are a ban when the answer
//     is a block page: a header an anti-bot service sets (Cf-Mitigated,
//     X-Datadome, X-Amzn-Waf-Action, X-Sucuri-Block) or a typical phrase
//     ("captcha", "access denied", "unusual traffic", ...) in the first
//     4 KiB of the body. A plain 403 is the site's answer to anyone and a
//     plain 503 the site's own trouble: both count as a success of the
//     proxy;
//   - anything else is a success.
func DefaultClassifier(resp *http.Response) pharox.Outcome {
	code := resp.StatusCode
	switch code {
	case http.StatusProxyAuthRequired:
		return pharox.Outcome{Kind: pharox.OutcomeFailure, StatusCode: code, Reason: "proxy answered 407: it refused its credentials"}
	case http.StatusTooManyRequests:
		return pharox.Outcome{Kind: pharox.OutcomeBanned, StatusCode: code, Reason: "target answered 429 Too Many Requests"}
	case http.StatusForbidden, http.StatusServiceUnavailable:
		if marker := blockMarker(resp); marker != "" {
			return pharox.Outcome{Kind: pharox.OutcomeBanned, StatusCode: code,
				Reason: fmt.Sprintf("target answered %d with a block page (%s)", code, marker)}
		}
	}
	return pharox.Outcome{Kind: pharox.OutcomeSuccess, StatusCode: code}
}

// blockMarker names the sign of a block page in resp, or returns "".
func blockMarker(resp *http.Response) string {
	for _, h := range blockHeaders {
		if resp.Header.Get(h) != "" {
			return "header " + h
		}
	}
	head, _ := PeekBody(resp, blockPeekBytes)
	lower := bytes.ToLower(head)
	for _, m := range blockMarkers {
		if bytes.Contains(lower, m) {
			return fmt.Sprintf("%q in the body", m)
		}
	}
	return ""
}

// PeekBody returns up to the first n bytes of resp's body without taking
// them from it: resp.Body is replaced by a body that reads them again,
// then the rest. A read error other than the end of the body is returned
// with what was read before it.
func PeekBody(resp *http.Response, n int) ([]byte, error) {
	if resp.Body == nil || resp.Body == http.NoBody || n <= 0 {
		return nil, nil
	}
	if pb, ok := resp.Body.(*peekedBody); ok && len(pb.head) >= n {
		return pb.head[:n], nil
	}
	buf := make([]byte, n)
	got, err := io.ReadFull(resp.Body, buf)
	buf = buf[:got]
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = nil
	}
	resp.Body = &peekedBody{head: buf, r: io.MultiReader(bytes.NewReader(buf), resp.Body), c: resp.Body}
	return buf, err
}

// peekedBody is a body whose first bytes were read ahead by PeekBody.
type peekedBody struct {
	head []byte
	r    io.Reader
	c    io.Closer
}

func (b *peekedBody) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b *peekedBody) Close() error               { return b.c.Close() }
