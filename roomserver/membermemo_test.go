package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// tableMembers reads keys' current m.room.member entries from the table,
// as IndexedStateKeys did before the memo: event NIDs and IDs in the
// table's state_key order.
func tableMembers(t *testing.T, db *storage.DB, roomID string, keys []string) (nids []int64, ids []string) {
	t.Helper()
	ctx := context.Background()
	in, keyArgs := storage.InList("", keys)
	rows, err := db.Reader().Query(ctx, `SELECT event_nid, event_id FROM roomserver_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key IN `+shiftPlaceholders(in, 1)+` ORDER BY state_key`,
		append([]any{roomID}, keyArgs...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var nid int64
		var id string
		if err := rows.Scan(&nid, &id); err != nil {
			t.Fatal(err)
		}
		nids = append(nids, nid)
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return nids, ids
}

// memoAgrees checks that IndexedStateKeys(roomID, m.room.member, keys)
// answers what the table holds, in its order, and that what the memo
// holds for keys (if it knows them all) is the table's. what names the
// step for the failure messages.
func memoAgrees(t *testing.T, s *Server, roomID string, keys []string, what string) {
	t.Helper()
	wantNIDs, wantIDs := tableMembers(t, s.db, roomID, keys)
	if nids, _, ok := s.members.lookup(roomID, keys); ok && !slices.Equal(nids, wantNIDs) {
		t.Errorf("%s: the memo holds NIDs %v for %v, the table %v", what, nids, keys, wantNIDs)
	}
	got, err := s.IndexedStateKeys(context.Background(), roomID, "m.room.member", keys)
	if err != nil {
		t.Fatalf("%s: IndexedStateKeys: %v", what, err)
	}
	if ids := eventIDs(got); !slices.Equal(ids, wantIDs) {
		t.Errorf("%s: IndexedStateKeys(%v) = %v, the table holds %v", what, keys, ids, wantIDs)
	}
}

// memoKnows fails unless the memo answers keys of roomID on its own.
func memoKnows(t *testing.T, s *Server, roomID string, keys []string, what string) {
	t.Helper()
	if _, _, ok := s.members.lookup(roomID, keys); !ok {
		t.Fatalf("%s: the memo does not know %v; the test needs it filled", what, keys)
	}
}

// TestMemberMemoFollowsMembership: the memo, filled by a read, follows a
// join, a display name change and a leave committed after it, and a
// key absent from the state (asked before the join) is known absent. The
// keys are asked out of order and with a repeat: the answer is in
// state_key order, each event once, as the table's read gives it.
func TestMemberMemoFollowsMembership(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
		keys := []string{charlie, bob, alice, bob}

		fill := func(what string) {
			t.Helper()
			memoAgrees(t, s, room, keys, what+" (read)")
			memoKnows(t, s, room, keys, what)
			memoAgrees(t, s, room, keys, what+" (from the memo)")
		}
		fill("before bob's join")
		if got, _ := s.IndexedStateKeys(ctx, room, "m.room.member", []string{bob}); len(got) != 0 {
			t.Fatalf("bob is in the state before joining: %v", eventIDs(got))
		}
		if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob, Target: bob}); err != nil {
			t.Fatal(err)
		}
		memoAgrees(t, s, room, keys, "after bob's join")
		fill("after bob's join")
		mustSend(t, s, room, bob, "m.room.member", ptr(bob), `{"membership":"join","displayname":"Bob"}`)
		memoAgrees(t, s, room, keys, "after bob's display name")
		got, err := s.IndexedStateKeys(ctx, room, "m.room.member", []string{bob})
		if err != nil || len(got) != 1 || !json.Valid(got[0].JSON) {
			t.Fatalf("bob's member event: %v, %v", got, err)
		}
		var content struct{ Displayname string }
		if err := json.Unmarshal(got[0].Content, &content); err != nil || content.Displayname != "Bob" {
			t.Errorf("bob's member event after the name change: %s (%v)", got[0].Content, err)
		}
		fill("after bob's display name")
		if _, err := s.Leave(ctx, MembershipRequest{RoomID: room, Sender: bob, Target: bob}); err != nil {
			t.Fatal(err)
		}
		memoAgrees(t, s, room, keys, "after bob's leave")
		mustMember(t, s, room, bob, "leave")
	})
}

