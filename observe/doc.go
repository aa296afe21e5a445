// Package observe turns a [pharox.Manager]'s events into metrics, traces
// and logs. Each part hooks the Manager's callbacks and hands back
// ManagerOptions, so library users wire it the same way the service does:
//
//	reg := prometheus.NewRegistry()
//	rec, _ := observe.NewPrometheus(reg, observe.PrometheusOptions{})
//	opts := append(rec.ManagerOptions(), observe.Tracing(otel.GetTracerProvider())...)
//	opts = append(opts, observe.Logging(slog.Default(), 100)...)
//	mgr := pharox.NewManager(store, opts...)
//
// Callbacks run on the caller's goroutine after each acquisition and
// release, so every part here is cheap: counters, one span, or a sampled
// log line.
package observe
