package storagetest

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// ensure is EnsureConsumer or fail.
func (f *fixture) ensure(name string) *pharox.Consumer {
	f.t.Helper()
	c, err := f.s.EnsureConsumer(f.ctx, name)
	if err != nil {
		f.t.Fatalf("EnsureConsumer(%q): %v", name, err)
	}
	return c
}

func testGetConsumer(t *testing.T, f *fixture) {
	for _, want := range []*pharox.Consumer{f.consumer, f.ensure("crawler"), f.ensure("indexer")} {
		got, err := f.s.GetConsumer(f.ctx, want.ID)
		if err != nil {
			t.Fatalf("GetConsumer(%s) of %q: %v", want.ID, want.Name, err)
		}
		if got.ID != want.ID || got.Name != want.Name || !got.CreatedAt.Equal(want.CreatedAt) {
			t.Fatalf("GetConsumer(%s) = %+v, want %+v as EnsureConsumer returned it", want.ID, got, want)
		}
	}
}

func testGetConsumerUnknown(t *testing.T, f *fixture) {
	id := uuid.New()
	c, err := f.s.GetConsumer(f.ctx, id)
	wantErr(t, "GetConsumer(unknown id)", err, pharox.ErrConsumerNotFound)
	if c != nil {
		t.Fatalf("GetConsumer(unknown id) = %+v with its error, want nil", c)
	}
	// An id is not a name: a consumer named like the id is not found by it.
	f.ensure(id.String())
	_, err = f.s.GetConsumer(f.ctx, id)
	wantErr(t, "GetConsumer(id that is only another consumer's name)", err, pharox.ErrConsumerNotFound)
}

func testListConsumers(t *testing.T, f *fixture) {
	// Ensured out of order; byte-wise order puts upper case first and the
	// non-ASCII name last, whatever the database's collation.
	names := []string{"zeta", "b", "émile", "alpha", "Alpha", "beta", "b-2"}
	want := map[string]uuid.UUID{f.consumer.Name: f.consumer.ID}
	for _, n := range names {
		want[n] = f.ensure(n).ID
	}
	f.ensure("zeta") // again: still listed once
	got, err := f.s.ListConsumers(f.ctx)
	if err != nil {
		t.Fatalf("ListConsumers: %v", err)
	}
	wantNames := append(slices.Clone(names), f.consumer.Name)
	slices.Sort(wantNames)
	gotNames := make([]string, len(got))
	for i, c := range got {
		gotNames[i] = c.Name
		if c.ID != want[c.Name] {
			t.Errorf("ListConsumers: %q has id %s, EnsureConsumer gave %s", c.Name, c.ID, want[c.Name])
		}
		if c.CreatedAt.IsZero() {
			t.Errorf("ListConsumers: %q has no CreatedAt", c.Name)
		}
	}
	if !slices.Equal(gotNames, wantNames) {
		t.Fatalf("ListConsumers names = %q, want %q", gotNames, wantNames)
	}
	if !slices.IsSortedFunc(gotNames, strings.Compare) {
		t.Fatalf("ListConsumers not ordered by name: %q", gotNames)
	}
}

func testConsumerCopies(t *testing.T, f *fixture) {
	c := f.ensure("copy-consumer")
	got, err := f.s.GetConsumer(f.ctx, c.ID)
	if err != nil {
		t.Fatalf("GetConsumer: %v", err)
	}
	got.Name, got.ID = "mutated", uuid.New()
	list, err := f.s.ListConsumers(f.ctx)
	if err != nil {
		t.Fatalf("ListConsumers: %v", err)
	}
	i := slices.IndexFunc(list, func(x *pharox.Consumer) bool { return x.ID == c.ID })
	if i < 0 || list[i].Name != "copy-consumer" {
		t.Fatalf("ListConsumers after mutating GetConsumer's result = %v, want copy-consumer %s listed", list, c.ID)
	}
	for _, x := range list {
		x.Name = "mutated"
	}
	again, err := f.s.GetConsumer(f.ctx, c.ID)
	if err != nil || again.ID != c.ID || again.Name != "copy-consumer" {
		t.Fatalf("GetConsumer after mutating ListConsumers' result = %+v, %v", again, err)
	}
	list, err = f.s.ListConsumers(f.ctx)
	if err != nil || slices.ContainsFunc(list, func(x *pharox.Consumer) bool { return x.Name == "mutated" }) {
		t.Fatalf("ListConsumers after mutating its own result = %v, %v", list, err)
	}
}
