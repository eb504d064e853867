package syncapi

import (
	"fmt"
	"testing"
)

// TestSlidingConnsBounds: in memory, a device past maxConnsPerDevice
// loses its least recently used connection, and the store past its
// total bound its older half; each device's list of connections stays
// the connections it has, so the per-device count is never off.
func TestSlidingConnsBounds(t *testing.T) {
	c := newSlidingConns(30)
	k := func(dev string, i int) connKey { return connKey{"@a:x", dev, fmt.Sprintf("c%d", i)} }
	check := func() {
		t.Helper()
		n := 0
		for dk, ids := range c.byDevice {
			if len(ids) > maxConnsPerDevice {
				t.Fatalf("device %v lists %d connections", dk, len(ids))
			}
			for _, id := range ids {
				if c.conns[connKey{dk.user, dk.device, id}] == nil {
					t.Fatalf("device %v lists %s, which is gone", dk, id)
				}
			}
			n += len(ids)
		}
		if n != len(c.conns) || len(c.order) != len(c.conns) {
			t.Fatalf("%d connections, %d listed by device, %d in order", len(c.conns), n, len(c.order))
		}
	}
	for i := range maxConnsPerDevice {
		c.get(k("D", i), true)
	}
	c.get(k("D", 0), false) // c0 used again: c1 is the least recently used
	c.get(k("D", maxConnsPerDevice), true)
	check()
	for i := range maxConnsPerDevice + 1 {
		if got := c.get(k("D", i), false); (got == nil) != (i == 1) {
			t.Fatalf("c%d present %v after one connection too many; want only c1 dropped", i, got != nil)
		}
	}
	// Other devices fill the store past its total bound.
	for d := range 4 {
		for i := range maxConnsPerDevice {
			c.get(k(fmt.Sprintf("E%d", d), i), true)
			check()
		}
	}
	if len(c.conns) > 30 {
		t.Fatalf("%d connections kept, bound 30", len(c.conns))
	}
	// A device whose connections were partly dropped with the older half
	// counts only those it still has.
	for i := range 2 * maxConnsPerDevice {
		c.get(k("D", 100+i), true)
		check()
	}
}
