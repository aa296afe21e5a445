//go:build race

package sqlite_test

// raceDetector is true in builds with -race.
const raceDetector = true
