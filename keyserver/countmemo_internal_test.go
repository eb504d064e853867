package keyserver

import "testing"

// TestCountMemoReadOverlappingDropNotKept: a read that began before a
// drop (of any device: the drop may be of a write its statement did not
// see) is not kept; one that began after it is, and the memo hands out
// copies its callers may change.
func TestCountMemoReadOverlappingDropNotKept(t *testing.T) {
	m := NewCountMemo()
	d := DeviceRef{UserID: "@alice:localhost", DeviceID: "DEV"}
	stale := []DeviceKeyCounts{{OneTimeKeys: map[string]int{"signed_curve25519": 5}, UnusedFallback: []string{}}}
	gen := m.begin()
	m.drop("@bob:localhost", "OTHER") // a write commits while the read runs
	m.put(gen, []DeviceRef{d}, stale)
	if c, ok := m.get(d); ok {
		t.Fatalf("a read overlapping a drop was kept: %+v", c)
	}
	gen = m.begin()
	m.put(gen, []DeviceRef{d}, stale)
	c, ok := m.get(d)
	if !ok || c.OneTimeKeys["signed_curve25519"] != 5 || c.UnusedFallback == nil {
		t.Fatalf("a read after the drop was not kept: %+v %v", c, ok)
	}
	c.OneTimeKeys["signed_curve25519"] = 0
	stale[0].OneTimeKeys["signed_curve25519"] = 0
	if c, _ := m.get(d); c.OneTimeKeys["signed_curve25519"] != 5 {
		t.Fatalf("the memo shares its maps with callers: %+v", c)
	}
	m.drop(d.UserID, d.DeviceID)
	if _, ok := m.get(d); ok {
		t.Fatal("drop left the entry")
	}
	var none *CountMemo // no memo: nothing kept, nothing found
	none.put(none.begin(), []DeviceRef{d}, stale)
	if _, ok := none.get(d); ok {
		t.Fatal("a nil memo answered")
	}
}
