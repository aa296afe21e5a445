// Package faulttest starts real database servers that a test may break:
// PostgreSQL clusters and Redis servers of its own, on free loopback ports,
// in temporary directories, stopped when the test ends, so that restarts
// and kills never disturb the shared servers other tests use. It also has
// an in-process TCP proxy that puts latency, dropped connections and
// partitions between a service and its store.
//
// The servers come from the machine's own binaries: PostgreSQL from
// PHAROX_TEST_PG_BIN, else pg_config --bindir, else
// /usr/lib/postgresql/15/bin; Redis from redis-server on PATH. A test
// skips, with a message naming what is missing, when they are not there.
// PostgreSQL refuses to run as root, so when the test runs as root the
// cluster runs as the postgres user through runuser.
package faulttest
