package client

import (
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

// The api package converts models to the wire; these are the inverses.

func toPool(p *api.Pool) *pharox.Pool {
	out := &pharox.Pool{ID: p.ID, Name: p.Name, Description: p.Description}
	if p.CreatedAt != nil {
		out.CreatedAt = p.CreatedAt.Time
	}
	return out
}

func fromTime(t *api.Time) *time.Time {
	if t == nil || t.IsZero() {
		return nil
	}
	v := t.Time
	return &v
}

func toProxy(p *api.Proxy) *pharox.Proxy {
	out := &pharox.Proxy{
		ID: p.ID, PoolID: p.PoolID, Host: p.Host, Port: p.Port, Protocol: pharox.Protocol(p.Protocol),
		Source: p.Source, Country: p.Country, City: p.City, ISP: p.ISP, ASN: p.ASN,
		Latitude: p.Latitude, Longitude: p.Longitude, Tags: p.Tags,
		Status: pharox.ProxyStatus(p.Status), MaxConcurrency: p.MaxConcurrency, CurrentLeases: p.CurrentLeases,
		CheckedAt: fromTime(p.CheckedAt), LatencyMS: p.LatencyMS, LastError: p.LastError,
		LastStatusCode: p.LastStatusCode, FailureStreak: p.FailureStreak,
		StatusChangedAt: fromTime(p.StatusChangedAt),
	}
	if p.CreatedAt != nil {
		out.CreatedAt = p.CreatedAt.Time
	}
	if p.Username != "" || p.Password != "" {
		out.Credentials = &pharox.Credentials{User: p.Username, Password: p.Password}
	}
	return out
}

func toProxies(in []api.Proxy) []*pharox.Proxy {
	out := make([]*pharox.Proxy, len(in))
	for i := range in {
		out[i] = toProxy(&in[i])
	}
	return out
}

func toLease(l *api.Lease) *pharox.Lease {
	out := &pharox.Lease{
		ID: l.ID, ProxyID: l.ProxyID, ConsumerID: l.ConsumerID, ConsumerName: l.ConsumerName,
		PoolID: l.PoolID, PoolName: l.PoolName, Status: pharox.LeaseStatus(l.Status),
		AcquiredAt: l.AcquiredAt.Time, ExpiresAt: l.ExpiresAt.Time,
		ReleasedAt: fromTime(l.ReleasedAt), SessionKey: l.SessionKey,
	}
	if l.Proxy != nil {
		out.Proxy = toProxy(l.Proxy)
	}
	return out
}

func toPoolStats(s *api.PoolStats) *pharox.PoolStats {
	out := &pharox.PoolStats{
		PoolName: s.PoolName, TotalProxies: s.TotalProxies, ActiveProxies: s.ActiveProxies,
		AvailableProxies: s.AvailableProxies, LeasedProxies: s.LeasedProxies, TotalLeases: s.TotalLeases,
		ByStatus: make(map[pharox.ProxyStatus]int, len(s.ByStatus)), CollectedAt: s.CollectedAt.Time,
	}
	for k, v := range s.ByStatus {
		out.ByStatus[pharox.ProxyStatus(k)] = v
	}
	return out
}
