package proxylist

import (
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

func cred(u, p string) *pharox.Credentials { return &pharox.Credentials{User: u, Password: p} }

func TestParseLineFormats(t *testing.T) {
	type want struct {
		proto pharox.Protocol
		host  string
		port  int
		cred  *pharox.Credentials
	}
	cases := []struct {
		name string
		line string
		opts ParseOptions
		want want
	}{
		{"host:port", "1.2.3.4:8080", ParseOptions{}, want{"http", "1.2.3.4", 8080, nil}},
		{"dns host", "proxy.example.com:3128", ParseOptions{}, want{"http", "proxy.example.com", 3128, nil}},
		{"surrounding space", "  \t1.2.3.4:80 \r", ParseOptions{}, want{"http", "1.2.3.4", 80, nil}},
		{"default protocol", "1.2.3.4:1080", ParseOptions{Protocol: "SOCKS5"}, want{"socks5", "1.2.3.4", 1080, nil}},
		{"host:port:user:pass", "1.2.3.4:8080:alice:s3cret", ParseOptions{}, want{"http", "1.2.3.4", 8080, cred("alice", "s3cret")}},
		{"colon pass with colon and at", "1.2.3.4:8080:alice:p:a@ss", ParseOptions{}, want{"http", "1.2.3.4", 8080, cred("alice", "p:a@ss")}},
		{"colon empty pass", "1.2.3.4:8080:alice:", ParseOptions{}, want{"http", "1.2.3.4", 8080, cred("alice", "")}},
		{"colon empty creds", "1.2.3.4:8080::", ParseOptions{}, want{"http", "1.2.3.4", 8080, nil}},
		{"user:pass@host:port", "alice:s3cret@1.2.3.4:8080", ParseOptions{}, want{"http", "1.2.3.4", 8080, cred("alice", "s3cret")}},
		{"at form raw pass with at", "alice:p@ss@proxy.example.com:8080", ParseOptions{}, want{"http", "proxy.example.com", 8080, cred("alice", "p@ss")}},
		{"at form user only", "alice@1.2.3.4:8080", ParseOptions{}, want{"http", "1.2.3.4", 8080, cred("alice", "")}},
		{"url", "socks5://alice:s3cret@1.2.3.4:1080", ParseOptions{Protocol: "http"}, want{"socks5", "1.2.3.4", 1080, cred("alice", "s3cret")}},
		{"url upper scheme", "HTTPS://1.2.3.4:443/", ParseOptions{}, want{"https", "1.2.3.4", 443, nil}},
		{"url escaped creds", "http://al%3Aice:p%40ss%2Fw%25rd@h.example:80", ParseOptions{}, want{"http", "h.example", 80, cred("al:ice", "p@ss/w%rd")}},
		{"url plus kept", "http://a+b:c+d@h.example:80", ParseOptions{}, want{"http", "h.example", 80, cred("a+b", "c+d")}},
		{"url empty user", "http://:pw@h.example:80", ParseOptions{}, want{"http", "h.example", 80, cred("", "pw")}},
		{"ipv6", "[2001:db8::1]:8080", ParseOptions{}, want{"http", "2001:db8::1", 8080, nil}},
		{"ipv6 colon creds", "[2001:db8::1]:8080:alice:pw", ParseOptions{}, want{"http", "2001:db8::1", 8080, cred("alice", "pw")}},
		{"ipv6 at form", "alice:pw@[::1]:8080", ParseOptions{}, want{"http", "::1", 8080, cred("alice", "pw")}},
		{"ipv6 url", "socks4://[::1]:1080", ParseOptions{}, want{"socks4", "::1", 1080, nil}},
		{"colon pass containing scheme-like text", "h.example:80:u:pa://ss", ParseOptions{}, want{"http", "h.example", 80, cred("u", "pa://ss")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, ok, err := ParseLine(tc.line, tc.opts)
			if err != nil || !ok {
				t.Fatalf("ParseLine(%q) = ok %v, err %v", tc.line, ok, err)
			}
			got := want{p.Protocol, p.Host, p.Port, p.Credentials}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("ParseLine(%q) = %+v (cred %#v), want %+v (cred %#v)", tc.line, got, got.cred, tc.want, tc.want.cred)
			}
			if p.Status != pharox.StatusActive {
				t.Errorf("status = %q, want active", p.Status)
			}
			// The inverse: Format then Parse gives the same proxy.
			back, ok, err := ParseLine(Format(&p), ParseOptions{})
			if err != nil || !ok {
				t.Fatalf("ParseLine(Format) = ok %v, err %v", ok, err)
			}
			if g := (want{back.Protocol, back.Host, back.Port, back.Credentials}); !reflect.DeepEqual(g, tc.want) {
				t.Fatalf("round trip = %+v, want %+v", g, tc.want)
			}
		})
	}
}

