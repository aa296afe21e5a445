package redis

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// maxGeoLat is the latitude limit of Redis GEO indexes (EPSG:3857).
const maxGeoLat = 85.05112878

// fields turns a flat [field, value, ...] script reply into a map.
func fields(v any) (map[string]string, error) {
	arr, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("unexpected script reply %T", v)
	}
	m := make(map[string]string, len(arr)/2)
	for i := 0; i+1 < len(arr); i += 2 {
		k, _ := arr[i].(string)
		val, _ := arr[i+1].(string)
		m[k] = val
	}
	return m, nil
}

func micros(s string) (time.Time, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("bad timestamp %q", s)
	}
	return time.UnixMicro(n).UTC(), nil
}

func optMicros(s string) (*time.Time, error) {
	if s == "" {
		return nil, nil
	}
	t, err := micros(s)
	return &t, err
}

func optInt(s string) (*int, error) {
	if s == "" {
		return nil, nil
	}
	n, err := strconv.Atoi(s)
	return &n, err
}

func optFloat(s string) (*float64, error) {
	if s == "" {
		return nil, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	return &f, err
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// decodeProxy builds a Proxy from its hash.
func decodeProxy(id string, m map[string]string) (*pharox.Proxy, error) {
	p := &pharox.Proxy{
		Host:           m["host"],
		Port:           atoi(m["port"]),
		Protocol:       pharox.Protocol(m["proto"]),
		Source:         m["src"],
		Country:        m["cc"],
		City:           m["city"],
		ISP:            m["isp"],
		Status:         pharox.ProxyStatus(m["status"]),
		CurrentLeases:  atoi(m["cur"]),
		LatencyMS:      int64(atoi(m["latms"])),
		LastError:      m["err"],
		LastStatusCode: atoi(m["code"]),
		FailureStreak:  atoi(m["streak"]),
	}
	var err error
	if p.ID, err = uuid.Parse(id); err != nil {
		return nil, fmt.Errorf("bad proxy id %q", id)
	}
	if p.PoolID, err = uuid.Parse(m["pool"]); err != nil {
		return nil, fmt.Errorf("proxy %s: bad pool id", id)
	}
	if m["cred"] == "1" {
		p.Credentials = &pharox.Credentials{User: m["user"], Password: m["pass"]}
	}
	if m["tags"] != "" {
		if err := json.Unmarshal([]byte(m["tags"]), &p.Tags); err != nil {
			return nil, fmt.Errorf("proxy %s: bad tags", id)
		}
	}
	var errs [7]error
	p.ASN, errs[0] = optInt(m["asn"])
	p.Latitude, errs[1] = optFloat(m["lat"])
	p.Longitude, errs[2] = optFloat(m["lon"])
	p.MaxConcurrency, errs[3] = optInt(m["maxc"])
	p.CheckedAt, errs[4] = optMicros(m["chk"])
	p.StatusChangedAt, errs[5] = optMicros(m["chg"])
	p.CreatedAt, errs[6] = micros(m["created"])
	for _, e := range errs {
		if e != nil {
			return nil, fmt.Errorf("proxy %s: %w", id, e)
		}
	}
	return p, nil
}

// proxyFromReply decodes a HGETALL reply of a proxy hash.
func proxyFromReply(id string, v any) (*pharox.Proxy, error) {
	m, err := fields(v)
	if err != nil {
		return nil, err
	}
	return decodeProxy(id, m)
}

// newProxy is one proxy as add_proxies.lua stores it.
type newProxy struct {
	ID   string   `json:"id"`
	Pool string   `json:"pool"`
	Uniq string   `json:"uniq"`
	F    []string `json:"f"`
	Idx  []string `json:"idx"`
	Geo  *geoPos  `json:"geo,omitempty"`
	FF   string   `json:"ff"`
}

type geoPos struct {
	Lat   string `json:"lat"`
	Lon   string `json:"lon"`
	Polar bool   `json:"polar,omitempty"`
}

// uniqKey identifies a proxy within its pool for duplicate detection.
func uniqKey(p *pharox.Proxy) string {
	user := ""
	if p.Credentials != nil {
		user = p.Credentials.User
	}
	return string(p.Protocol) + "|" + p.Host + "|" + strconv.Itoa(p.Port) + "|" + user
}

// encodeProxy turns a validated proxy into its stored form.
func encodeProxy(p *pharox.Proxy) newProxy {
	f := []string{
		"host", p.Host, "port", strconv.Itoa(p.Port), "proto", string(p.Protocol),
		"src", p.Source, "cc", p.Country, "city", p.City, "isp", p.ISP,
		"status", string(p.Status),
	}
	if p.Credentials != nil {
		f = append(f, "cred", "1", "user", p.Credentials.User, "pass", p.Credentials.Password)
	}
	if len(p.Tags) > 0 {
		tags, _ := json.Marshal(p.Tags)
		f = append(f, "tags", string(tags))
	}
	if p.ASN != nil {
		f = append(f, "asn", strconv.Itoa(*p.ASN))
	}
	if p.MaxConcurrency != nil {
		f = append(f, "maxc", strconv.Itoa(*p.MaxConcurrency))
	}
	np := newProxy{ID: p.ID.String(), Pool: p.PoolID.String(), Uniq: uniqKey(p), Idx: []string{}}
	if p.Latitude != nil && p.Longitude != nil {
		lat, lon := fmtFloat(*p.Latitude), fmtFloat(*p.Longitude)
		f = append(f, "lat", lat, "lon", lon)
		np.Geo = &geoPos{Lat: lat, Lon: lon, Polar: *p.Latitude > maxGeoLat || *p.Latitude < -maxGeoLat}
	}
	st := staticProxy{ID: p.ID.String(), Pool: p.PoolID.String(), Host: p.Host, Port: p.Port,
		Proto: string(p.Protocol), Src: p.Source, CC: p.Country, City: p.City, ISP: p.ISP,
		ASN: p.ASN, Lat: p.Latitude, Lon: p.Longitude, Tags: p.Tags, MaxC: p.MaxConcurrency}
	if p.Credentials != nil {
		st.Cred, st.User, st.Pass = true, p.Credentials.User, p.Credentials.Password
	}
	packed, _ := json.Marshal(st) // plain data: cannot fail
	np.F = append(f, "static", string(packed))
	np.FF = filterFields(p)
	add := func(field, v string) {
		if v != "" {
			np.Idx = append(np.Idx, "i:"+field+":"+v)
		}
	}
	add("src", p.Source)
	add("cc", p.Country)
	add("city", p.City)
	add("isp", p.ISP)
	add("proto", string(p.Protocol))
	if p.ASN != nil {
		add("asn", strconv.Itoa(*p.ASN))
	}
	for _, t := range p.Tags {
		add("tag", t)
	}
	return np
}

// filterFields packs what select.lua's filter evaluation reads of a
// proxy, so that one HMGET of the pool's ff hash serves a chunk of
// proxies: source, country, city, ISP, ASN, protocol, latitude and
// longitude as the proxy hash holds them, then the tags, each as its byte
// length, ':' and its bytes (see proxy_fields in select.lua).
func filterFields(p *pharox.Proxy) string {
	var asn, lat, lon string
	if p.ASN != nil {
		asn = strconv.Itoa(*p.ASN)
	}
	if p.Latitude != nil && p.Longitude != nil {
		lat, lon = fmtFloat(*p.Latitude), fmtFloat(*p.Longitude)
	}
	var b strings.Builder
	put := func(s string) {
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
	}
	for _, s := range [...]string{p.Source, p.Country, p.City, p.ISP, asn, string(p.Protocol), lat, lon} {
		put(s)
	}
	for _, t := range p.Tags {
		put(t)
	}
	return b.String()
}

// leaseWho is the part of a lease that scripts mostly carry along: the
// consumer's id, the lease's target, the consumer's name, the pool's name
// and the session key. The client packs it (encodeWho) into the lease's
// record; scripts read only the consumer id and the target (see
// lease_target in lib.lua).
type leaseWho struct {
	consumer, target, cname, pname, sess string
}

// encodeWho packs the consumer id followed by the target and the three
// names, each as its byte length, ':' and its bytes, so that names may
// hold any byte.
func encodeWho(consumer uuid.UUID, target, cname, pname, sess string) string {
	var b strings.Builder
	b.Grow(36 + len(target) + len(cname) + len(pname) + len(sess) + 16)
	b.WriteString(consumer.String())
	for _, s := range [...]string{target, cname, pname, sess} {
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
	}
	return b.String()
}

// decodeWho unpacks encodeWho's output.
func decodeWho(s string) (leaseWho, error) {
	var w leaseWho
	if len(s) < 36 {
		return w, errors.New("malformed who part")
	}
	w.consumer, s = s[:36], s[36:]
	for _, dst := range [...]*string{&w.target, &w.cname, &w.pname, &w.sess} {
		n, rest, ok := strings.Cut(s, ":")
		size, err := strconv.Atoi(n)
		if !ok || err != nil || size < 0 || size > len(rest) {
			return w, errors.New("malformed who part")
		}
		*dst, s = rest[:size], rest[size:]
	}
	if s != "" {
		return w, errors.New("malformed who part")
	}
	return w, nil
}

// encodeUsage packs a usage report as release.lua takes it:
// "requests,sent,received"; nil is "" (no report).
func encodeUsage(u *pharox.Usage) string {
	if u == nil {
		return ""
	}
	return strconv.FormatInt(u.Requests, 10) + "," + strconv.FormatInt(u.BytesSent, 10) + "," + strconv.FormatInt(u.BytesReceived, 10)
}

// decodeUsage unpacks encodeUsage's output.
func decodeUsage(s string) (*pharox.Usage, error) {
	f := strings.Split(s, ",")
	if len(f) != 3 {
		return nil, fmt.Errorf("malformed usage %q", s)
	}
	var n [3]int64
	for i, x := range f {
		v, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("malformed usage %q", s)
		}
		n[i] = v
	}
	return &pharox.Usage{Requests: n[0], BytesSent: n[1], BytesReceived: n[2]}, nil
}

// decodeLease builds a Lease from its record,
// "status|rel|exp|proxy|pool|maxc|q|acq|who" (see LEASES in lib.lua),
// where a released lease's rel is "<time>:<token>", followed by
// ":<usage>" when its release reported usage.
func decodeLease(id, record string) (*pharox.Lease, error) {
	f := strings.SplitN(record, "|", 9)
	if len(f) != 9 {
		return nil, fmt.Errorf("lease %s: malformed record", id)
	}
	w, err := decodeWho(f[8])
	if err != nil {
		return nil, fmt.Errorf("lease %s: %w", id, err)
	}
	l := &pharox.Lease{
		ConsumerName: w.cname,
		PoolName:     w.pname,
		Status:       pharox.LeaseStatus(f[0]),
		SessionKey:   w.sess,
		Target:       w.target,
	}
	var errs [8]error
	l.ID, errs[0] = uuid.Parse(id)
	l.ProxyID, errs[1] = uuid.Parse(f[3])
	l.ConsumerID, errs[2] = uuid.Parse(w.consumer)
	l.PoolID, errs[3] = uuid.Parse(f[4])
	l.AcquiredAt, errs[4] = micros(f[7])
	l.ExpiresAt, errs[5] = micros(f[2])
	// A release's token follows its time, then its usage report if any
	// (see end_lease in lib.lua).
	rel, rest, _ := strings.Cut(f[1], ":")
	l.ReleasedAt, errs[6] = optMicros(rel)
	if _, use, ok := strings.Cut(rest, ":"); ok {
		l.Usage, errs[7] = decodeUsage(use)
	}
	if !l.Status.Valid() {
		errs[0] = fmt.Errorf("unknown status %q", f[0])
	}
	for _, e := range errs {
		if e != nil {
			return nil, fmt.Errorf("lease %s: malformed record: %v", id, e)
		}
	}
	return l, nil
}

// leaseFromReply decodes a script reply holding a lease's record.
func leaseFromReply(id string, v any) (*pharox.Lease, error) {
	record, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("unexpected script reply %T", v)
	}
	return decodeLease(id, record)
}

