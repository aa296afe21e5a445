package server_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/pharox/pharox/internal/faulttest"
)

// TestHAPostgresFailover runs the load on a PostgreSQL primary with a
// synchronous streaming standby, the service given both hosts with
// target_session_attrs=read-write; mid-load the primary crashes and the
// standby is promoted. The service follows it by itself, and since every
// acquisition reached the standby before it was acknowledged, the audit
// finds every lease a client was granted. A release may be lost (the
// store commits them without waiting, by design): its slot stays taken
// until the lease expires, never given out twice.
func TestHAPostgresFailover(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	backendPostgresURL(t)
	if testing.Short() {
		t.Skip("fault tests start their own PostgreSQL clusters: skipped in -short mode")
	}
	// The quotes reach postgres through pg_ctl's shell.
	primary := faulttest.StartPostgres(t, faulttest.WithSetting("synchronous_standby_names", "'*'"))
	standby := primary.StartStandby(t)
	storeURL := backendWithParams(t,
		fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable", primary.Port, standby.Port),
		"target_session_attrs", "read-write", "connect_timeout", "5", "pool_max_conns", backendPGMaxConns)
	faultRun(t, storeURL, 2, func(l *faultLoad) {
		l.lostReleasesAllowed = true // releases commit without waiting for the standby
		primary.Stop("immediate")
		time.Sleep(time.Second)
		standby.Promote()
	})
}

// TestHARedisSentinelFailover runs the load on a Redis primary with one
// replica and three Sentinels, the service given a redis+sentinel:// URL;
// mid-load the primary is killed and the Sentinels promote the replica.
// The service follows the new primary by itself.
func TestHARedisSentinelFailover(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	backendRedisURL(t)
	if testing.Short() {
		t.Skip("fault tests start their own Redis servers: skipped in -short mode")
	}
	// The replica's first full copy starts at once, not after the
	// default 5 s wait for more replicas to share it.
	primary := faulttest.StartRedis(t, append(faultRedisSettings, "repl-diskless-sync-delay 0")...)
	replica := faulttest.StartRedis(t, append(faultRedisSettings, fmt.Sprintf("replicaof 127.0.0.1 %d", primary.Port))...)
	rc := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", replica.Port), MaxRetries: -1})
	defer rc.Close()
	for deadline := time.Now().Add(faultRecoveryLimit); ; {
		info, err := rc.Info(context.Background(), "replication").Result()
		if err == nil && strings.Contains(info, "master_link_status:up") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica did not catch up with the primary within %v: %v\n%s", faultRecoveryLimit, err, replica.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	var sentinels []string
	var sentinelLog *faulttest.Redis
	for range 3 {
		s := faulttest.StartSentinel(t, "pharox", primary.Port, 2, time.Second)
		sentinels = append(sentinels, fmt.Sprintf("127.0.0.1:%d", s.Port))
		sentinelLog = s
	}
	// A Sentinel learns of the replica and of the other Sentinels within
	// seconds; a failover needs both.
	for _, addr := range sentinels {
		sc := goredis.NewSentinelClient(&goredis.Options{Addr: addr})
		deadline := time.Now().Add(faultRecoveryLimit)
		for {
			m, err := sc.Master(context.Background(), "pharox").Result()
			if err == nil && m["num-slaves"] == "1" && m["num-other-sentinels"] == "2" {
				break
			}
			if time.Now().After(deadline) {
				sc.Close()
				t.Fatalf("Sentinel %s does not see the replica and the other Sentinels: %v %v\n%s", addr, m, err, sentinelLog.Log())
			}
			time.Sleep(100 * time.Millisecond)
		}
		sc.Close()
	}
	storeURL := faultRedisStoreURL(t, "redis+sentinel://"+strings.Join(sentinels, ",")+"/pharox/0")
	faultRun(t, storeURL, 2, func(l *faultLoad) {
		// Replication is asynchronous: a primary that crashes may take
		// the last writes it acknowledged with it, which no audit of
		// acknowledged leases can pass (the README says so). The test
		// fails the primary over the way an operator's planned
		// failover does: writes are paused (in-flight calls wait), the
		// replica catches up, then the primary dies under the paused
		// load, whose calls then fail over to the promoted replica.
		if err := pausedAndCaughtUp(primary.Port, rc); err != nil {
			t.Errorf("before the failover: %v\n%s", err, replica.Log())
			return
		}
		primary.Kill()
		deadline := time.Now().Add(faultRecoveryLimit)
		for {
			info, err := rc.Info(context.Background(), "replication").Result()
			if err == nil && strings.Contains(info, "role:master") {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("the Sentinels did not promote the replica within %v\n%s", faultRecoveryLimit, sentinelLog.Log())
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

// pausedAndCaughtUp pauses writes on the Redis primary at port (CLIENT
// PAUSE WRITE, long enough for the failover) and waits until the replica
// behind rc has received everything the primary acknowledged.
func pausedAndCaughtUp(port int, rc *goredis.Client) error {
	ctx := context.Background()
	pc := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), MaxRetries: -1})
	defer pc.Close()
	if err := pc.Do(ctx, "CLIENT", "PAUSE", int(faultRecoveryLimit/time.Millisecond), "WRITE").Err(); err != nil {
		return fmt.Errorf("pause the primary's writes: %w", err)
	}
	offset := func(c *goredis.Client, field string) (int64, error) {
		info, err := c.Info(ctx, "replication").Result()
		if err != nil {
			return 0, err
		}
		for line := range strings.SplitSeq(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, field+":"); ok {
				return strconv.ParseInt(v, 10, 64)
			}
		}
		return 0, fmt.Errorf("no %s in INFO replication", field)
	}
	want, err := offset(pc, "master_repl_offset")
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(faultRecoveryLimit); ; {
		got, err := offset(rc, "slave_repl_offset")
		if err == nil && got >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the replica is at offset %d (%v), the primary at %d, after %v", got, err, want, faultRecoveryLimit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
