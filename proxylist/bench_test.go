package proxylist

import (
	"bufio"
	"fmt"
	"strings"
	"testing"
)

// benchList is n distinct lines in the four formats.
func benchList(n int) string {
	var b strings.Builder
	for i := range n {
		a, c := i/250, i%250
		switch i % 4 {
		case 0:
			fmt.Fprintf(&b, "10.%d.%d.1:8080\n", a, c)
		case 1:
			fmt.Fprintf(&b, "10.%d.%d.2:8080:user%d:pass%d\n", a, c, i, i)
		case 2:
			fmt.Fprintf(&b, "user%d:pass%d@10.%d.%d.3:3128\n", i, i, a, c)
		default:
			fmt.Fprintf(&b, "socks5://user%d:p%%40ss%d@[2001:db8::%x]:1080\n", i, i, i)
		}
	}
	return b.String()
}

// BenchmarkParse reports parse throughput against a baseline that only
// splits the same input into lines, the floor any parser pays.
func BenchmarkParse(b *testing.B) {
	const lines = 10000
	input := benchList(lines)
	b.Run("split-lines-baseline", func(b *testing.B) {
		b.SetBytes(int64(len(input)))
		for b.Loop() {
			sc := bufio.NewScanner(strings.NewReader(input))
			n := 0
			for sc.Scan() {
				n += len(sc.Bytes())
			}
			if n == 0 {
				b.Fatal("no lines")
			}
		}
		b.ReportMetric(float64(lines*b.N)/b.Elapsed().Seconds(), "lines/s")
	})
	b.Run("parse", func(b *testing.B) {
		b.SetBytes(int64(len(input)))
		for b.Loop() {
			proxies, errs := Parse(strings.NewReader(input), ParseOptions{})
			if len(proxies) != lines || len(errs) != 0 {
				b.Fatalf("parsed %d, %d errors: %v", len(proxies), len(errs), errs[:min(3, len(errs))])
			}
		}
		b.ReportMetric(float64(lines*b.N)/b.Elapsed().Seconds(), "lines/s")
	})
}
