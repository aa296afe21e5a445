// Package testpeers runs the peers the gateway and transport tests talk
// to, all real servers on loopback: an origin [Target] (plain HTTP and
// TLS) that records which source address each request came from, and
// upstream proxies ([StartHTTP], [StartHTTPS], [StartSOCKS5],
// [StartSOCKS4]). Upstream HTTP/CONNECT proxies are
// github.com/elazarl/goproxy, SOCKS5 ones github.com/armon/go-socks5 and
// SOCKS4 ones a few lines of this package.
//
// Each upstream listens on an address of its own in 127.0.0.0/8 (Linux
// routes all of it to loopback) and dials the target from that same
// address, so the target tells from r.RemoteAddr which upstream a request
// came through. Every peer is stopped by a t.Cleanup.
//
// The package is for _test.go files (the linter's depguard rule keeps it
// out of the product).
package testpeers
