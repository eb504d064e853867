package pushserver

import "testing"

// TestStateInfoCacheOneSnapshotPerRoom: CountInTx's cache of room infos
// keeps one snapshot per room, the last stored. A newer snapshot of a
// room replaces the older one (which then misses and would be read
// again), other rooms keep theirs, and a lookup never answers one
// snapshot's info for another. Keeping every snapshot made the cache
// grow with each membership change of a room (200 joins: 200 infos).
func TestStateInfoCacheOneSnapshotPerRoom(t *testing.T) {
	c := newStateInfoCache()
	a1, a2, b1 := &roomInfo{joined: 1}, &roomInfo{joined: 2}, &roomInfo{joined: 7}
	c.put(stateKey{"!a:x", 1}, a1)
	c.put(stateKey{"!b:x", 1}, b1)
	if got := c.get(stateKey{"!a:x", 1}); got != a1 {
		t.Fatalf("room a at snapshot 1: %v, want its info", got)
	}
	c.put(stateKey{"!a:x", 2}, a2)
	if got := c.get(stateKey{"!a:x", 1}); got != nil {
		t.Errorf("room a at snapshot 1 after snapshot 2 was stored: %v, want a miss (one snapshot per room)", got)
	}
	if got := c.get(stateKey{"!a:x", 2}); got != a2 {
		t.Errorf("room a at snapshot 2: %v, want its info", got)
	}
	if got := c.get(stateKey{"!a:x", 3}); got != nil {
		t.Errorf("room a at an unknown snapshot: %v, want a miss", got)
	}
	if got := c.get(stateKey{"!b:x", 1}); got != b1 {
		t.Errorf("room b at snapshot 1: %v, want its info", got)
	}
	if got := c.get(stateKey{"!b:x", 2}); got != nil {
		t.Errorf("room b at snapshot 2 (never stored): %v, want a miss", got)
	}
	if n := len(c.byRoom); n != 2 {
		t.Errorf("cache holds %d rooms' entries, want 2", n)
	}
	// Full: a new room clears the map; a known room's replacement does not.
	c.limit = 2
	c.put(stateKey{"!b:x", 5}, b1)
	if got := c.get(stateKey{"!a:x", 2}); got != a2 {
		t.Errorf("replacing room b's entry in a full cache dropped room a's")
	}
	c.put(stateKey{"!c:x", 1}, a1)
	if n := len(c.byRoom); n != 1 {
		t.Errorf("after a new room in a full cache: %d entries, want 1", n)
	}
}
