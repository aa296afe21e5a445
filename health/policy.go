package health

import (
	"time"

	"github.com/pharox/pharox"
)

// Defaults applied by NewOrchestrator.
const (
	DefaultConcurrency      = 50
	DefaultFailureThreshold = 3
	DefaultBanCooldown      = 5 * time.Minute
	DefaultMaxBanCooldown   = 6 * time.Hour
	// DefaultReportLimit bounds the Slowest and Failing lists of a summary.
	DefaultReportLimit = 10
	// DefaultMaxBannedShare is the share of a pool one sweep may ban.
	DefaultMaxBannedShare = 0.5
)

// BanCooldown returns how long a banned proxy rests after its last probe
// before it is probed again: base for the probe that banned it (failure
// streak equal to threshold), doubling with every further failed probe,
// never more than maxCooldown (when positive). A streak below the threshold
// (for example after a manual ban, which resets the streak) rests for base.
func BanCooldown(streak, threshold int, base, maxCooldown time.Duration) time.Duration {
	if base <= 0 {
		return 0
	}
	extra := streak - max(1, threshold)
	d := base
	for i := 0; i < extra; i++ {
		if maxCooldown > 0 && d >= maxCooldown {
			break
		}
		if d > time.Duration(1<<62)/2 {
			// One more doubling would overflow; nothing waits that long.
			break
		}
		d *= 2
	}
	if maxCooldown > 0 && d > maxCooldown {
		d = maxCooldown
	}
	return d
}

// NextProbeAt returns when p is due for its next probe. Only banned proxies
// wait: until CheckedAt + BanCooldown(FailureStreak, ...). Every other
// proxy, and a banned one never checked, is due at once (zero time), so an
// inactive proxy is probed on every sweep and recovers as soon as it works.
func NextProbeAt(p *pharox.Proxy, threshold int, base, maxCooldown time.Duration) time.Time {
	if p == nil || p.Status != pharox.StatusBanned || p.CheckedAt == nil {
		return time.Time{}
	}
	return p.CheckedAt.Add(BanCooldown(p.FailureStreak, threshold, base, maxCooldown))
}
