// Package proxylist parses and formats plain-text proxy lists, one proxy a
// line, in the formats proxy vendors hand out:
//
//	host:port
//	host:port:user:pass
//	user:pass@host:port
//	scheme://user:pass@host:port
//
// IPv6 hosts go in brackets ("[2001:db8::1]:8080"). Blank lines and lines
// whose first non-blank character is '#' are skipped; there are no trailing
// comments, since passwords may contain '#'.
//
// Credentials are taken literally in the first three formats (the password
// is everything after the user's first ':', so it may contain ':' and '@').
// In the URL format they are percent-escaped, as in any URL, so "%40" is '@'.
// [Format] writes the URL format, which carries the protocol and escapes
// whatever the credentials hold, so Format and Parse are inverses.
package proxylist

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// MaxLineLength bounds one line. Longer lines are reported as errors and
// skipped, so a stray binary file cannot make Parse hold it all in memory.
const MaxLineLength = 4096

// MaxCredentialsLength bounds user plus password, so that the line Format
// writes, where escaping may triple them, still fits in MaxLineLength.
const MaxCredentialsLength = 1024

// ParseOptions supplies what a line does not say.
type ParseOptions struct {
	// Protocol is used for lines without a scheme; empty means http.
	Protocol pharox.Protocol
	// PoolID, Country, Source, Tags, Status and MaxConcurrency are copied
	// onto every parsed proxy. Status empty means active; MaxConcurrency
	// nil means unlimited.
	PoolID         uuid.UUID
	Country        string
	Source         string
	Tags           []string
	Status         pharox.ProxyStatus
	MaxConcurrency *int
}

// validate checks the options once, so a bad default is reported once
// rather than on every line.
func (o *ParseOptions) validate() error {
	if o.Protocol != "" {
		if _, err := pharox.ParseProtocol(string(o.Protocol)); err != nil {
			return err
		}
	}
	if o.Status != "" {
		if _, err := pharox.ParseProxyStatus(string(o.Status)); err != nil {
			return err
		}
	}
	if o.MaxConcurrency != nil && *o.MaxConcurrency < 1 {
		return fmt.Errorf("%w: max_concurrency %d must be at least 1 (omit it for unlimited)", pharox.ErrInvalidArgument, *o.MaxConcurrency)
	}
	return nil
}

// LineError reports one line that could not be parsed. Its message never
// contains the line itself, which may hold a password.
type LineError struct {
	// Line is the 1-based line number; 0 means the error concerns the
	// options or the reader rather than one line.
	Line int
	// Err wraps pharox.ErrInvalidArgument for bad lines.
	Err error
}

// Error implements error.
func (e LineError) Error() string {
	if e.Line == 0 {
		return e.Err.Error()
	}
	return fmt.Sprintf("line %d: %v", e.Line, e.Err)
}

// Unwrap returns the underlying error.
func (e LineError) Unwrap() error { return e.Err }

// Parse reads a proxy list. It returns the proxies of the good lines,
// normalized and validated, in order, and one LineError per bad line; a
// line that repeats an earlier proxy (same protocol, host, port and user)
// is a bad line too, because a store rejects such duplicates. A read error
// ends parsing and is reported with the line it happened on. Invalid
// options give a single LineError with Line 0 and no proxies.
func Parse(r io.Reader, opts ParseOptions) (proxies []pharox.Proxy, errs []LineError) {
	errs = parse(r, &opts, func(_ int, p *pharox.Proxy) { proxies = append(proxies, *p) })
	return proxies, errs
}

// Entry is one parsed proxy with the line it came from.
type Entry struct {
	Line  int
	Proxy pharox.Proxy
}

// ParseEntries is Parse that also tells which line each proxy came from,
// for callers that check the proxies further and report by line.
func ParseEntries(r io.Reader, opts ParseOptions) (entries []Entry, errs []LineError) {
	errs = parse(r, &opts, func(line int, p *pharox.Proxy) { entries = append(entries, Entry{Line: line, Proxy: *p}) })
	return entries, errs
}

// parse runs the parser, handing each good proxy to emit.
func parse(r io.Reader, opts *ParseOptions, emit func(line int, p *pharox.Proxy)) (errs []LineError) {
	if err := opts.validate(); err != nil {
		return []LineError{{Line: 0, Err: err}}
	}
	seen := make(map[Key]int)
	br := bufio.NewReaderSize(r, MaxLineLength+1)
	for n := 1; ; n++ {
		line, tooLong, err := readLine(br)
		if err != nil && !errors.Is(err, io.EOF) {
			return append(errs, LineError{Line: n, Err: fmt.Errorf("read: %w", err)})
		}
		atEOF := err != nil
		if atEOF && len(line) == 0 && !tooLong {
			return errs
		}
		if tooLong {
			errs = append(errs, LineError{Line: n, Err: fmt.Errorf("%w: line longer than %d bytes", pharox.ErrInvalidArgument, MaxLineLength)})
		} else if p, ok, perr := parseLine(string(line), opts); perr != nil {
			errs = append(errs, LineError{Line: n, Err: perr})
		} else if ok {
			k := KeyOf(&p)
			if first, dup := seen[k]; dup {
				errs = append(errs, LineError{Line: n, Err: fmt.Errorf("%w: duplicate of line %d", pharox.ErrAlreadyExists, first)})
			} else {
				seen[k] = n
				emit(n, &p)
			}
		}
		if atEOF {
			return errs
		}
	}
}

