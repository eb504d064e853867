package roomserver

import (
	"slices"
	"testing"
)

// TestSortedTuples: state keys come out by event type, then state key,
// both compared byte by byte (a type that is a prefix of another sorts
// first; "" first among state keys), with the one allocation of the
// result: every send sorts its auth events' keys twice.
func TestSortedTuples(t *testing.T) {
	m := stateMap{
		{"m.room.member", "@bob:b"}:   1,
		{"m.room.power_levels", ""}:   2,
		{"m.room.member", "@alice:a"}: 3,
		{"m.room.create", ""}:         4,
		{"m.room", "x"}:               5,
		{"m.room.member", ""}:         6,
		{"m.room.member", "@Zoe:z"}:   7,
		{"m.room.member", "@éva:e"}:   8,
		{"M.room.create", ""}:         9,
	}
	want := []tuple{
		{"M.room.create", ""},
		{"m.room", "x"},
		{"m.room.create", ""},
		{"m.room.member", ""},
		{"m.room.member", "@Zoe:z"},
		{"m.room.member", "@alice:a"},
		{"m.room.member", "@bob:b"},
		{"m.room.member", "@éva:e"},
		{"m.room.power_levels", ""},
	}
	if got := sortedTuples(m); !slices.Equal(got, want) {
		t.Fatalf("sortedTuples:\n got %v\nwant %v", got, want)
	}
	if n := testing.AllocsPerRun(100, func() { sortedTuples(m) }); n != 1 {
		t.Errorf("sortedTuples allocates %v times, want 1", n)
	}
}