// TestMemberMemoFollowsStateReset: a federated fork resolved back to
// older events (TestStateResetByEventToldAtItsPosition's room) sets
// charlie's entry from the kick back to his join without an event of
// his: the memo, filled with the kick, must answer the join.
func TestMemberMemoFollowsStateReset(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		d, s := kickedCharlieRoom(t, db)
		keys := []string{charlie, alice}
		memoAgrees(t, s, d.roomID, keys, "after the kick")
		memoKnows(t, s, d.roomID, keys, "after the kick")
		if r := d.input(t, s, "demote"); r.Outcome != Accepted {
			t.Fatalf("demote: %s %s", r.Outcome, r.Reason)
		}
		mustMember(t, s, d.roomID, charlie, "join") // the kick is dropped: a reset
		memoAgrees(t, s, d.roomID, keys, "after the reset")
		got, err := s.IndexedStateKeys(context.Background(), d.roomID, "m.room.member", []string{charlie})
		if err != nil || len(got) != 1 || got[0].EventID != d.byName["charlie-join"].EventID() {
			t.Errorf("charlie's entry after the reset: %v, %v; want his join", eventIDs(got), err)
		}
	})
}

// TestMemberMemoFollowsOutlierPromotion: charlie's join first comes as
// part of a gap's state (an outlier the current state names), then as a
// timeline event, which moves it to a new event NID (moveEventNID). The
// memo, filled with the outlier's NID, must not answer it afterwards.
func TestMemberMemoFollowsOutlierPromotion(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s, d := promotionRoom(t, db)
		d.add("cjoin", charlie, "m.room.member", ptr(charlie), `{"membership":"join"}`, "bob-join")
		d.add("m3", charlie, "m.room.message", nil, `{"msgtype":"m.text","body":"after the gap"}`, "cjoin")
		var state []json.RawMessage
		for _, e := range d.stateAfter["cjoin"] {
			state = append(state, e.JSON())
		}
		r, err := s.InputWithState(ctx, InputWithStateRequest{RoomVersion: "10", JSON: d.byName["m3"].JSON(),
			PrevStates: [][]json.RawMessage{state}})
		if err != nil || r.Outcome != Accepted {
			t.Fatalf("m3 with the gap's state: %+v, %v", r, err)
		}
		keys := []string{charlie}
		outlierNIDs, _ := tableMembers(t, db, d.roomID, keys)
		memoAgrees(t, s, d.roomID, keys, "with the outlier")
		memoKnows(t, s, d.roomID, keys, "with the outlier")
		if r := d.input(t, s, "cjoin"); r.Outcome != Accepted {
			t.Fatalf("promotion: %+v", r)
		}
		nids, _ := tableMembers(t, db, d.roomID, keys)
		if len(nids) != 1 || slices.Equal(nids, outlierNIDs) {
			t.Fatalf("the promotion did not move charlie's entry: %v, before %v", nids, outlierNIDs)
		}
		memoAgrees(t, s, d.roomID, keys, "after the promotion")
		memoKnows(t, s, d.roomID, keys, "after the promotion")
		memoAgrees(t, s, d.roomID, keys, "after the promotion, from the memo")
	})
}

// TestMemberMemoReadRacingCommit: a read of the table that finished
// before bob's display name change committed, and stores its answer
// after that commit (its OnCommit hook has run), must not store it.
func TestMemberMemoReadRacingCommit(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
		if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob, Target: bob}); err != nil {
			t.Fatal(err)
		}
		keys := []string{alice, bob}
		_, before := tableMembers(t, db, room, keys)
		ran := false
		s.members.beforeStore = func() {
			if ran {
				return
			}
			ran = true
			mustSend(t, s, room, bob, "m.room.member", ptr(bob), `{"membership":"join","displayname":"Bob"}`)
		}
		got, err := s.IndexedStateKeys(ctx, room, "m.room.member", keys)
		s.members.beforeStore = nil
		if err != nil {
			t.Fatal(err)
		}
		if !ran {
			t.Fatal("the read did not reach the store")
		}
		if ids := eventIDs(got); !slices.Equal(ids, before) {
			t.Fatalf("the racing read answered %v, want the state it read, %v", ids, before)
		}
		if _, after := tableMembers(t, db, room, keys); slices.Equal(after, before) {
			t.Fatal("the display name change did not change the state")
		}
		memoAgrees(t, s, room, keys, "after the racing read")
	})
}

