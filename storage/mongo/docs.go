package mongo

import (
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// consumerDoc is a document of the consumers collection.
type consumerDoc struct {
	ID        string    `bson:"_id"`
	Name      string    `bson:"name"`
	CreatedAt time.Time `bson:"created_at"`
}

func (d *consumerDoc) consumer() *pharox.Consumer {
	return &pharox.Consumer{ID: parseID(d.ID), Name: d.Name, CreatedAt: d.CreatedAt.UTC()}
}

// poolDoc is a document of the pools collection.
type poolDoc struct {
	ID          string    `bson:"_id"`
	Name        string    `bson:"name"`
	Description string    `bson:"description"`
	CreatedAt   time.Time `bson:"created_at"`
}

func (d *poolDoc) pool() *pharox.Pool {
	return &pharox.Pool{ID: parseID(d.ID), Name: d.Name, Description: d.Description, CreatedAt: d.CreatedAt.UTC()}
}

// proxyDoc is a document of the proxies collection. It holds no lease
// count: the slots collection is the only record of who holds what, so no
// write to a proxy document can lose or invent a lease.
type proxyDoc struct {
	ID       string `bson:"_id"`
	Pool     string `bson:"pool"`
	Host     string `bson:"host"`
	Port     int64  `bson:"port"`
	Protocol string `bson:"protocol"`
	// User is "" without credentials, so the address index sees it.
	User     string `bson:"user"`
	Password string `bson:"password,omitempty"`
	HasCred  bool   `bson:"has_cred,omitempty"`

	Source  string   `bson:"source"`
	Country string   `bson:"country"`
	City    string   `bson:"city"`
	ISP     string   `bson:"isp"`
	ASN     *int64   `bson:"asn,omitempty"`
	Lat     *float64 `bson:"lat,omitempty"`
	Lon     *float64 `bson:"lon,omitempty"`
	Tags    []string `bson:"tags"`

	Status string `bson:"status"`
	// Rank is Status.Rank(): leasable proxies have rank 0 or 1.
	Rank int `bson:"rank"`
	// MaxC is the max concurrency; 0 means unlimited.
	MaxC int64 `bson:"maxc"`

	CheckedAt       *time.Time `bson:"checked_at,omitempty"`
	LatencyMS       int64      `bson:"latency_ms"`
	LastError       string     `bson:"last_error"`
	LastStatusCode  int64      `bson:"last_status_code"`
	FailureStreak   int64      `bson:"failure_streak"`
	StatusChangedAt *time.Time `bson:"status_changed_at,omitempty"`
	CreatedAt       time.Time  `bson:"created_at"`
	// V counts writes of the health fields, for compare-and-set updates.
	V int64 `bson:"v"`
}

func newProxyDoc(p *pharox.Proxy) *proxyDoc {
	d := &proxyDoc{
		ID: idString(p.ID), Pool: idString(p.PoolID), Host: p.Host, Port: int64(p.Port),
		Protocol: string(p.Protocol), Source: p.Source, Country: p.Country, City: p.City, ISP: p.ISP,
		Lat: p.Latitude, Lon: p.Longitude, Tags: p.Tags, Status: string(p.Status), Rank: p.Status.Rank(),
		CheckedAt: p.CheckedAt, LatencyMS: p.LatencyMS, LastError: p.LastError,
		LastStatusCode: int64(p.LastStatusCode), FailureStreak: int64(p.FailureStreak),
		StatusChangedAt: p.StatusChangedAt, CreatedAt: p.CreatedAt,
	}
	if d.Tags == nil {
		d.Tags = []string{}
	}
	if p.Credentials != nil {
		d.HasCred = true
		d.User, d.Password = p.Credentials.User, p.Credentials.Password
	}
	if p.ASN != nil {
		v := int64(*p.ASN)
		d.ASN = &v
	}
	if p.MaxConcurrency != nil {
		d.MaxC = int64(*p.MaxConcurrency)
	}
	return d
}

// proxy converts the document; leases is its count of active slots.
func (d *proxyDoc) proxy(leases int) *pharox.Proxy {
	p := &pharox.Proxy{
		ID: parseID(d.ID), PoolID: parseID(d.Pool), Host: d.Host, Port: int(d.Port),
		Protocol: pharox.Protocol(d.Protocol), Source: d.Source, Country: d.Country, City: d.City, ISP: d.ISP,
		Status: pharox.ProxyStatus(d.Status), CurrentLeases: leases, LatencyMS: d.LatencyMS,
		LastError: d.LastError, LastStatusCode: int(d.LastStatusCode), FailureStreak: int(d.FailureStreak),
		CreatedAt: d.CreatedAt.UTC(),
	}
	if d.HasCred {
		p.Credentials = &pharox.Credentials{User: d.User, Password: d.Password}
	}
	if d.ASN != nil {
		v := int(*d.ASN)
		p.ASN = &v
	}
	if d.Lat != nil {
		v := *d.Lat
		p.Latitude = &v
	}
	if d.Lon != nil {
		v := *d.Lon
		p.Longitude = &v
	}
	if len(d.Tags) > 0 {
		p.Tags = append([]string(nil), d.Tags...)
	}
	if d.MaxC > 0 {
		v := int(d.MaxC)
		p.MaxConcurrency = &v
	}
	if d.CheckedAt != nil {
		t := d.CheckedAt.UTC()
		p.CheckedAt = &t
	}
	if d.StatusChangedAt != nil {
		t := d.StatusChangedAt.UTC()
		p.StatusChangedAt = &t
	}
	return p
}

// leaseDoc is a lease: a document of the slots collection while it is
// active (the slot it holds), of the leases collection once it ended.
type leaseDoc struct {
	ID           string `bson:"_id"`
	Pool         string `bson:"pool"`
	PoolName     string `bson:"pool_name"`
	Proxy        string `bson:"proxy"`
	Consumer     string `bson:"consumer"`
	ConsumerName string `bson:"consumer_name"`
	// N is the slot number, 0 to max_concurrency-1, unique per proxy; for
	// an unlimited proxy it is the lease id, unique anyway.
	N          any        `bson:"n"`
	Status     string     `bson:"status"`
	AcquiredAt time.Time  `bson:"acquired_at"`
	ExpiresAt  time.Time  `bson:"expires_at"`
	ReleasedAt *time.Time `bson:"released_at,omitempty"`
	SessionKey string     `bson:"session_key,omitempty"`
}

func (d *leaseDoc) lease() *pharox.Lease {
	l := &pharox.Lease{
		ID: parseID(d.ID), ProxyID: parseID(d.Proxy), ConsumerID: parseID(d.Consumer),
		ConsumerName: d.ConsumerName, PoolID: parseID(d.Pool), PoolName: d.PoolName,
		Status: pharox.LeaseStatus(d.Status), AcquiredAt: d.AcquiredAt.UTC(), ExpiresAt: d.ExpiresAt.UTC(),
		SessionKey: d.SessionKey,
	}
	if d.ReleasedAt != nil {
		t := d.ReleasedAt.UTC()
		l.ReleasedAt = &t
	}
	return l
}

// sessionDoc binds a session key of a pool to a proxy until ExpiresAt.
type sessionDoc struct {
	ID        string    `bson:"_id"` // pool id + "/" + key
	Pool      string    `bson:"pool"`
	Proxy     string    `bson:"proxy"`
	ExpiresAt time.Time `bson:"expires_at"`
}

func sessionID(pool uuid.UUID, key string) string { return idString(pool) + "/" + key }
