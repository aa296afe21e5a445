// Package ptrutil holds the one pointer helper the module's tests and
// suites share, so that no package defines its own.
package ptrutil

// Ptr returns a pointer to a copy of v: the way to fill the optional
// (pointer) fields of pharox.Proxy, pharox.Filters and the factories'
// option structs from a literal.
func Ptr[T any](v T) *T { return &v }