// readLine returns the next line without its end of line. Past
// MaxLineLength it discards the rest of the line and reports tooLong.
func readLine(br *bufio.Reader) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := br.ReadSlice('\n')
		if !tooLong {
			line = append(line, chunk...)
			if len(line) > MaxLineLength+1 { // +1: the '\n' itself
				tooLong, line = true, nil
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		if len(line) > MaxLineLength {
			tooLong, line = true, nil
		}
		return line, tooLong, err
	}
}

// ParseLine parses one line. It returns ok false, and no error, for a
// blank or comment line.
func ParseLine(line string, opts ParseOptions) (p pharox.Proxy, ok bool, err error) {
	if err := opts.validate(); err != nil {
		return pharox.Proxy{}, false, err
	}
	return parseLine(line, &opts)
}

func parseLine(line string, opts *ParseOptions) (pharox.Proxy, bool, error) {
	s := strings.TrimSpace(line)
	if s == "" || s[0] == '#' {
		return pharox.Proxy{}, false, nil
	}
	var (
		p   pharox.Proxy
		err error
	)
	if i := strings.Index(s, "://"); i > 0 && isScheme(s[:i]) {
		p, err = parseURL(s[:i], s[i+3:])
	} else {
		p, err = parsePlain(s, opts)
	}
	if err != nil {
		return pharox.Proxy{}, false, err
	}
	if c := p.Credentials; c != nil && len(c.User)+len(c.Password) > MaxCredentialsLength {
		return pharox.Proxy{}, false, invalid("user and password longer than %d bytes", MaxCredentialsLength)
	}
	p.PoolID = opts.PoolID
	p.Country = opts.Country
	p.Source = opts.Source
	p.Status = opts.Status
	p.Tags = slices.Clone(opts.Tags)
	if opts.MaxConcurrency != nil {
		m := *opts.MaxConcurrency
		p.MaxConcurrency = &m
	}
	p.Normalize()
	if err := p.Validate(); err != nil {
		return pharox.Proxy{}, false, err
	}
	return p, true, nil
}

// isScheme reports whether s has the syntax of a URL scheme (RFC 3986),
// so that a colon-format password containing "://" is not taken for one.
func isScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{pharox.ErrInvalidArgument}, args...)...)
}

// parseURL parses scheme://[user[:pass]@]host:port[/] with percent-escaped
// credentials. It is hand-written rather than url.Parse because url.Parse
// quotes the whole input, password included, in its errors.
func parseURL(scheme, rest string) (pharox.Proxy, error) {
	proto := pharox.Protocol(strings.ToLower(scheme))
	if !proto.Valid() {
		if len(scheme) > 16 {
			scheme = scheme[:16] + "..."
		}
		return pharox.Proxy{}, invalid("unknown scheme %q (want http, https, socks4 or socks5)", scheme)
	}
	p := pharox.Proxy{Protocol: proto}
	hostport := rest
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		userinfo := rest[:at]
		hostport = rest[at+1:]
		rawUser, rawPass, _ := strings.Cut(userinfo, ":")
		user, err1 := url.PathUnescape(rawUser)
		pass, err2 := url.PathUnescape(rawPass)
		if err1 != nil || err2 != nil {
			return pharox.Proxy{}, invalid("credentials contain an invalid percent-escape")
		}
		if user != "" || pass != "" {
			p.Credentials = &pharox.Credentials{User: user, Password: pass}
		}
	}
	hostport = strings.TrimSuffix(hostport, "/")
	if strings.ContainsAny(hostport, "/?#") {
		return pharox.Proxy{}, invalid("proxy URL must not have a path, query or fragment")
	}
	host, port, err := splitHostPort(hostport)
	if err != nil {
		return pharox.Proxy{}, err
	}
	p.Host, p.Port = host, port
	return p, nil
}