func TestParseLineSkips(t *testing.T) {
	for _, line := range []string{"", "   ", "\t\r", "# comment", "   # 1.2.3.4:80"} {
		p, ok, err := ParseLine(line, ParseOptions{})
		if ok || err != nil || p.Host != "" {
			t.Errorf("ParseLine(%q) = %+v, %v, %v; want skipped", line, p, ok, err)
		}
	}
}

func TestParseLineBad(t *testing.T) {
	cases := []struct {
		line, msg string
	}{
		{"1.2.3.4", "missing port"},
		{"1.2.3.4:", "port is empty"},
		{"1.2.3.4:0", "out of range"},
		{"1.2.3.4:65536", "out of range"},
		{"1.2.3.4:-1", "not a number"},
		{"1.2.3.4:+80", "not a number"},
		{"1.2.3.4:80x", "not a number"},
		{"1.2.3.4:80:user", "3 fields"},
		{"2001:db8::1:8080", "brackets"},
		{"::1", "brackets"},
		{"[::1:8080", "missing ']'"},
		{"[::1]8080", "missing port"},
		{"bad host!:80", "not a valid IP address or DNS name"},
		{":80", "host is empty"},
		{"ftp://1.2.3.4:21", "unknown scheme"},
		{"http://1.2.3.4", "want host:port"},
		{"http://1.2.3.4:80/path", "path"},
		{"http://1.2.3.4:80?q=1", "path, query"},
		{"http://u:%zzsecret@1.2.3.4:80", "percent-escape"},
		{"http://u%0Aser:pw@1.2.3.4:80", "line break"},
		{"socks5://[fe80::1%25eth0]:1080", "not a valid IP"},
	}
	for _, tc := range cases {
		t.Run(tc.line, func(t *testing.T) {
			_, ok, err := ParseLine(tc.line, ParseOptions{})
			if err == nil || ok {
				t.Fatalf("ParseLine(%q) = ok %v, nil error; want error", tc.line, ok)
			}
			if !errors.Is(err, pharox.ErrInvalidArgument) {
				t.Errorf("error %v does not wrap ErrInvalidArgument", err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not mention %q", err, tc.msg)
			}
		})
	}
}

func TestErrorsNeverContainPassword(t *testing.T) {
	const secret = "Sup3rSecretPw"
	lines := []string{
		"http://user:" + secret + "@bad host:80",
		"http://user:" + secret + "%zz@1.2.3.4:80",
		"ftp://user:" + secret + "@1.2.3.4:80",
		"1.2.3.4:99999:user:" + secret,
		"user:" + secret + "@1.2.3.4:0",
		"http://user:" + secret + "@1.2.3.4:80/x",
	}
	_, errs := Parse(strings.NewReader(strings.Join(lines, "\n")), ParseOptions{})
	if len(errs) != len(lines) {
		t.Fatalf("got %d errors, want %d: %v", len(errs), len(lines), errs)
	}
	for _, e := range errs {
		if strings.Contains(e.Error(), secret) {
			t.Errorf("error leaks the password: %v", e)
		}
	}
}

func TestParseListLineNumbersAndOptions(t *testing.T) {
	input := strings.Join([]string{
		"# vendor list",                  // 1
		"1.2.3.4:8080",                   // 2
		"",                               // 3
		"not a proxy",                    // 4
		"user:pw@5.6.7.8:3128",           // 5
		"1.2.3.4:8080",                   // 6 duplicate of 2
		"socks5://1.2.3.4:8080",          // 7 other protocol: not a duplicate
		"1.2.3.4:8080:user:pw",           // 8 other user: not a duplicate
		"1.2.3.4:99999",                  // 9
		"http://user:other@5.6.7.8:3128", // 10 duplicate of 5 (same user)
	}, "\r\n") // Windows line ends too
	poolID := uuid.New()
	maxc := 3
	opts := ParseOptions{PoolID: poolID, Country: " de ", Source: "vendor-a", Tags: []string{"dc"}, MaxConcurrency: &maxc, Status: "slow"}
	proxies, errs := Parse(strings.NewReader(input), opts)

	var gotLines []int
	for _, e := range errs {
		gotLines = append(gotLines, e.Line)
	}
	if want := []int{4, 6, 9, 10}; !reflect.DeepEqual(gotLines, want) {
		t.Fatalf("error lines = %v, want %v (errors: %v)", gotLines, want, errs)
	}
	if !errors.Is(errs[1], pharox.ErrAlreadyExists) || !strings.Contains(errs[1].Error(), "line 2") {
		t.Errorf("duplicate error = %v, want ErrAlreadyExists naming line 2", errs[1])
	}
	if !strings.HasPrefix(errs[0].Error(), "line 4: ") {
		t.Errorf("error text = %q, want a line 4 prefix", errs[0].Error())
	}
	var hosts []string
	for _, p := range proxies {
		hosts = append(hosts, Format(&p))
		if p.PoolID != poolID || p.Country != "DE" || p.Source != "vendor-a" || p.Status != pharox.StatusSlow ||
			p.MaxConcurrency == nil || *p.MaxConcurrency != 3 || !reflect.DeepEqual(p.Tags, []string{"dc"}) {
			t.Errorf("options not applied: %+v", p)
		}
	}
	want := []string{"http://1.2.3.4:8080", "http://user:pw@5.6.7.8:3128", "socks5://1.2.3.4:8080", "http://user:pw@1.2.3.4:8080"}
	if !reflect.DeepEqual(hosts, want) {
		t.Fatalf("proxies = %v, want %v", hosts, want)
	}
	entries, _ := ParseEntries(strings.NewReader(input), opts)
	var entryLines []int
	for i, e := range entries {
		entryLines = append(entryLines, e.Line)
		if Format(&e.Proxy) != want[i] {
			t.Errorf("entry %d = %s, want %s", i, Format(&e.Proxy), want[i])
		}
	}
	if !reflect.DeepEqual(entryLines, []int{2, 5, 7, 8}) {
		t.Errorf("entry lines = %v, want [2 5 7 8]", entryLines)
	}
	// Each proxy owns its MaxConcurrency and Tags.
	*proxies[0].MaxConcurrency = 9
	proxies[0].Tags[0] = "changed"
	if *proxies[1].MaxConcurrency != 3 || proxies[1].Tags[0] != "dc" || maxc != 3 || opts.Tags[0] != "dc" {
		t.Error("parsed proxies share MaxConcurrency or Tags")
	}
}

func TestParseBadOptions(t *testing.T) {
	zero := 0
	for _, opts := range []ParseOptions{{Protocol: "ftp"}, {Status: "dead"}, {MaxConcurrency: &zero}} {
		proxies, errs := Parse(strings.NewReader("1.2.3.4:80\n"), opts)
		if len(proxies) != 0 || len(errs) != 1 || errs[0].Line != 0 || !errors.Is(errs[0], pharox.ErrInvalidArgument) {
			t.Errorf("Parse with %+v = %v, %v; want one line-0 invalid argument error", opts, proxies, errs)
		}
	}
}

func TestParseLongLineAndNoTrailingNewline(t *testing.T) {
	input := "1.2.3.4:80\n" + strings.Repeat("x", MaxLineLength+10) + "\n5.6.7.8:81"
	proxies, errs := Parse(strings.NewReader(input), ParseOptions{})
	if len(errs) != 1 || errs[0].Line != 2 || !strings.Contains(errs[0].Error(), "longer than") {
		t.Fatalf("errs = %v, want one too-long error on line 2", errs)
	}
	if len(proxies) != 2 || proxies[1].Host != "5.6.7.8" {
		t.Fatalf("proxies = %v, want both good lines", proxies)
	}
	// A line of exactly MaxLineLength bytes is not too long.
	exact := "# " + strings.Repeat("c", MaxLineLength-3) + "\n1.2.3.4:80"
	proxies, errs = Parse(strings.NewReader(exact+"\n"), ParseOptions{})
	if len(errs) != 0 || len(proxies) != 1 {
		t.Fatalf("line of %d bytes: %v, %v", MaxLineLength, proxies, errs)
	}
	// Credentials are bounded so that Format's escaped line fits.
	long := "1.2.3.4:80:u:" + strings.Repeat("|", MaxCredentialsLength)
	if _, _, err := ParseLine(long, ParseOptions{}); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("over-long credentials: err = %v", err)
	}
	exact = "1.2.3.4:80:u:" + strings.Repeat("|", MaxCredentialsLength-1)
	proxies, errs = Parse(strings.NewReader(exact+"\n"), ParseOptions{})
	if len(errs) != 0 || len(proxies) != 1 {
		t.Fatalf("credentials of %d bytes: %v, %v", MaxCredentialsLength, proxies, errs)
	}
	if line := Format(&proxies[0]); len(line) > MaxLineLength {
		t.Fatalf("Format wrote %d bytes", len(line))
	}
}

