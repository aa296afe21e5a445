package health_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/health"
	"github.com/pharox/pharox/storage/memory"
)

// Sweep a pool every minute: proxies over 2 s are slow, three failures in a
// row make a proxy inactive, banned proxies rest 5 minutes and longer.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	store, err := memory.New()
	if err != nil {
		log.Fatal(err)
	}

	checker, err := health.NewChecker(health.CheckerOptions{
		TargetURL:      "https://example.com/",
		Timeout:        10 * time.Second,
		SlowThreshold:  2 * time.Second,
		BanStatusCodes: []int{403, 429},
	})
	if err != nil {
		log.Fatal(err)
	}
	orch := health.NewOrchestrator(store, checker, health.OrchestratorOptions{
		Concurrency:      100,
		RateLimit:        50,
		FailureThreshold: 3,
		BanCooldown:      5 * time.Minute,
		MaxBanCooldown:   6 * time.Hour,
		Pools:            []string{"residential"},
		OnSweep: func(s *health.SweepSummary, err error) {
			if err != nil {
				log.Print(err)
				return
			}
			fmt.Printf("%d checked, %d active, p95 %v\n", s.Checked, s.ByStatus[pharox.StatusActive], s.Latency.P95)
		},
	})
	if err := orch.Run(ctx, time.Minute); err != nil {
		log.Fatal(err)
	}
}

// Probe one proxy and print why it failed.
func ExampleChecker_Probe() {
	checker, err := health.NewChecker(health.CheckerOptions{TargetURL: "http://example.com/"})
	if err != nil {
		log.Fatal(err)
	}
	p := &pharox.Proxy{Host: "203.0.113.7", Port: 1080, Protocol: pharox.ProtocolSOCKS5,
		Credentials: &pharox.Credentials{User: "alice", Password: "secret"}}
	r := checker.Probe(context.Background(), p)
	if !r.OK() {
		fmt.Fprintf(os.Stderr, "%s: %s (%s)\n", p, r.Kind, r.Error)
	}
}
