// Package migrate is the one migration runner of the SQL stores
// (storage/sqlite, storage/postgres, storage/mysql), in the manner of
// River's rivermigrate.
//
// A store embeds its migrations as numbered files in a directory,
// NNNN_description.sql, and passes that directory to [Load], which
// returns them in order and refuses names it cannot read and numbering
// that does not run 1, 2, 3… without a gap or a repeat. A new migration
// is a new file one above the highest: nothing else changes.
//
// The store keeps what only it knows: how to lock the database against a
// concurrent migration, which transaction the statements run in and how
// an applied version is recorded. It passes that as a [Target] to [Run],
// which reads the current version, refuses a database newer than the
// binary ([ErrSchemaTooNew], naming both versions) and applies the rest
// in order. [Check] is the same comparison for a store's constructor, and
// [Write] prints the pending migrations as one SQL script for operators
// who run migrations themselves (pharox migrate --print).
package migrate