func TestParseReadError(t *testing.T) {
	// The reader fails in the middle of line 2: line 1 is kept, the partial
	// line is dropped and the failure is reported on line 2.
	r := io.MultiReader(strings.NewReader("1.2.3.4:80\n5.6.7.8:8"), iotest.ErrReader(errors.New("disk on fire")))
	proxies, errs := Parse(r, ParseOptions{})
	if len(proxies) != 1 || len(errs) != 1 || errs[0].Line != 2 || !strings.Contains(errs[0].Error(), "disk on fire") {
		t.Fatalf("Parse(failing reader) = %v, %v", proxies, errs)
	}
}

func TestFormat(t *testing.T) {
	cases := []struct {
		p    pharox.Proxy
		want string
	}{
		{pharox.Proxy{Host: "1.2.3.4", Port: 80, Protocol: "http"}, "http://1.2.3.4:80"},
		{pharox.Proxy{Host: "::1", Port: 1080, Protocol: "socks5"}, "socks5://[::1]:1080"},
		{pharox.Proxy{Host: "h.example", Port: 80}, "http://h.example:80"},
		{pharox.Proxy{Host: "h.example", Port: 80, Protocol: "http", Credentials: cred("u", "")}, "http://u@h.example:80"},
		{pharox.Proxy{Host: "h.example", Port: 80, Protocol: "http", Credentials: cred("", "")}, "http://h.example:80"},
		{pharox.Proxy{Host: "h.example", Port: 80, Protocol: "http", Credentials: cred("a@b", "p:w/d?#% ")}, "http://a%40b:p%3Aw%2Fd%3F%23%25%20@h.example:80"},
	}
	for _, tc := range cases {
		if got := Format(&tc.p); got != tc.want {
			t.Errorf("Format(%v) = %q, want %q", &tc.p, got, tc.want)
		}
	}
	var b strings.Builder
	if err := Write(&b, []*pharox.Proxy{&cases[0].p, &cases[1].p}); err != nil {
		t.Fatal(err)
	}
	if b.String() != "http://1.2.3.4:80\nsocks5://[::1]:1080\n" {
		t.Errorf("Write = %q", b.String())
	}
}