// TestMemberMemoRolledBackWrite: a write of bob's entry that rolls back
// leaves the memo as it was — still filled, still the table's — and a
// committed write after it is seen.
func TestMemberMemoRolledBackWrite(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
		bobJoin, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob, Target: bob})
		if err != nil {
			t.Fatal(err)
		}
		keys := []string{alice, bob}
		memoAgrees(t, s, room, keys, "before")
		memoKnows(t, s, room, keys, "before")
		rows, err := eventRowsByID(ctx, db.Reader(), []string{bobJoin.EventID})
		if err != nil {
			t.Fatal(err)
		}
		bobRow := rows[bobJoin.EventID]
		aliceNIDs, _ := tableMembers(t, db, room, []string{alice})
		key := tuple{"m.room.member", bob}
		rollback := errors.New("rolled back on purpose")
		err = db.Write(ctx, func(tx storage.Tx) error {
			// bob's entry removed, then the transaction fails.
			if err := s.updateCurrentState(ctx, tx, room, stateMap{key: bobRow.NID}, stateMap{},
				map[int64]*eventRow{bobRow.NID: bobRow}, 0); err != nil {
				return err
			}
			return rollback
		})
		if !errors.Is(err, rollback) {
			t.Fatalf("the write: %v, want it rolled back", err)
		}
		if len(aliceNIDs) != 1 {
			t.Fatalf("alice's entry: %v", aliceNIDs)
		}
		memoKnows(t, s, room, keys, "after the rollback")
		memoAgrees(t, s, room, keys, "after the rollback")
		if _, err := s.Leave(ctx, MembershipRequest{RoomID: room, Sender: bob, Target: bob}); err != nil {
			t.Fatal(err)
		}
		memoAgrees(t, s, room, keys, "after bob's leave")
	})
}

// TestMemberMemoOffInSplitMode: with other processes writing the table
// (Deps.Shared), the memo holds nothing, and a member change made by the
// other process is answered at once.
func TestMemberMemoOffInSplitMode(t *testing.T) {
	ctx := context.Background()
	a, b := splitPair(t)
	room := mustCreate(t, a, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
	keys := []string{alice, bob}
	memoAgrees(t, b, room, keys, "before bob's join")
	if _, _, ok := b.members.lookup(room, keys); ok {
		t.Fatal("split mode: the memo was filled")
	}
	if _, err := a.Join(ctx, MembershipRequest{RoomID: room, Sender: bob, Target: bob}); err != nil {
		t.Fatal(err)
	}
	memoAgrees(t, b, room, keys, "after bob's join in the other process")
	if got, err := b.IndexedStateKeys(ctx, room, "m.room.member", []string{bob}); err != nil || len(got) != 1 {
		t.Fatalf("bob's join, seen by the other process: %v, %v", eventIDs(got), err)
	}
}

// BenchmarkLazyMembersAfterSend is a woken /sync's lazy-loaded members
// read: after each message (its commit not timed), IndexedStateKeys of
// its sender and two other members of a 50-member room, answered by the
// memo (memo) or read from the table as without it (table). SQLite.
func BenchmarkLazyMembersAfterSend(b *testing.B) {
	for _, mode := range []string{"memo", "table"} {
		b.Run(mode, func(b *testing.B) {
			ctx := context.Background()
			db := storagetest.OpenSQLite(b)
			s := newTestServer(b, db)
			room := mustCreate(b, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
			var users []string
			for i := range 50 {
				u := "@user" + strconv.Itoa(i) + ":test.local"
				if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: u, Target: u}); err != nil {
					b.Fatal(err)
				}
				users = append(users, u)
			}
			if !s.memberMemoUsable(ctx) {
				b.Fatal("the memo is off")
			}
			if mode == "table" {
				s.members.usable = false
			}
			keys := []string{alice, users[7], users[31]}
			req := benchSendRequest(room)
			var cpu, wall time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if _, err := s.SendEvent(ctx, req); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				c, w := cpuTime(b), time.Now()
				got, err := s.IndexedStateKeys(ctx, room, "m.room.member", keys)
				cpu += cpuTime(b) - c
				wall += time.Since(w)
				if err != nil || len(got) != 3 {
					b.Fatalf("%d events, %v", len(got), err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/read")
			b.ReportMetric(float64(wall.Microseconds())/float64(b.N), "wall-µs/read")
		})
	}
}
