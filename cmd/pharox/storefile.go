package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// sqlitePath returns the database file a sqlite:// storage URL names (as
// storage/open reads it), or "" for any other store.
func sqlitePath(storageURL string) string {
	scheme, rest, ok := strings.Cut(strings.TrimSpace(storageURL), "://")
	if !ok {
		return ""
	}
	switch strings.ToLower(scheme) {
	case "sqlite", "sqlite3", "file":
		path, _, _ := strings.Cut(rest, "?")
		return path
	}
	return ""
}

// requireSQLiteFile refuses a SQLite URL whose file does not exist, for
// commands that only read or change what a store holds: opening it would
// create an empty database and answer as if it were the real one.
func requireSQLiteFile(storageURL string) error {
	path := sqlitePath(storageURL)
	if path == "" {
		return nil
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no SQLite database at %s: check --storage (serve, pool create and proxy import create one)", path)
	}
	return nil
}

// createSQLiteFile creates a missing SQLite database file with mode 0600
// before the driver opens it: it holds proxy passwords, and SQLite gives
// its journal files the database file's mode.
func createSQLiteFile(storageURL string) error {
	path := sqlitePath(storageURL)
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create SQLite database %s: %w", path, err)
	}
	return f.Close()
}

// adminKeyFile is where serve keeps the admin key it generated when none
// is configured: beside a SQLite database, in the user's config directory
// for the shared stores, nowhere for memory:// (its data ends with the
// process too). explicit (--admin-key-file) wins.
func adminKeyFile(storageURL, explicit string) string {
	if explicit != "" {
		return explicit
	}
	if path := sqlitePath(storageURL); path != "" {
		return path + ".admin-key"
	}
	scheme, _, _ := strings.Cut(strings.ToLower(strings.TrimSpace(storageURL)), "://")
	if scheme == "memory" || scheme == "mem" {
		return ""
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "pharox", "admin-key")
}

// loadOrCreateAdminKey returns the key kept in path, generating and
// writing it (mode 0600) when the file does not exist yet.
func loadOrCreateAdminKey(path string) (key string, created bool, err error) {
	raw, err := os.ReadFile(path)
	if err == nil {
		key = strings.TrimSpace(string(raw))
		if key == "" {
			return "", false, fmt.Errorf("admin key file %s is empty: delete it to have a new key generated", path)
		}
		return key, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", false, fmt.Errorf("read admin key file: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", false, fmt.Errorf("create admin key directory: %w", err)
	}
	key = serveGenerateKey()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		// Another serve wrote it first: use that one.
		return loadOrCreateAdminKey(path)
	}
	if err != nil {
		return "", false, fmt.Errorf("write admin key file: %w", err)
	}
	if _, err := f.WriteString(key + "\n"); err != nil {
		f.Close()
		os.Remove(path)
		return "", false, fmt.Errorf("write admin key file: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", false, fmt.Errorf("write admin key file: %w", err)
	}
	return key, true, nil
}
