package mysql

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/pharox/pharox"
)

// proxyCols lists the proxies columns scanProxy reads, in order.
const proxyCols = `id, pool_id, host, port, protocol, has_credentials, username, password,
	source, country, city, isp, asn, latitude, longitude, tags, status, max_concurrency,
	current_leases, checked_at, latency_ms, last_error, last_status_code, failure_streak,
	status_changed_at, created_at`

// prefixed qualifies every column of a column list with alias.
func prefixed(alias, cols string) string {
	parts := strings.Split(cols, ",")
	for i, c := range parts {
		parts[i] = alias + "." + strings.TrimSpace(c)
	}
	return strings.Join(parts, ", ")
}

// scanner is *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

// proxyRow holds the scan targets of proxyCols.
type proxyRow struct {
	p                pharox.Proxy
	protocol, status string
	hasCred          bool
	user             string
	pass             sql.NullString
	asn, maxc        sql.NullInt64
	lat, lon         sql.NullFloat64
	tags             sql.NullString
	checked, changed sql.NullTime
	lastError        sql.NullString
}

func (r *proxyRow) targets() []any {
	p := &r.p
	return []any{&p.ID, &p.PoolID, &p.Host, &p.Port, &r.protocol, &r.hasCred, &r.user, &r.pass,
		&p.Source, &p.Country, &p.City, &p.ISP, &r.asn, &r.lat, &r.lon, &r.tags, &r.status, &r.maxc,
		&p.CurrentLeases, &r.checked, &p.LatencyMS, &r.lastError, &p.LastStatusCode, &p.FailureStreak,
		&r.changed, &p.CreatedAt}
}

func (r *proxyRow) proxy() (*pharox.Proxy, error) {
	p := r.p
	p.Protocol = pharox.Protocol(r.protocol)
	p.Status = pharox.ProxyStatus(r.status)
	if r.hasCred {
		p.Credentials = &pharox.Credentials{User: r.user, Password: r.pass.String}
	}
	if r.asn.Valid {
		v := int(r.asn.Int64)
		p.ASN = &v
	}
	if r.lat.Valid && r.lon.Valid {
		a, o := r.lat.Float64, r.lon.Float64
		p.Latitude, p.Longitude = &a, &o
	}
	if r.tags.Valid && r.tags.String != "" {
		if err := json.Unmarshal([]byte(r.tags.String), &p.Tags); err != nil {
			return nil, fmt.Errorf("proxy %s: corrupt tags column: %w", p.ID, err)
		}
		if len(p.Tags) == 0 {
			p.Tags = nil
		}
	}
	if r.maxc.Valid {
		v := int(r.maxc.Int64)
		p.MaxConcurrency = &v
	}
	if r.checked.Valid {
		t := utc(r.checked.Time)
		p.CheckedAt = &t
	}
	if r.changed.Valid {
		t := utc(r.changed.Time)
		p.StatusChangedAt = &t
	}
	p.LastError = r.lastError.String
	p.CreatedAt = utc(p.CreatedAt)
	return &p, nil
}

func scanProxy(sc scanner, extra ...any) (*pharox.Proxy, error) {
	var r proxyRow
	if err := sc.Scan(append(r.targets(), extra...)...); err != nil {
		return nil, err
	}
	return r.proxy()
}

// leaseCols lists the leases columns scanLease reads, in order.
const leaseCols = `id, proxy_id, consumer_id, consumer_name, pool_id, pool_name, status,
	acquired_at, expires_at, released_at, session_key, target, usage_requests, usage_bytes_sent,
	usage_bytes_received`

func scanLease(sc scanner, extra ...any) (*pharox.Lease, error) {
	var (
		l        pharox.Lease
		status   string
		released sql.NullTime
		key      sql.NullString
		usage    [3]sql.NullInt64
	)
	if err := sc.Scan(append([]any{&l.ID, &l.ProxyID, &l.ConsumerID, &l.ConsumerName, &l.PoolID, &l.PoolName,
		&status, &l.AcquiredAt, &l.ExpiresAt, &released, &key, &l.Target, &usage[0], &usage[1], &usage[2]}, extra...)...); err != nil {
		return nil, err
	}
	// The three usage columns are set together, at release.
	if usage[0].Valid {
		l.Usage = &pharox.Usage{Requests: usage[0].Int64, BytesSent: usage[1].Int64, BytesReceived: usage[2].Int64}
	}
	l.Status = pharox.LeaseStatus(status)
	l.AcquiredAt = utc(l.AcquiredAt)
	l.ExpiresAt = utc(l.ExpiresAt)
	if released.Valid {
		t := utc(released.Time)
		l.ReleasedAt = &t
	}
	l.SessionKey = key.String
	return &l, nil
}

const poolCols = `id, name, description, created_at`

func scanPool(sc scanner) (*pharox.Pool, error) {
	var p pharox.Pool
	if err := sc.Scan(&p.ID, &p.Name, &p.Description, &p.CreatedAt); err != nil {
		return nil, err
	}
	p.CreatedAt = utc(p.CreatedAt)
	return &p, nil
}

const consumerCols = `id, name, created_at`

func scanConsumer(sc scanner) (*pharox.Consumer, error) {
	var c pharox.Consumer
	if err := sc.Scan(&c.ID, &c.Name, &c.CreatedAt); err != nil {
		return nil, err
	}
	c.CreatedAt = utc(c.CreatedAt)
	return &c, nil
}

func nullInt(v *int) any {
	if v == nil {
		return nil
	}
	return int64(*v)
}

func nullFloat(v *float64) any {
	if v == nil {
		return nil
	}
	return *v
}

func nullTime(t *time.Time) any {
	if t == nil {
		return nil
	}
	return micro(*t)
}

// tagsValue encodes tags as a JSON array, NULL when there are none.
func tagsValue(tags []string) (any, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(tags)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}
