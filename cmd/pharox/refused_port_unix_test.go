//go:build unix

package main

import (
	"syscall"
	"testing"
)

// refusedPort returns a loopback TCP port that refuses connections for the
// rest of the test: a socket bound to it that never listens holds it, so
// no other test can start a server there (a port freed by closing a
// listener can be taken by a parallel test before it is dialed).
func refusedPort(t *testing.T) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return sa.(*syscall.SockaddrInet4).Port
}
