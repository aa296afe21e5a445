//go:build !unix

package storagetest

import "time"

// cpuTime is not measured here; the cpu metrics are then left out.
func cpuTime() time.Duration { return 0 }
