package api

import (
	"time"

	"github.com/pharox/pharox"
)

// The From* functions convert models to the wire; these are their inverses,
// kept beside them so the two directions change together.

// Model converts the wire pool back into the model.
func (p *Pool) Model() *pharox.Pool {
	out := &pharox.Pool{ID: p.ID, Name: p.Name, Description: p.Description}
	if p.CreatedAt != nil {
		out.CreatedAt = p.CreatedAt.Time
	}
	return out
}

func fromTime(t *Time) *time.Time {
	if t == nil || t.IsZero() {
		return nil
	}
	v := t.Time
	return &v
}

// Model converts the wire proxy back into the model; the password is set
// only if the wire form carried it.
func (p *Proxy) Model() *pharox.Proxy {
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

// ProxyModels converts a list of wire proxies.
func ProxyModels(in []Proxy) []*pharox.Proxy {
	out := make([]*pharox.Proxy, len(in))
	for i := range in {
		out[i] = in[i].Model()
	}
	return out
}

// Model converts the wire lease (and its proxy, if any) back into the model.
func (l *Lease) Model() *pharox.Lease {
	out := &pharox.Lease{
		ID: l.ID, ProxyID: l.ProxyID, ConsumerID: l.ConsumerID, ConsumerName: l.ConsumerName,
		PoolID: l.PoolID, PoolName: l.PoolName, Status: pharox.LeaseStatus(l.Status),
		AcquiredAt: l.AcquiredAt.Time, ExpiresAt: l.ExpiresAt.Time,
		ReleasedAt: fromTime(l.ReleasedAt), SessionKey: l.SessionKey, Target: l.Target,
	}
	if l.Usage != nil {
		u := *l.Usage
		out.Usage = &u
	}
	if l.Proxy != nil {
		out.Proxy = l.Proxy.Model()
	}
	return out
}

// Model converts the wire stats back into the model.
func (s *PoolStats) Model() *pharox.PoolStats {
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

// Model converts one site's wire stats back into the model.
func (s *TargetStats) Model() *pharox.TargetStats {
	return &pharox.TargetStats{Target: s.Target, UsableProxies: s.UsableProxies, CoolingProxies: s.CoolingProxies, BansLastHour: s.BansLastHour}
}

// Model converts a proxy's wire state for one site back into the model.
func (s *TargetState) Model() *pharox.TargetState {
	return &pharox.TargetState{
		ProxyID: s.ProxyID, Target: s.Target, FailureStreak: s.FailureStreak, Bans: s.Bans,
		CoolingUntil: fromTime(s.CoolingUntil), BannedAt: fromTime(s.BannedAt),
		LastReason: s.LastReason, LastStatusCode: s.LastStatusCode,
		LastSuccessAt: fromTime(s.LastSuccessAt), LastFailureAt: fromTime(s.LastFailureAt),
		UpdatedAt: s.UpdatedAt.Time,
	}
}
