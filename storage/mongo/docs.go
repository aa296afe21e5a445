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
	// Quotas is set while a quota may apply to acquisitions from the
	// pool (its own, a consumer's, or one of its proxies'): only then do
	// acquisitions read the quotas collection.
	Quotas bool `bson:"quotas,omitempty"`
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
	Target     string     `bson:"target,omitempty"`
	// Usage is the holder's report, on the ended record of a lease
	// released with one.
	Usage *usageDoc `bson:"usage,omitempty"`
	// Caps are the quota keys (see quotaKey) whose cap slot documents the
	// acquisition took for the lease: the lease's end deletes them.
	Caps []string `bson:"caps,omitempty"`
}

// usageDoc is a pharox.Usage as stored.
type usageDoc struct {
	Requests int64 `bson:"requests"`
	Sent     int64 `bson:"sent"`
	Received int64 `bson:"received"`
}

func (d *leaseDoc) lease() *pharox.Lease {
	l := &pharox.Lease{
		ID: parseID(d.ID), ProxyID: parseID(d.Proxy), ConsumerID: parseID(d.Consumer),
		ConsumerName: d.ConsumerName, PoolID: parseID(d.Pool), PoolName: d.PoolName,
		Status: pharox.LeaseStatus(d.Status), AcquiredAt: d.AcquiredAt.UTC(), ExpiresAt: d.ExpiresAt.UTC(),
		SessionKey: d.SessionKey, Target: d.Target,
	}
	if d.ReleasedAt != nil {
		t := d.ReleasedAt.UTC()
		l.ReleasedAt = &t
	}
	if d.Usage != nil {
		l.Usage = &pharox.Usage{Requests: d.Usage.Requests, BytesSent: d.Usage.Sent, BytesReceived: d.Usage.Received}
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

// Kinds of documents of the quotas collection.
const (
	kindQuota = "quota" // a quota: its limits and the counters it started from
	kindShard = "shard" // one store instance's byte counters of a quota
	kindAllow = "allow" // a proxy over its traffic allowance until Until
)

// quotaDoc is a document of the quotas collection (see the kinds above).
// Every kind names its quota by Q, the quota's key (see quotaKey), and Gen,
// the generation the quota got when it was created: shards, cap slots and
// request log entries of an older generation (a quota deleted and set
// again) count for nothing.
type quotaDoc struct {
	ID   string `bson:"_id"`
	Kind string `bson:"kind"`
	Q    string `bson:"q"`
	Gen  string `bson:"gen"`
	// Pool is the pool of a proxy quota's proxy (quota and allow kinds).
	Pool string `bson:"pool,omitempty"`

	Subject   string    `bson:"subject,omitempty"`
	SubjectID string    `bson:"sid,omitempty"`
	MaxLeases int64     `bson:"max_leases,omitempty"`
	RPM       int64     `bson:"rpm,omitempty"`
	PerDay    int64     `bson:"per_day,omitempty"`
	PerMonth  int64     `bson:"per_month,omitempty"`
	UpdatedAt time.Time `bson:"updated_at,omitempty"`
	// Lowered is set when cap slot numbers at or above MaxLeases may be
	// held (the cap was lowered, or more leases were active than the cap
	// when it was set): acquisitions then count before they take a slot.
	Lowered bool `bson:"lowered,omitempty"`

	// Byte counters: of the subject's usage before the quota existed (a
	// quota), or counted by one store instance since (a shard).
	Day       time.Time `bson:"day,omitempty"`
	Today     int64     `bson:"today,omitempty"`
	Month     time.Time `bson:"month,omitempty"`
	ThisMonth int64     `bson:"this_month,omitempty"`

	// Proxy and Until: an allowance's proxy is not leased before Until.
	Proxy string     `bson:"proxy,omitempty"`
	Until *time.Time `bson:"until,omitempty"`
}

// capDoc is a document of the quota_slots collection: one of the slots of
// a consumer's or pool's max_concurrent_leases, held by a lease. The
// unique (q, gen, n) index admits one holder per slot number.
type capDoc struct {
	ID    string    `bson:"_id"` // lease id + "/" + quota key
	Q     string    `bson:"q"`
	Gen   string    `bson:"gen"`
	N     int64     `bson:"n"`
	Lease string    `bson:"lease"`
	At    time.Time `bson:"at"` // when it was taken; zero when SetQuota counted an active lease
}

// tokenDoc is a document of the quota_tokens collection: the k-th
// acquisition counted against a requests_per_minute limit, at At.
type tokenDoc struct {
	ID  string    `bson:"_id"` // quota key + "/" + gen + "/" + k
	Q   string    `bson:"q"`
	Gen string    `bson:"gen"`
	K   int64     `bson:"k"`
	At  time.Time `bson:"at"`
}

// bucketDoc is a document of the usage_hourly collection: the usage one
// store instance (Writer) counted for one hour, consumer, proxy, pool and
// target. The bucket of the contract is the sum over writers.
type bucketDoc struct {
	ID       string    `bson:"_id"`
	Hour     time.Time `bson:"hour"`
	Consumer string    `bson:"consumer"`
	Proxy    string    `bson:"proxy"`
	Pool     string    `bson:"pool"`
	Target   string    `bson:"target"`
	Writer   string    `bson:"writer"`
	Leases   int64     `bson:"leases"`
	Requests int64     `bson:"requests"`
	Sent     int64     `bson:"sent"`
	Received int64     `bson:"received"`
}
