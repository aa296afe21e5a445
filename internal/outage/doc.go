// Package outage tells a store that could not serve a request now from
// every other failure, in one place, for the server (503 and Retry-After),
// the gateway (its own 503) and the command line (exit code 75).
//
// It recognises the drivers' errors by the methods and messages they
// publish rather than by importing them, so that the server does not link
// every driver: PostgreSQL errors by SQLSTATE (SQLState()), SQLite errors
// by result code (Code()), Redis errors by the prefix of the server's
// reply (RedisError()), and network errors of every driver as net.Error
// and errno values.
package outage