// FuzzParse checks that Parse never panics, that its counts add up, and
// that whatever it accepts survives Format then Parse unchanged.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"1.2.3.4:8080",
		"1.2.3.4:8080:user:pass",
		"user:pass@1.2.3.4:8080",
		"socks5://us%40er:p%3Ass@proxy.example.com:1080/",
		"[2001:db8::1]:3128:u:p",
		"http://[::1]:80",
		"# comment\n\n1.2.3.4:80\n1.2.3.4:80\nbad",
		"h:1:u:p@ss:w0rd",
		"a:b@c@d:1",
		"HTTPS://:pw@x.y:443",
		"1.2.3.4:80:\x00:\xff",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input string) {
		proxies, errs := Parse(strings.NewReader(input), ParseOptions{Protocol: "socks4"})
		for _, e := range errs {
			if e.Line < 1 || e.Err == nil {
				t.Fatalf("bad LineError %+v", e)
			}
		}
		for i := range proxies {
			p := &proxies[i]
			line := Format(p)
			if strings.ContainsAny(line, "\r\n") {
				t.Fatalf("Format(%#v) = %q contains a line break", p, line)
			}
			back, errs := Parse(strings.NewReader(line), ParseOptions{})
			if len(errs) != 0 || len(back) != 1 {
				t.Fatalf("Parse(Format(%s)) = %.200q: %d proxies, errors %v", p, line, len(back), errs)
			}
			b := &back[0]
			if b.Protocol != p.Protocol || b.Host != p.Host || b.Port != p.Port || !reflect.DeepEqual(b.Credentials, p.Credentials) {
				t.Fatalf("round trip of %q via %q: got %s %s %d %#v, want %s %s %d %#v", input, line,
					b.Protocol, b.Host, b.Port, b.Credentials, p.Protocol, p.Host, p.Port, p.Credentials)
			}
		}
	})
}