// splitPair splits "a|b".
func splitPair(s string) (string, string, bool) {
	return strings.Cut(s, "|")
}

func jsonString(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// staticProxy is the part of a proxy that never changes after AddProxies,
// packed into the proxy hash's "static" field so that an acquisition
// returns ten values instead of the whole hash.
type staticProxy struct {
	ID    string   `json:"id"`
	Pool  string   `json:"pool"`
	Host  string   `json:"host"`
	Port  int      `json:"port"`
	Proto string   `json:"proto"`
	Cred  bool     `json:"cred,omitempty"`
	User  string   `json:"user,omitempty"`
	Pass  string   `json:"pass,omitempty"`
	Src   string   `json:"src,omitempty"`
	CC    string   `json:"cc,omitempty"`
	City  string   `json:"city,omitempty"`
	ISP   string   `json:"isp,omitempty"`
	ASN   *int     `json:"asn,omitempty"`
	Lat   *float64 `json:"lat,omitempty"`
	Lon   *float64 `json:"lon,omitempty"`
	Tags  []string `json:"tags,omitempty"`
	MaxC  *int     `json:"maxc,omitempty"`
}

// staticCacheLimit bounds the decoded static parts a Store keeps; the cache
// starts over when it is reached (proxies are rarely deleted and re-added).
const staticCacheLimit = 100000

type cachedStatic struct {
	raw string
	p   *pharox.Proxy
}

// staticProxyOf returns a fresh Proxy holding the static part raw, decoding
// it once per proxy and process.
func (s *Store) staticProxyOf(key, raw string) (*pharox.Proxy, error) {
	if raw == "" {
		return nil, fmt.Errorf("proxy record has no static part")
	}
	if v, ok := s.statics.Load(key); ok {
		if c := v.(*cachedStatic); c.raw == raw {
			return c.p.Clone(), nil
		}
	}
	var st staticProxy
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		return nil, fmt.Errorf("malformed static part")
	}
	p := &pharox.Proxy{
		Host: st.Host, Port: st.Port, Protocol: pharox.Protocol(st.Proto),
		Source: st.Src, Country: st.CC, City: st.City, ISP: st.ISP,
		ASN: st.ASN, Latitude: st.Lat, Longitude: st.Lon, Tags: st.Tags, MaxConcurrency: st.MaxC,
	}
	var err error
	if p.ID, err = uuid.Parse(st.ID); err != nil {
		return nil, fmt.Errorf("bad proxy id %q", st.ID)
	}
	if p.PoolID, err = uuid.Parse(st.Pool); err != nil {
		return nil, fmt.Errorf("proxy %s: bad pool id", st.ID)
	}
	if st.Cred {
		p.Credentials = &pharox.Credentials{User: st.User, Password: st.Pass}
	}
	if s.staticCount.Add(1) > staticCacheLimit {
		s.statics.Clear()
		s.staticCount.Store(0)
	}
	s.statics.Store(key, &cachedStatic{raw: raw, p: p})
	return p.Clone(), nil
}

// proxyFromDyn decodes proxy id's fields in the order of DYN in lib.lua.
func (s *Store) proxyFromDyn(id string, cur int64, v any) (*pharox.Proxy, error) {
	arr, ok := v.([]any)
	if !ok || len(arr) != 10 {
		return nil, fmt.Errorf("unexpected proxy reply")
	}
	str := func(i int) string { x, _ := arr[i].(string); return x }
	p, err := s.staticProxyOf(id, str(0))
	if err != nil {
		return nil, err
	}
	p.Status = pharox.ProxyStatus(str(1))
	p.CurrentLeases = int(cur)
	p.LatencyMS = int64(atoi(str(3)))
	p.LastError = str(4)
	p.LastStatusCode = atoi(str(5))
	p.FailureStreak = atoi(str(6))
	var errs [3]error
	p.CheckedAt, errs[0] = optMicros(str(2))
	p.StatusChangedAt, errs[1] = optMicros(str(7))
	p.CreatedAt, errs[2] = micros(str(8))
	for _, e := range errs {
		if e != nil {
			return nil, fmt.Errorf("proxy %s: %w", p.ID, e)
		}
	}
	return p, nil
}
