//go:build !unix

package storagetest

import "time"

// CPUTime is not measured here; the cpu metrics are then left out.
func CPUTime() time.Duration { return 0 }
