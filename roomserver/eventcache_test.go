package roomserver

import (
	"fmt"
	"math"
	"testing"
)

func cacheTestEvent(nid int64) *loadedEvent {
	return &loadedEvent{row: &eventRow{NID: nid, EventID: fmt.Sprintf("$e%d", nid)}}
}

// The event cache never holds more than max entries, however many are
// put, and the latest entry is always there.
func TestEventCacheBounded(t *testing.T) {
	c := newEventCache(64)
	for nid := int64(1); nid <= 1000; nid++ {
		c.put(cacheTestEvent(nid))
		if n := c.size(); n > 64 {
			t.Fatalf("after %d puts the cache holds %d entries, max 64", nid, n)
		}
		if c.getNID(nid, math.MaxUint64) == nil || c.getID(fmt.Sprintf("$e%d", nid), math.MaxUint64) == nil {
			t.Fatalf("event %d, just put, is not served", nid)
		}
	}
	if n := c.size(); n < 32 {
		t.Errorf("a full cache holds %d entries, want at least max/2 (32)", n)
	}
}

// Entries read while the cache fills survive the fill: a few hot events
// (a room's state, read by every sync) stay served while many more are
// put than the cache holds, and the cold ones are let go.
func TestEventCacheHotEntriesSurviveFill(t *testing.T) {
	c := newEventCache(64)
	hot := []*loadedEvent{cacheTestEvent(1), cacheTestEvent(2), cacheTestEvent(3)}
	for _, e := range hot {
		c.put(e)
	}
	for nid := int64(100); nid < 1100; nid++ {
		c.put(cacheTestEvent(nid))
		// Every tenth put, the hot events are read, one by NID, the
		// others by ID.
		if nid%10 != 0 {
			continue
		}
		for i, e := range hot {
			var got *loadedEvent
			if i == 0 {
				got = c.getNID(e.row.NID, math.MaxUint64)
			} else {
				got = c.getID(e.row.EventID, math.MaxUint64)
			}
			if got != e {
				t.Fatalf("after %d puts hot event %d is not served (got %v)", nid-99, e.row.NID, got)
			}
		}
	}
	// Found by either key: the moved entry kept both.
	for _, e := range hot {
		if c.getNID(e.row.NID, math.MaxUint64) != e || c.getID(e.row.EventID, math.MaxUint64) != e {
			t.Errorf("hot event %d lost a key", e.row.NID)
		}
	}
	if c.getNID(100, math.MaxUint64) != nil {
		t.Error("a cold entry put 1,000 entries ago is still served")
	}
}

// A dropped entry is never served again, whichever generation held it,
// and by neither key; and a put replaces an entry of the old generation
// rather than leaving it to be found.
func TestEventCacheDropBothGenerations(t *testing.T) {
	c := newEventCache(8)
	first := cacheTestEvent(1)
	c.put(first)
	for nid := int64(10); nid < 14; nid++ { // fills the current generation: 1 is now old
		c.put(cacheTestEvent(nid))
	}
	if len(c.old.byNID) == 0 || c.old.byNID[1].e != first {
		t.Fatalf("set-up: event 1 is not in the old generation (old %d entries)", len(c.old.byNID))
	}
	c.drop(1, "$e1")
	if c.getNID(1, math.MaxUint64) != nil || c.getID("$e1", math.MaxUint64) != nil {
		t.Error("an entry dropped from the old generation is served")
	}

	second := cacheTestEvent(2)
	c.put(second)
	for nid := int64(20); nid < 24; nid++ {
		c.put(cacheTestEvent(nid))
	}
	if c.old.byID["$e2"].e != second {
		t.Fatal("set-up: event 2 is not in the old generation")
	}
	c.dropRows([]*eventRow{second.row})
	if c.getID("$e2", math.MaxUint64) != nil || c.getNID(2, math.MaxUint64) != nil {
		t.Error("an entry dropped (dropRows) from the old generation is served")
	}

	third := cacheTestEvent(3)
	c.put(third)
	for nid := int64(30); nid < 34; nid++ {
		c.put(cacheTestEvent(nid))
	}
	redacted := cacheTestEvent(3)
	c.put(redacted) // the row after its redaction
	if c.getNID(3, math.MaxUint64) != redacted || c.getID("$e3", math.MaxUint64) != redacted {
		t.Error("the replaced entry is not the one served")
	}
	for nid := int64(40); nid < 50; nid++ { // two more fills
		c.put(cacheTestEvent(nid))
		if got := c.getNID(3, math.MaxUint64); got == third {
			t.Fatal("the entry put before the replacement is served")
		}
	}
}

// The generation rule holds in both generations: an entry stored after
// a drop is not served to a read that began before it (seen), also once
// it has moved to the old generation or back; putLoaded keeps nothing
// loaded across a drop.
func TestEventCacheGenerationBothMaps(t *testing.T) {
	c := newEventCache(8)
	before := c.generation()
	c.drop(999, "$gone")
	after := c.generation()
	if after == before {
		t.Fatal("drop did not move the generation")
	}
	e := cacheTestEvent(1)
	c.put(e) // stamped with after
	check := func(where string) {
		t.Helper()
		if c.getNID(1, before) != nil || c.getID("$e1", before) != nil {
			t.Errorf("%s: served to a read that began before its generation", where)
		}
		if c.getNID(1, after) != e || c.getID("$e1", after) != e {
			t.Errorf("%s: not served to a read at its generation", where)
		}
	}
	check("current generation")
	for nid := int64(10); nid < 14; nid++ {
		c.put(cacheTestEvent(nid))
	}
	if c.old.byNID[1].e != e {
		t.Fatal("set-up: event 1 is not in the old generation")
	}
	if c.getNID(1, before) != nil {
		t.Error("old generation: served to a read that began before its generation")
	}
	// That lookup moved it back, stamp unchanged.
	if c.cur.byNID[1].e != e || c.cur.byNID[1].gen != after {
		t.Errorf("the entry did not move to the current generation with its stamp: %+v", c.cur.byNID[1])
	}
	check("moved back")

	gen := c.generation()
	loaded := cacheTestEvent(5)
	c.drop(7, "$other")
	c.putLoaded(loaded, gen)
	if c.getNID(5, math.MaxUint64) != nil {
		t.Error("putLoaded kept a row loaded before a drop")
	}
	c.putLoaded(loaded, c.generation())
	if c.getNID(5, math.MaxUint64) != loaded {
		t.Error("putLoaded did not keep a row loaded at the current generation")
	}
}
