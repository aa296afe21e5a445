package postgres

import (
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// proxyColumns are the proxy columns every read selects, in scan order.
var proxyColumns = []string{
	"id", "pool_id", "host", "port", "protocol", "username", "password",
	"source", "country", "city", "isp", "asn", "latitude", "longitude", "tags",
	"status", "max_concurrency", "current_leases", "checked_at", "latency_ms",
	"last_error", "last_status_code", "failure_streak", "status_changed_at", "created_at",
}

// proxyCols returns the proxy columns qualified with alias.
func proxyCols(alias string) string {
	var b strings.Builder
	for i, c := range proxyColumns {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(alias)
		b.WriteByte('.')
		b.WriteString(c)
	}
	return b.String()
}

// proxyRow receives one proxy's columns.
type proxyRow struct {
	id, poolID            uuid.UUID
	host                  string
	port                  int32
	protocol              string
	username, password    *string
	source, country, city string
	isp                   string
	asn                   *int64
	lat, lon              *float64
	tags                  []string
	status                string
	maxConc               *int32
	current               int32
	checkedAt             *time.Time
	latency               int64
	lastError             string
	lastCode, streak      int32
	changedAt             *time.Time
	createdAt             time.Time
}

// targets returns the scan destinations in proxyColumns order.
func (r *proxyRow) targets() []any {
	return []any{
		&r.id, &r.poolID, &r.host, &r.port, &r.protocol, &r.username, &r.password,
		&r.source, &r.country, &r.city, &r.isp, &r.asn, &r.lat, &r.lon, &r.tags,
		&r.status, &r.maxConc, &r.current, &r.checkedAt, &r.latency,
		&r.lastError, &r.lastCode, &r.streak, &r.changedAt, &r.createdAt,
	}
}

// proxy builds the caller's copy.
func (r *proxyRow) proxy() *pharox.Proxy {
	p := &pharox.Proxy{
		ID: r.id, PoolID: r.poolID, Host: r.host, Port: int(r.port),
		Protocol: pharox.Protocol(r.protocol),
		Source:   r.source, Country: r.country, City: r.city, ISP: r.isp,
		Latitude: r.lat, Longitude: r.lon,
		Status:        pharox.ProxyStatus(r.status),
		CurrentLeases: int(r.current),
		CheckedAt:     utcPtr(r.checkedAt),
		LatencyMS:     r.latency, LastError: r.lastError,
		LastStatusCode: int(r.lastCode), FailureStreak: int(r.streak),
		StatusChangedAt: utcPtr(r.changedAt),
		CreatedAt:       utc(r.createdAt),
	}
	if r.username != nil {
		c := &pharox.Credentials{User: *r.username}
		if r.password != nil {
			c.Password = *r.password
		}
		p.Credentials = c
	}
	if r.asn != nil {
		v := int(*r.asn)
		p.ASN = &v
	}
	if r.maxConc != nil {
		v := int(*r.maxConc)
		p.MaxConcurrency = &v
	}
	if len(r.tags) > 0 {
		p.Tags = r.tags
	}
	return p
}

// leaseColumns are the lease columns every read selects, in scan order.
const leaseColumns = "id, proxy_id, pool_id, pool_name, consumer_id, consumer_name, status, acquired_at, expires_at, released_at, session_key, " +
	"target, usage_requests, usage_bytes_sent, usage_bytes_received"

// leaseCols returns leaseColumns qualified with alias.
func leaseCols(alias string) string {
	parts := strings.Split(leaseColumns, ", ")
	for i := range parts {
		parts[i] = alias + "." + parts[i]
	}
	return strings.Join(parts, ", ")
}

type leaseRow struct {
	id, proxyID, poolID, consumerID uuid.UUID
	poolName, consumerName, status  string
	acquiredAt, expiresAt           time.Time
	releasedAt                      *time.Time
	sessionKey, target              string
	// usage: all three NULL when the holder reported none.
	requests, sent, received *int64
}

func (r *leaseRow) targets() []any {
	return []any{&r.id, &r.proxyID, &r.poolID, &r.poolName, &r.consumerID, &r.consumerName,
		&r.status, &r.acquiredAt, &r.expiresAt, &r.releasedAt, &r.sessionKey,
		&r.target, &r.requests, &r.sent, &r.received}
}

func (r *leaseRow) lease() *pharox.Lease {
	l := &pharox.Lease{
		ID: r.id, ProxyID: r.proxyID, PoolID: r.poolID, PoolName: r.poolName,
		ConsumerID: r.consumerID, ConsumerName: r.consumerName,
		Status:     pharox.LeaseStatus(r.status),
		AcquiredAt: utc(r.acquiredAt), ExpiresAt: utc(r.expiresAt),
		ReleasedAt: utcPtr(r.releasedAt), SessionKey: r.sessionKey,
		Target: r.target,
	}
	if r.requests != nil && r.sent != nil && r.received != nil {
		l.Usage = &pharox.Usage{Requests: *r.requests, BytesSent: *r.sent, BytesReceived: *r.received}
	}
	return l
}
