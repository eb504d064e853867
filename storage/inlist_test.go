package storage_test

import (
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/storage"
)

func TestInList(t *testing.T) {
	q, args := storage.InList("x IN ", []string{"a", "b", "c"})
	if q != "x IN ($1, $2, $3)" {
		t.Fatalf("query %q", q)
	}
	if !slices.Equal(args, []any{"a", "b", "c"}) {
		t.Fatalf("args %v", args)
	}
	q, args = storage.InList("n IN ", []int64{7})
	if q != "n IN ($1)" || len(args) != 1 || args[0] != int64(7) {
		t.Fatalf("query %q args %v", q, args)
	}
}