// parsePlain parses the scheme-less formats.
func parsePlain(s string, opts *ParseOptions) (pharox.Proxy, error) {
	proto := opts.Protocol
	if proto == "" {
		proto = pharox.ProtocolHTTP
	}
	p := pharox.Proxy{Protocol: proto}
	// user:pass@host:port, recognised only when what follows the last '@'
	// is a host:port, since a colon-format password may contain '@'.
	if at := strings.LastIndexByte(s, '@'); at >= 0 {
		if host, port, err := splitHostPort(s[at+1:]); err == nil {
			user, pass, _ := strings.Cut(s[:at], ":")
			p.Host, p.Port = host, port
			if user != "" || pass != "" {
				p.Credentials = &pharox.Credentials{User: user, Password: pass}
			}
			return p, nil
		}
	}
	var hostPart, rest string
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return pharox.Proxy{}, invalid("missing ']' after IPv6 address")
		}
		hostPart, rest = s[1:end], s[end+1:]
		if !strings.HasPrefix(rest, ":") {
			return pharox.Proxy{}, invalid("missing port after ']'")
		}
		rest = rest[1:]
	} else {
		var ok bool
		hostPart, rest, ok = strings.Cut(s, ":")
		if !ok {
			return pharox.Proxy{}, invalid("missing port (want host:port, host:port:user:pass, user:pass@host:port or scheme://host:port)")
		}
	}
	fields := strings.SplitN(rest, ":", 3)
	if len(fields) == 2 {
		if net.ParseIP(s) != nil || net.ParseIP(hostPart+":"+fields[0]) != nil {
			return pharox.Proxy{}, invalid("IPv6 addresses must be in brackets, as in [2001:db8::1]:8080")
		}
		return pharox.Proxy{}, invalid("want host:port or host:port:user:pass, got 3 fields")
	}
	port, err := parsePort(fields[0])
	if err != nil {
		if net.ParseIP(s) != nil {
			return pharox.Proxy{}, invalid("IPv6 addresses must be in brackets, as in [2001:db8::1]:8080")
		}
		if strings.Contains(s, "@") {
			// Likely user:pass@host without a usable port: the "port"
			// field then holds part of the password, never to be quoted.
			return pharox.Proxy{}, invalid("port is not a number in 1-65535 (want host:port, host:port:user:pass or user:pass@host:port)")
		}
		return pharox.Proxy{}, err
	}
	if err := checkHost(hostPart); err != nil {
		return pharox.Proxy{}, err
	}
	p.Host, p.Port = hostPart, port
	if len(fields) == 3 && (fields[1] != "" || fields[2] != "") {
		p.Credentials = &pharox.Credentials{User: fields[1], Password: fields[2]}
	}
	return p, nil
}

// splitHostPort splits host:port or [ipv6]:port and checks both parts.
func splitHostPort(s string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, invalid("want host:port with IPv6 hosts in brackets")
	}
	port, err := parsePort(portStr)
	if err != nil {
		return "", 0, err
	}
	if err := checkHost(host); err != nil {
		return "", 0, err
	}
	return host, port, nil
}

func checkHost(host string) error {
	if strings.ContainsAny(host, "[]") {
		return invalid("misplaced bracket in host")
	}
	return pharox.ValidateHost(host)
}

// parsePort accepts decimal digits only: no sign, no spaces.
func parsePort(s string) (int, error) {
	if s == "" {
		return 0, invalid("port is empty")
	}
	if len(s) > 5 || strings.Trim(s, "0123456789") != "" {
		return 0, invalid("port %q is not a number in 1-65535", truncate(s, 8))
	}
	n, _ := strconv.Atoi(s)
	if n < 1 || n > 65535 {
		return 0, invalid("port %d out of range 1-65535", n)
	}
	return n, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Format writes p as a line of a proxy list, in the URL format:
// scheme://user:pass@host:port with percent-escaped credentials. The line
// holds the password: write it to files the operator asked for, never to
// logs. Metadata such as country or status is not part of the line. An
// empty protocol is written as http.
func Format(p *pharox.Proxy) string {
	var b strings.Builder
	scheme := string(p.Protocol)
	if scheme == "" {
		scheme = string(pharox.ProtocolHTTP)
	}
	b.WriteString(scheme)
	b.WriteString("://")
	if c := p.Credentials; c != nil && (c.User != "" || c.Password != "") {
		if c.Password == "" {
			b.WriteString(url.User(c.User).String())
		} else {
			b.WriteString(url.UserPassword(c.User, c.Password).String())
		}
		b.WriteByte('@')
	}
	b.WriteString(net.JoinHostPort(strings.Trim(p.Host, "[]"), strconv.Itoa(p.Port)))
	return b.String()
}

// Write writes proxies with [Format], one a line.
func Write(w io.Writer, proxies []*pharox.Proxy) error {
	bw := bufio.NewWriter(w)
	for _, p := range proxies {
		bw.WriteString(Format(p))
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// Key identifies a proxy within a pool the way stores do for duplicates:
// protocol, host, port and user.
type Key struct {
	Protocol pharox.Protocol
	Host     string
	Port     int
	User     string
}

// KeyOf returns p's duplicate key.
func KeyOf(p *pharox.Proxy) Key {
	k := Key{Protocol: p.Protocol, Host: p.Host, Port: p.Port}
	if p.Credentials != nil {
		k.User = p.Credentials.User
	}
	return k
}
