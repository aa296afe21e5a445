package observe

import (
	"context"
	"errors"

	"github.com/pharox/pharox"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// TracerName is the instrumentation scope of pharox spans.
const TracerName = "github.com/pharox/pharox/observe"

// Tracing returns callbacks that record a span per acquisition
// ("pharox.acquire", spanning the attempt including any wait) and per
// release ("pharox.release"), as children of the span in the caller's
// context. Misses are not errors: they carry pharox.result=miss.
// Attributes never include credentials.
func Tracing(tp trace.TracerProvider) []pharox.ManagerOption {
	tr := tp.Tracer(TracerName)
	return []pharox.ManagerOption{
		pharox.WithAcquireCallback(func(ctx context.Context, ev pharox.AcquireEvent) {
			_, span := tr.Start(ctx, "pharox.acquire", trace.WithTimestamp(ev.Started),
				trace.WithSpanKind(trace.SpanKindInternal))
			attrs := []attribute.KeyValue{
				attribute.String("pharox.pool", ev.Pool),
				attribute.String("pharox.consumer", ev.Consumer),
				attribute.String("pharox.strategy", string(ev.Strategy.OrDefault())),
			}
			switch {
			case ev.Err == nil && ev.Lease != nil:
				attrs = append(attrs, attribute.String("pharox.result", StatusHit),
					attribute.String("pharox.lease_id", ev.Lease.ID.String()),
					attribute.String("pharox.proxy_id", ev.Lease.ProxyID.String()))
			case errors.Is(ev.Err, pharox.ErrNoProxyAvailable):
				attrs = append(attrs, attribute.String("pharox.result", StatusMiss))
			default:
				attrs = append(attrs, attribute.String("pharox.result", StatusError))
				if ev.Err != nil {
					span.RecordError(ev.Err)
					span.SetStatus(codes.Error, ev.Err.Error())
				}
			}
			span.SetAttributes(attrs...)
			span.End(trace.WithTimestamp(ev.Finished))
		}),
		pharox.WithReleaseCallback(func(ctx context.Context, ev pharox.ReleaseEvent) {
			_, span := tr.Start(ctx, "pharox.release", trace.WithTimestamp(ev.ReleasedAt),
				trace.WithSpanKind(trace.SpanKindInternal))
			attrs := []attribute.KeyValue{
				attribute.String("pharox.pool", ev.Pool),
				attribute.Float64("pharox.lease_duration_seconds", ev.LeaseDuration.Seconds()),
			}
			if ev.Lease != nil {
				attrs = append(attrs,
					attribute.String("pharox.consumer", ev.Lease.ConsumerName),
					attribute.String("pharox.lease_id", ev.Lease.ID.String()),
					attribute.String("pharox.proxy_id", ev.Lease.ProxyID.String()))
			}
			span.SetAttributes(attrs...)
			span.End(trace.WithTimestamp(ev.ReleasedAt))
		}),
	}
}
