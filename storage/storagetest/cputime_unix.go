//go:build unix

package storagetest

import (
	"syscall"
	"time"
)

// CPUTime is the process's user+system CPU time. On a shared machine it
// shows the work an operation costs without the time spent waiting for a
// core, which wall-clock figures include.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
