package sqlite

import (
	"database/sql"
	"encoding/json"
	"fmt"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// proxyCols lists the proxies columns scanProxy reads, in order.
const proxyCols = `id, pool_id, host, port, protocol, has_credentials, username, password,
	source, country, city, isp, asn, latitude, longitude, tags, status, max_concurrency,
	current_leases, checked_at, latency_ms, last_error, last_status_code, failure_streak,
	status_changed_at, created_at`

// proxyColsP is proxyCols qualified by the alias p, for joins.
var proxyColsP = prefixed("p.", proxyCols)

// scanner is *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

// collect reads every row a query returned with scan and closes the rows;
// it takes the query's own results, so a failed query passes its error
// through. No rows give an empty, non-nil slice.
func collect[T any](rows *sql.Rows, err error, scan func(scanner) (*T, error)) ([]*T, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []*T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

func scanProxy(sc scanner) (*pharox.Proxy, error) {
	var (
		p                      pharox.Proxy
		hasCred                bool
		user, pass             string
		asn, maxc              sql.NullInt64
		lat, lon               sql.NullFloat64
		tags                   sql.NullString
		status, protocol       string
		checked, changed       sql.NullInt64
		created                int64
		latency                int64
		lastCode, streak, curr int64
	)
	if err := sc.Scan(&p.ID, &p.PoolID, &p.Host, &p.Port, &protocol, &hasCred, &user, &pass,
		&p.Source, &p.Country, &p.City, &p.ISP, &asn, &lat, &lon, &tags, &status, &maxc,
		&curr, &checked, &latency, &p.LastError, &lastCode, &streak,
		&changed, &created); err != nil {
		return nil, err
	}
	p.Protocol = pharox.Protocol(protocol)
	p.Status = pharox.ProxyStatus(status)
	if hasCred {
		p.Credentials = &pharox.Credentials{User: user, Password: pass}
	}
	if asn.Valid {
		v := int(asn.Int64)
		p.ASN = &v
	}
	if lat.Valid && lon.Valid {
		a, o := lat.Float64, lon.Float64
		p.Latitude, p.Longitude = &a, &o
	}
	if tags.Valid && tags.String != "" {
		if err := json.Unmarshal([]byte(tags.String), &p.Tags); err != nil {
			return nil, fmt.Errorf("proxy %s: corrupt tags column: %w", p.ID, err)
		}
		if len(p.Tags) == 0 {
			p.Tags = nil
		}
	}
	if maxc.Valid {
		v := int(maxc.Int64)
		p.MaxConcurrency = &v
	}
	p.CurrentLeases = int(curr)
	if checked.Valid {
		t := fromMicros(checked.Int64)
		p.CheckedAt = &t
	}
	if changed.Valid {
		t := fromMicros(changed.Int64)
		p.StatusChangedAt = &t
	}
	p.LatencyMS = latency
	p.LastStatusCode = int(lastCode)
	p.FailureStreak = int(streak)
	p.CreatedAt = fromMicros(created)
	return &p, nil
}

// leaseCols lists the leases columns scanLease reads, in order.
const leaseCols = `id, proxy_id, consumer_id, consumer_name, pool_id, pool_name, status,
	acquired_at, expires_at, released_at, session_key, target, usage_requests, usage_bytes_sent,
	usage_bytes_received`

func scanLease(sc scanner) (*pharox.Lease, error) {
	var (
		l                 pharox.Lease
		status            string
		acquired, expires int64
		released          sql.NullInt64
		requests, sent    sql.NullInt64
		received          sql.NullInt64
	)
	if err := sc.Scan(&l.ID, &l.ProxyID, &l.ConsumerID, &l.ConsumerName, &l.PoolID, &l.PoolName,
		&status, &acquired, &expires, &released, &l.SessionKey, &l.Target, &requests, &sent, &received); err != nil {
		return nil, err
	}
	// The three usage columns are set together; usage_requests stands for
	// them (NULL: no report).
	if requests.Valid {
		l.Usage = &pharox.Usage{Requests: requests.Int64, BytesSent: sent.Int64, BytesReceived: received.Int64}
	}
	l.Status = pharox.LeaseStatus(status)
	l.AcquiredAt = fromMicros(acquired)
	l.ExpiresAt = fromMicros(expires)
	if released.Valid {
		t := fromMicros(released.Int64)
		l.ReleasedAt = &t
	}
	return &l, nil
}

const poolCols = `id, name, description, created_at`

func scanPool(sc scanner) (*pharox.Pool, error) {
	var (
		p       pharox.Pool
		created int64
	)
	if err := sc.Scan(&p.ID, &p.Name, &p.Description, &created); err != nil {
		return nil, err
	}
	p.CreatedAt = fromMicros(created)
	return &p, nil
}

// nullInt maps an optional int to a column value.
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

func nullTime(v *int64) any {
	if v == nil {
		return nil
	}
	return *v
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

// idArg binds a UUID as its canonical string, the stored form.
func idArg(id uuid.UUID) string { return id.String() }
