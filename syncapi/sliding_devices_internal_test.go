package syncapi

import (
	"context"
	"errors"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// TestSlidingRedisDropDevices: dropping a device deletes each of its
// connections' hashes and its set of connections, and nothing of
// another device or another user with the same device ID; a request of
// the dropped device in flight cannot store its state afterwards (its
// pos is unknown), and the device starts new connections afresh.
func TestSlidingRedisDropDevices(t *testing.T) {
	c := testRedisConns(t)
	ctx := context.Background()
	st := stateAt(10)
	var seqs []int64
	keys := []connKey{{"@alice:x", "DEV", "a"}, {"@alice:x", "DEV", "b"}, {"@alice:x", "OTHER", "a"}, {"@bob:x", "DEV", "a"}}
	for _, k := range keys {
		seq, err := c.save(ctx, k, -1, st)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	if err := c.dropDevices(ctx, "@alice:x", "DEV", "NONE"); err != nil {
		t.Fatal(err)
	}
	if n := deviceHashes(t, c, keys[0], []string{"a", "b"}); n != 0 {
		t.Fatalf("%d of the dropped device's connections left", n)
	}
	if n, err := c.client.Exists(ctx, c.deviceKey(keys[0])).Result(); err != nil || n != 0 {
		t.Fatalf("the dropped device's set: %d %v", n, err)
	}
	for i, k := range keys[2:] {
		if got, err := c.load(ctx, k, seqs[2+i], st.heads.String()); err != nil || got == nil {
			t.Fatalf("%v after another device was dropped: %v %v", k, got, err)
		}
	}
	// In flight: the request started from seqs[0] stores after the drop.
	_, err := c.save(ctx, keys[0], seqs[0], st)
	var me *mxerr.Error
	if !errors.As(err, &me) || me.Code != unknownPos {
		t.Fatalf("saving from a dropped connection: %v, want M_UNKNOWN_POS", err)
	}
	if got, err := c.load(ctx, keys[0], seqs[0], st.heads.String()); err != nil || got != nil {
		t.Fatalf("the dropped connection's pos: %v %v, want unknown", got, err)
	}
	if seq, err := c.save(ctx, keys[0], -1, st); err != nil || seq != 1 {
		t.Fatalf("a new connection of the dropped device: seq %d, %v", seq, err)
	}
}

// TestSlidingMemoryDropDevices: the same in memory.
func TestSlidingMemoryDropDevices(t *testing.T) {
	c := newSlidingConns(100)
	st := stateAt(10)
	keys := []connKey{{"@alice:x", "DEV", "a"}, {"@alice:x", "DEV", "b"}, {"@alice:x", "OTHER", "a"}, {"@bob:x", "DEV", "a"}}
	var conns []*slidingConn
	for _, k := range keys {
		conn := c.get(k, true)
		conn.store(0, st)
		conns = append(conns, conn)
	}
	c.dropDevices("@alice:x", "DEV", "NONE")
	for i, k := range keys {
		if got := c.get(k, false); (got == nil) != (i < 2) {
			t.Fatalf("%v after the drop: %v", k, got)
		}
	}
	if len(c.order) != 2 || len(c.byDevice) != 2 || len(c.conns) != 2 {
		t.Fatalf("after the drop: order %v, devices %v, %d conns", c.order, c.byDevice, len(c.conns))
	}
	// In flight: the request stores into the connection it loaded, no
	// longer held, so the pos it returns is unknown.
	seq := conns[0].store(1, st)
	if got := c.get(keys[0], false); got != nil {
		t.Fatalf("the dropped connection after a store in flight: %v (seq %d)", got, seq)
	}
	if conn := c.get(keys[0], true); conn == conns[0] || conn.state(1) != nil {
		t.Fatal("a new connection of the dropped device inherited the old one")
	}
}
