package syncapi

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/myelin-chat/myelin/roomserver"
)

// gatedMembers is a Rooms whose IndexedStateKeys answers from a fixed
// current state (every user but "@gone:x" has a member event in every
// room), records each read's keys, and holds each read until released.
// Every answer's content names the read that made it, so a test sees
// which read answered whom.
type gatedMembers struct {
	Rooms
	mu      sync.Mutex
	reads   []memberRead
	started chan int              // the number of each read, when it starts
	release map[int]chan struct{} // read n waits for release[n] to close
}

type memberRead struct {
	room string
	keys []string
}

func (r *gatedMembers) IndexedStateKeys(_ context.Context, roomID, eventType string, keys []string) ([]*roomserver.Event, error) {
	if eventType != "m.room.member" {
		return nil, fmt.Errorf("asked for %s", eventType)
	}
	r.mu.Lock()
	r.reads = append(r.reads, memberRead{roomID, slices.Clone(keys)})
	n := len(r.reads)
	gate := r.release[n]
	r.mu.Unlock()
	r.started <- n
	<-gate
	sorted := slices.Clone(keys)
	slices.Sort(sorted)
	var out []*roomserver.Event
	for _, k := range sorted {
		if k == "@gone:x" {
			continue
		}
		key := k
		out = append(out, &roomserver.Event{EventID: "$" + roomID + key, RoomID: roomID, Type: "m.room.member",
			StateKey: &key, Content: []byte(fmt.Sprintf(`{"membership":"join","read":%d}`, n))})
	}
	return out, nil
}

// TestMemberBatcher: the lazy-loaded members reads of one room are
// grouped, and a grouped answer is never staler or anyone else's: a
// request that asks while the room's read runs is answered by a later
// read (one read of the union of the keys of all who asked meanwhile),
// each request gets the events of its own keys only, in the read's
// order; another room is not held up; a waiting request that ends does
// not fail the others; nothing is left behind.
func TestMemberBatcher(t *testing.T) {
	src := &gatedMembers{started: make(chan int, 10), release: map[int]chan struct{}{}}
	for n := 1; n <= 4; n++ {
		src.release[n] = make(chan struct{})
	}
	c := newMemberBatcher(src)
	type answer struct {
		evs []*roomserver.Event
		err error
	}
	ask := func(ctx context.Context, room string, keys ...string) chan answer {
		ch := make(chan answer, 1)
		go func() {
			evs, err := c.members(ctx, room, keys)
			ch <- answer{evs, err}
		}()
		return ch
	}
	first := ask(context.Background(), "!a:x", "@s:x", "@u0:x")
	if n := <-src.started; n != 1 {
		t.Fatalf("read %d started first", n)
	}
	// Asked while read 1 of !a runs: they wait for read 2, which they share.
	later := map[string]chan answer{}
	for _, u := range []string{"@u3:x", "@u1:x", "@gone:x", "@u2:x"} {
		later[u] = ask(context.Background(), "!a:x", u, "@s:x")
	}
	cancelled, cancel := context.WithCancel(context.Background())
	dropped := ask(cancelled, "!a:x", "@s:x", "@u9:x")
	waitFor(t, func() bool {
		var ok bool
		c.reads.inspect("!a:x", func(_ bool, next *memberKeys) {
			ok = next != nil && len(next.keys) == 6
		})
		return ok
	})
	// Another room reads at once.
	other := ask(context.Background(), "!b:x", "@s:x")
	if n := <-src.started; n != 2 {
		t.Fatalf("read %d started for !b", n)
	}
	close(src.release[2])
	if a := <-other; a.err != nil || len(a.evs) != 1 || *a.evs[0].StateKey != "@s:x" || a.evs[0].RoomID != "!b:x" {
		t.Fatalf("!b answer %+v", a)
	}
	cancel()
	if a := <-dropped; a.err == nil {
		t.Fatal("a request whose context ended got an answer")
	}
	close(src.release[1]) // read 1 ends; read 3 (the group) starts
	if a := <-first; a.err != nil || len(a.evs) != 2 || string(a.evs[0].Content) != `{"membership":"join","read":1}` {
		t.Fatalf("first answer %+v", a)
	}
	if n := <-src.started; n != 3 {
		t.Fatalf("read %d started for the group", n)
	}
	close(src.release[3])
	for u, ch := range later {
		a := <-ch
		if a.err != nil {
			t.Fatalf("%s: %v", u, a.err)
		}
		var got []string
		for _, e := range a.evs {
			if string(e.Content) != `{"membership":"join","read":3}` {
				t.Errorf("%s answered by %s, want read 3", u, e.Content)
			}
			got = append(got, *e.StateKey)
		}
		want := []string{"@s:x", u}
		slices.Sort(want)
		if u == "@gone:x" {
			want = []string{"@s:x"}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s got the members %v, want %v", u, got, want)
		}
	}
	src.mu.Lock()
	reads := src.reads
	src.mu.Unlock()
	if len(reads) != 3 || reads[2].room != "!a:x" {
		t.Fatalf("reads %+v", reads)
	}
	keys := slices.Clone(reads[2].keys)
	slices.Sort(keys)
	if want := []string{"@gone:x", "@s:x", "@u1:x", "@u2:x", "@u3:x", "@u9:x"}; !slices.Equal(keys, want) {
		t.Errorf("the group read %v, want %v", keys, want)
	}
	waitFor(t, func() bool {
		c.reads.mu.Lock()
		defer c.reads.mu.Unlock()
		return len(c.reads.byKey) == 0
	})
	// Idle again: the next request reads at once, alone.
	again := ask(context.Background(), "!a:x", "@u5:x")
	if n := <-src.started; n != 4 {
		t.Fatalf("read %d started when idle", n)
	}
	close(src.release[4])
	if a := <-again; a.err != nil || len(a.evs) != 1 {
		t.Fatalf("idle answer %+v", a)
	}
}
