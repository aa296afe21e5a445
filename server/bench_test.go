package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/observe"
	"github.com/pharox/pharox/server"
	"github.com/prometheus/client_golang/prometheus"
)

// benchClients is how many clients acquire and release at once.
const benchClients = 32

// Baselines measured by earlier sub-benchmarks of the same run, so that
// later figures can be reported as ratios of them: the in-process
// Manager's pairs/s and CPU per pair, and a trivial net/http JSON
// handler's CPU per pair (called directly) and pairs/s (over loopback).
var (
	managerPairsPerSec, managerCPUPerPair float64
	trivialCPUPerPair, trivialPairsPerSec float64
	trivialHTTPCPUPerPair                 float64
)

func benchStore(b *testing.B) pharox.Storage {
	b.Helper()
	ctx := context.Background()
	s := testfactory.Memory(b)
	b.Cleanup(func() { _ = s.Close() })
	pool, err := pharox.BootstrapPool(ctx, s, "bench", "")
	if err != nil {
		b.Fatal(err)
	}
	one := 1
	for i := range 2 * benchClients {
		p := pharox.Proxy{Host: fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), Port: 8080, Protocol: pharox.ProtocolHTTP, MaxConcurrency: &one}
		if _, err := pharox.BootstrapProxy(ctx, s, pool, p); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

func parallelism() int {
	return (benchClients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0)
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// report records throughput, and the CPU time spent per pair by client and
// server together: on a shared, loaded machine wall-clock throughput
// depends on the neighbours, while CPU per pair does not, and
// GOMAXPROCS / cpu-per-pair projects the throughput of an idle box.
func report(b *testing.B, start time.Time, cpuStart time.Duration, ratio bool) (rate, perPair float64) {
	wall := time.Since(start)
	cpu := cpuTime() - cpuStart
	rate = float64(b.N) / wall.Seconds()
	b.ReportMetric(rate, "pairs/s")
	perPair = cpu.Seconds() / float64(b.N)
	b.ReportMetric(perPair*1e6, "cpu-us/pair")
	b.ReportMetric(float64(runtime.GOMAXPROCS(0))/perPair, "idle-pairs/s")
	if ratio && managerPairsPerSec > 0 {
		b.ReportMetric(rate/managerPairsPerSec, "x_manager")
	}
	return rate, perPair
}

// BenchmarkAcquireRelease measures acquire+release pairs by 32 concurrent
// clients against the memory store: in process through the Manager (the
// baseline), then over HTTP on loopback with client and server in this
// process, without and with the Prometheus recorder.
func BenchmarkAcquireRelease(b *testing.B) {
	b.Run("manager", func(b *testing.B) {
		mgr := pharox.NewManager(benchStore(b))
		opts := &pharox.AcquireOptions{Consumer: "bench", Duration: time.Minute}
		b.SetParallelism(parallelism())
		b.ResetTimer()
		start, cpuStart := time.Now(), cpuTime()
		b.RunParallel(func(pb *testing.PB) {
			ctx := context.Background()
			for pb.Next() {
				l, err := mgr.Acquire(ctx, "bench", opts)
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := mgr.Release(ctx, l.ID); err != nil {
					b.Error(err)
					return
				}
			}
		})
		managerPairsPerSec, managerCPUPerPair = report(b, start, cpuStart, false)
	})
	b.Run("trivial-handler", func(b *testing.B) {
		_, trivialCPUPerPair = benchDirect(b, trivialJSON(), false)
	})
	b.Run("handler", func(b *testing.B) {
		srv := server.New(pharox.NewManager(benchStore(b)), server.Options{
			ConsumerKeys: []string{"bench-key"}, Logger: slog.New(slog.DiscardHandler), ReapInterval: -1})
		_, perPair := benchDirect(b, srv, true)
		// The handler path's CPU per pair over its floor: the Manager's
		// work plus a trivial JSON handler's. The aim is at most 3.
		if floor := managerCPUPerPair + trivialCPUPerPair; floor > 0 {
			b.ReportMetric(perPair/floor, "x_floor")
		}
	})
	b.Run("trivial-http", func(b *testing.B) {
		hs := httptest.NewServer(trivialJSON())
		b.Cleanup(hs.Close)
		trivialPairsPerSec, trivialHTTPCPUPerPair = benchHTTPServer(b, hs.URL, false)
	})
	b.Run("http", func(b *testing.B) { benchHTTP(b, false) })
	b.Run("http+metrics", func(b *testing.B) { benchHTTP(b, true) })
}

// trivialJSON is the baseline handler: it decodes a small JSON body and
// answers a small JSON object, two requests per pair like the service
// (POST /v1/leases/ answers an id, POST /v1/leases/{id}/release answers
// 200), with no auth, validation, metrics or storage.
func trivialJSON() http.Handler {
	mux := http.NewServeMux()
	type answer struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	mux.HandleFunc("POST /v1/leases/{$}", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			PoolName     string  `json:"pool_name"`
			ConsumerName string  `json:"consumer_name"`
			TTLSeconds   float64 `json:"ttl_seconds"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(answer{ID: "6f1c3a52-8d0e-4b7a-9f65-3e2d1c0b9a87", Status: "active"})
	})
	mux.HandleFunc("POST /v1/leases/{id}/release", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(answer{ID: r.PathValue("id"), Status: "released"})
	})
	return mux
}

// benchHTTP measures the service over loopback, reporting pairs/s as a
// ratio of the trivial handler's in the same run (aim: 0.7 or more).
func benchHTTP(b *testing.B, metrics bool) {
	var mopts []pharox.ManagerOption
	opts := server.Options{ConsumerKeys: []string{"bench-key"}, Logger: slog.New(slog.DiscardHandler), ReapInterval: -1}
	if metrics {
		reg := prometheus.NewRegistry()
		rec, err := observe.NewPrometheus(reg, observe.PrometheusOptions{})
		if err != nil {
			b.Fatal(err)
		}
		mopts = rec.ManagerOptions()
		opts.Registerer, opts.Gatherer = reg, reg
	}
	srv := server.New(pharox.NewManager(benchStore(b), mopts...), opts)
	hs := httptest.NewServer(srv)
	b.Cleanup(hs.Close)
	rate, perPair := benchHTTPServer(b, hs.URL, true)
	if trivialPairsPerSec > 0 {
		b.ReportMetric(rate/trivialPairsPerSec, "x_trivial")
	}
	// The same ratio from CPU per pair (client and server together), which
	// a loaded machine's neighbours disturb less than wall-clock rates.
	if trivialHTTPCPUPerPair > 0 {
		b.ReportMetric(trivialHTTPCPUPerPair/perPair, "x_trivial_cpu")
	}
}

// benchHTTPServer runs 32 clients doing acquire+release pairs against the
// server at url, each request a POST with the key and a JSON body.
func benchHTTPServer(b *testing.B, url string, ratio bool) (rate, perPair float64) {
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConns:        2 * benchClients,
		MaxIdleConnsPerHost: 2 * benchClients,
		IdleConnTimeout:     time.Minute,
	}}
	b.Cleanup(client.CloseIdleConnections)
	acquireBody := []byte(`{"pool_name":"bench","consumer_name":"bench","ttl_seconds":60}`)
	post := func(url string, body []byte, want int, out any) error {
		req, err := http.NewRequest("POST", url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("X-API-Key", "bench-key")
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != want {
			raw, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("POST %s: %d %s", url, resp.StatusCode, raw)
		}
		if out != nil {
			return json.NewDecoder(resp.Body).Decode(out)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	b.SetParallelism(parallelism())
	b.ResetTimer()
	start, cpuStart := time.Now(), cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		var lease struct {
			ID string `json:"id"`
		}
		for pb.Next() {
			if err := post(url+"/v1/leases/", acquireBody, 201, &lease); err != nil {
				b.Error(err)
				return
			}
			if err := post(url+"/v1/leases/"+lease.ID+"/release", nil, 200, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
	return report(b, start, cpuStart, ratio)
}

// benchDirect calls a handler directly, without a network: for the
// server, the cost of routing, auth, JSON and the Manager, but no sockets.
func benchDirect(b *testing.B, srv http.Handler, ratio bool) (rate, perPair float64) {
	acquireBody := []byte(`{"pool_name":"bench","consumer_name":"bench","ttl_seconds":60}`)
	serve := func(path string, body []byte, want int) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", path, bytes.NewReader(body))
		req.Header.Set("X-API-Key", "bench-key")
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)
		if w.Code != want {
			b.Errorf("POST %s: %d %s", path, w.Code, w.Body)
		}
		return w
	}
	b.SetParallelism(parallelism())
	b.ResetTimer()
	start, cpuStart := time.Now(), cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		var lease struct {
			ID string `json:"id"`
		}
		for pb.Next() {
			w := serve("/v1/leases/", acquireBody, 201)
			if err := json.Unmarshal(w.Body.Bytes(), &lease); err != nil {
				b.Error(err)
				return
			}
			serve("/v1/leases/"+lease.ID+"/release", nil, 200)
		}
	})
	return report(b, start, cpuStart, ratio)
}
