package server

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

// noTargetsDetail answers a request for per-site health on a server whose
// store does not keep it.
const noTargetsDetail = "This server's store does not keep per-site (target) health"

// requestTarget normalizes a target as a client sent it ("" for none),
// with the sentence a client reads when it is not one.
func requestTarget(raw string) (string, error) {
	t, err := pharox.NormalizeTarget(raw)
	if err != nil {
		return "", unprocessable("target %q is not a host name, host:port, IP address or URL", truncate(raw, 64))
	}
	return t, nil
}

// targetsUnsupported gives ErrUnsupported from a per-site call the
// sentence that says what is missing.
func targetsUnsupported(err error) error {
	if errors.Is(err, pharox.ErrUnsupported) {
		return withDetail(err, noTargetsDetail)
	}
	return err
}

func (s *Server) poolTargets(r *http.Request) (any, error) {
	limit := DefaultListLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxListLimit {
			return nil, unprocessable("query parameter limit must be an integer from 1 to %d, got %q", MaxListLimit, truncate(v, 32))
		}
		limit = n
	}
	poolID, err := s.poolRef(r.Context(), r.PathValue("pool_id"))
	if err != nil {
		return nil, err
	}
	stats, err := s.mgr.PoolTargetStats(r.Context(), poolID)
	if err != nil {
		return nil, targetsUnsupported(err)
	}
	if len(stats) > limit {
		stats = stats[:limit]
	}
	out := make([]api.TargetStats, len(stats))
	for i, st := range stats {
		out[i] = api.FromTargetStats(st)
	}
	return out, nil
}

func (s *Server) proxyTargets(r *http.Request) (any, error) {
	p, err := s.proxyInPool(r)
	if err != nil {
		return nil, err
	}
	states, err := s.mgr.TargetStates(r.Context(), p.ID)
	if err != nil {
		return nil, targetsUnsupported(err)
	}
	now := time.Now()
	out := make([]api.TargetState, len(states))
	for i, st := range states {
		out[i] = api.FromTargetState(st, now)
	}
	return out, nil
}
