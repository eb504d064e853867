package roomserver

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestPreloadSnapshots: the batched read of many snapshots (a first
// initial /sync's timelines) fills the shared history visibility cache
// and the snapshot key cache with exactly what the per-snapshot reads of
// a server with empty caches find, for every snapshot of two rooms whose
// history visibility changed several times (each change a delta on the
// snapshot before: the nearest entry of the chain must win) and where
// the user joined, left, was invited; then visibility.at answers as on
// the fresh server. Chunks of two snapshots: several queries.
// Spec: client-server-api, "Room History Visibility".
func TestPreloadSnapshots(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		one := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "10", Preset: PresetPublicChat}).RoomID
		two := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "10", Preset: PresetPublicChat}).RoomID
		hv := func(room, v string) string {
			return mustSend(t, s, room, alice, "m.room.history_visibility", ptr(""), `{"history_visibility":"`+v+`"}`)
		}
		msg := func(room string) string { return mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"m"}`) }
		ids := []string{
			msg(one), hv(one, "joined"), msg(one),
			mustSend(t, s, one, bob, "m.room.member", ptr(bob), `{"membership":"join"}`), msg(one),
			hv(one, "world_readable"), msg(one), hv(one, "invited"), msg(one),
			mustSend(t, s, one, bob, "m.room.member", ptr(bob), `{"membership":"leave"}`), msg(one),
			hv(one, "sometimes"), msg(one), hv(one, "joined"), msg(one),
			msg(two), hv(two, "world_readable"),
			mustSend(t, s, two, alice, "m.room.member", ptr(bob), `{"membership":"invite"}`), msg(two),
			hv(two, "shared"), msg(two),
		}
		defer func(old int) { snapshotChunk = old }(snapshotChunk)
		snapshotChunk = 2
		p := newTestServer(t, db) // empty caches
		var wants []snapshotWant
		var nids []int64
		versions := map[int64]string{}
		for _, id := range ids {
			e, version, err := s.loadByID(ctx, db.Reader(), id)
			if err != nil {
				t.Fatal(err)
			}
			for _, nid := range []int64{e.row.StateBefore, e.row.StateAfter} {
				wants = append(wants, snapshotWant{nid: nid, version: version, member: true})
				if _, ok := versions[nid]; !ok {
					nids = append(nids, nid)
				}
				versions[nid] = version
			}
		}
		if len(nids) < 12 {
			t.Fatalf("only %d distinct snapshots", len(nids))
		}
		vis := p.newVisibility(db.Reader(), bob)
		if err := vis.preloadSnapshots(ctx, wants); err != nil {
			t.Fatal(err)
		}
		memberKey := tuple{"m.room.member", bob}
		gen := p.snapKeyGeneration(db.Reader())
		for _, nid := range nids {
			fresh := newTestServer(t, db)
			wantHV, wantM, err := fresh.newVisibility(db.Reader(), bob).at(ctx, versions[nid], nid)
			if err != nil {
				t.Fatal(err)
			}
			if got, ok := p.snapHV.get(nid); !ok || got != wantHV {
				t.Errorf("snapshot %d: preloaded history visibility %q, %v; want %q", nid, got, ok, wantHV)
			}
			read, err := loadSnapshotKeys(ctx, db.Reader(), nid, []tuple{memberKey})
			if err != nil {
				t.Fatal(err)
			}
			if !p.snapKeys.knows(gen, nid, memberKey) {
				t.Errorf("snapshot %d: bob's member key not preloaded", nid)
			}
			got, err := p.snapKeys.lookup(nid, []tuple{memberKey}, func([]tuple) (stateMap, error) {
				t.Errorf("snapshot %d: member key read again", nid)
				return read, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if got[memberKey] != read[memberKey] {
				t.Errorf("snapshot %d: preloaded member event %d, want %d", nid, got[memberKey], read[memberKey])
			}
			hv, m, err := vis.at(ctx, versions[nid], nid)
			if err != nil || hv != wantHV || m != wantM {
				t.Errorf("snapshot %d: at = %q, %q, %v; want %q, %q", nid, hv, m, err, wantHV, wantM)
			}
		}
	})
}

// The member key of a snapshot before an event is preloaded only where
// canSee's fast path does not answer: world_readable, or shared with
// the user joined now, read no membership there.
func TestPreloadSnapshotsMemberOnlyWhereRead(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		hv := func(room, v string) string {
			return mustSend(t, s, room, alice, "m.room.history_visibility", ptr(""), `{"history_visibility":"`+v+`"}`)
		}
		msg := func(room string) string { return mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"m"}`) }
		room := func() string {
			return mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "10", Preset: PresetPublicChat}).RoomID
		}
		readable, joinedShared, leftShared, joined := room(), room(), room(), room()
		hv(readable, "world_readable")
		hv(joinedShared, "shared")
		hv(leftShared, "shared")
		hv(joined, "joined")
		mustSend(t, s, joinedShared, bob, "m.room.member", ptr(bob), `{"membership":"join"}`)
		mustSend(t, s, leftShared, bob, "m.room.member", ptr(bob), `{"membership":"join"}`)
		mustSend(t, s, leftShared, bob, "m.room.member", ptr(bob), `{"membership":"leave"}`)
		fast := map[string]bool{readable: true, joinedShared: true, leftShared: false, joined: false}
		// A state event each, so that the snapshot before it is no
		// snapshot after an event asked for.
		events := map[string]string{}
		for r := range fast {
			msg(r)
			events[r] = mustSend(t, s, r, alice, "m.room.topic", ptr(""), `{"topic":"t"}`)
		}
		for _, cachedHV := range []bool{false, true} {
			p := newTestServer(t, db) // empty caches
			vis := p.newVisibility(db.Reader(), bob)
			var wants []snapshotWant
			before := map[string]int64{}
			for r, id := range events {
				e, version, err := p.loadByID(ctx, db.Reader(), id)
				if err != nil {
					t.Fatal(err)
				}
				if e.row.StateBefore == e.row.StateAfter {
					t.Fatalf("%s: one snapshot before and after a state event", r)
				}
				before[r] = e.row.StateBefore
				wants = append(wants, snapshotWant{nid: e.row.StateBefore, roomID: r, version: version, unlessFast: true})
				if cachedHV { // the history visibility known before the preload
					if _, err := vis.historyVisibilityAt(ctx, version, e.row.StateBefore); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := vis.preloadSnapshots(ctx, wants); err != nil {
				t.Fatal(err)
			}
			gen := p.snapKeyGeneration(db.Reader())
			for r, nid := range before {
				if _, ok := p.snapHV.get(nid); !ok {
					t.Errorf("cached %v, room %s: history visibility not preloaded", cachedHV, r)
				}
				got := p.snapKeys.knows(gen, nid, tuple{"m.room.member", bob})
				if want := !fast[r]; got != want {
					t.Errorf("cached %v, room %s (fast path %v): member key preloaded %v, want %v", cachedHV, r, fast[r], got, want)
				}
				// The preload agrees with canSee: the fast path answers
				// exactly where the key was left out.
				e, version, _ := p.loadByID(ctx, db.Reader(), events[r])
				hv, _ := vis.historyVisibilityAt(ctx, version, e.row.StateBefore)
				if f, err := vis.fastPath(ctx, r, hv); err != nil || f != fast[r] {
					t.Errorf("room %s: fastPath = %v, %v; want %v", r, f, err, fast[r])
				}
			}
		}
	})
}
