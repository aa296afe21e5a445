package observe

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"

	"github.com/pharox/pharox"
)

// Logging returns callbacks that log acquisitions to l: every miss and
// every refusal by a quota (Info) and every error (Error), but only one
// successful acquisition in every (Debug), so a busy pool does not flood
// the log. every below 1 logs each one. Releases are not logged. Proxies are logged through their LogValue,
// which hides passwords.
func Logging(l *slog.Logger, every int) []pharox.ManagerOption {
	if every < 1 {
		every = 1
	}
	var n atomic.Uint64
	return []pharox.ManagerOption{
		pharox.WithAcquireCallback(func(ctx context.Context, ev pharox.AcquireEvent) {
			attrs := []slog.Attr{
				slog.String("pool", ev.Pool),
				slog.String("consumer", ev.Consumer),
				slog.String("strategy", string(ev.Strategy.OrDefault())),
				slog.Duration("duration", ev.Duration),
			}
			switch {
			case ev.Err == nil:
				if (n.Add(1)-1)%uint64(every) != 0 {
					return
				}
				if ev.Lease != nil {
					attrs = append(attrs, slog.String("lease", ev.Lease.ID.String()))
					if ev.Lease.Proxy != nil {
						attrs = append(attrs, slog.Any("proxy", ev.Lease.Proxy))
					}
				}
				if every > 1 {
					attrs = append(attrs, slog.Int("sampled_every", every))
				}
				l.LogAttrs(ctx, slog.LevelDebug, "pharox: lease acquired", attrs...)
			case errors.Is(ev.Err, pharox.ErrNoProxyAvailable):
				if ev.Stats != nil {
					attrs = append(attrs, slog.Int("available", ev.Stats.AvailableProxies),
						slog.Int("total", ev.Stats.TotalProxies))
				}
				l.LogAttrs(ctx, slog.LevelInfo, "pharox: no proxy available", attrs...)
			case errors.Is(ev.Err, pharox.ErrQuotaExceeded):
				// A limit doing its job: one line each, for the operator
				// who wonders why a consumer is refused.
				attrs = append(attrs, slog.String("err", ev.Err.Error()))
				l.LogAttrs(ctx, slog.LevelInfo, "pharox: acquire refused by a quota", attrs...)
			case errors.Is(ev.Err, pharox.ErrPoolNotFound), errors.Is(ev.Err, pharox.ErrConsumerNotFound),
				errors.Is(ev.Err, pharox.ErrInvalidArgument), errors.Is(ev.Err, pharox.ErrAlreadyExists):
				// The caller's mistake, answered to it: nothing for an
				// operator to fix.
				attrs = append(attrs, slog.String("err", ev.Err.Error()))
				l.LogAttrs(ctx, slog.LevelInfo, "pharox: acquire refused", attrs...)
			case errors.Is(ev.Err, context.Canceled):
				l.LogAttrs(ctx, slog.LevelDebug, "pharox: acquire canceled", attrs...)
			default:
				attrs = append(attrs, slog.String("err", ev.Err.Error()))
				l.LogAttrs(ctx, slog.LevelError, "pharox: acquire failed", attrs...)
			}
		}),
	}
}
