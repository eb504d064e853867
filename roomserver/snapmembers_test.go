package roomserver

import (
	"context"
	"fmt"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// The second recipient whose membership is checked at a snapshot loads
// every member entry of it into the snapshot key cache, marked complete:
// every other member's check, and a non-member's, is answered from the
// cache (docs/benchmarks.md, "stall": 200 listeners cost 200 queries of
// the snapshot chain on the first message after the last join).
func TestMembershipsAtPreloadsMembers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		preload int
		want    int8
	}{
		{"all members", 500, membersAll},
		{"too many members", 5, membersTooMany},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
				old := maxMemberPreload
				maxMemberPreload = tc.preload
				defer func() { maxMemberPreload = old }()
				ctx := context.Background()
				s := newTestServer(t, db)
				room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: "public_chat"}).RoomID
				users := []string{alice}
				for i := range 12 {
					u := fmt.Sprintf("@u%02d:%s", i, testServer)
					if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: u}); err != nil {
						t.Fatalf("join %s: %v", u, err)
					}
					users = append(users, u)
				}
				msg := mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"hi"}`)
				var nid int64
				if err := s.db.Reader().QueryRow(ctx, `SELECT state_after FROM roomserver_events WHERE event_id = $1`, msg).Scan(&nid); err != nil {
					t.Fatal(err)
				}
				for i, u := range append(users, "@stranger:"+testServer) {
					got, err := s.MembershipsAt(ctx, u, []string{msg})
					if err != nil {
						t.Fatalf("MembershipsAt(%s): %v", u, err)
					}
					want := "join"
					if i == len(users) {
						want = "leave"
					}
					if got[msg] != want {
						t.Fatalf("MembershipsAt(%s) = %q, want %q", u, got[msg], want)
					}
					if i == 0 {
						s.snapKeys.mu.Lock()
						members := s.snapKeys.members[nid]
						s.snapKeys.mu.Unlock()
						if members != membersOneMiss {
							t.Fatalf("after the first check: members mark %d, want %d (one key loaded)", members, membersOneMiss)
						}
					}
					if i == 1 {
						s.snapKeys.mu.Lock()
						members, held := s.snapKeys.members[nid], 0
						for k := range s.snapKeys.byID[nid] {
							if k.Type == "m.room.member" {
								held++
							}
						}
						s.snapKeys.mu.Unlock()
						if members != tc.want {
							t.Fatalf("after the second check: members mark %d, want %d", members, tc.want)
						}
						if tc.want == membersAll && held != len(users) {
							t.Fatalf("after the second check the cache holds %d member keys of the snapshot, want all %d", held, len(users))
						}
					}
				}
			})
		})
	}
}

// A load that found every member lets absent member keys be answered
// without loading; one that could not keep one of them does not; and
// the cache is bounded by the keys it holds as well as by snapshots.
func TestSnapshotKeyCacheMembers(t *testing.T) {
	c := newSnapshotKeyCache(100)
	a, b, other := tuple{"m.room.member", "@a:x"}, tuple{"m.room.member", "@b:x"}, tuple{"m.room.member", "@z:x"}
	loads := 0
	load := func(keep func(int64) bool) func([]tuple) (snapshotLoad, error) {
		return func([]tuple) (snapshotLoad, error) {
			loads++
			return snapshotLoad{got: stateMap{a: 1, b: 2}, keep: keep, members: membersAll}, nil
		}
	}
	if got, err := c.lookupKeeping(c.generation(), 7, []tuple{a}, load(nil)); err != nil || got[a] != 1 || len(got) != 1 {
		t.Fatalf("first lookup = %v, %v", got, err)
	}
	got, err := c.lookupKeeping(c.generation(), 7, []tuple{b, other}, load(nil))
	if err != nil || got[b] != 2 || len(got) != 1 || loads != 1 {
		t.Fatalf("second lookup = %v, %v after %d loads, want @b from the cache, @z absent, 1 load", got, err, loads)
	}
	// Split mode: entry 2 is not settled, so not every member is known.
	if _, err := c.lookupKeeping(c.generation(), 8, []tuple{a}, load(func(n int64) bool { return n != 2 })); err != nil {
		t.Fatal(err)
	}
	if _, err := c.lookupKeeping(c.generation(), 8, []tuple{other}, load(nil)); err != nil || loads != 3 {
		t.Fatalf("absent key after a partial load: %v, %d loads, want a load", err, loads)
	}
	// Bounded by keys: a load that would pass maxSnapshotKeyEntries empties the cache first.
	big := stateMap{}
	for i := range maxSnapshotKeyEntries - 2 {
		big[tuple{"m.room.member", fmt.Sprint(i)}] = int64(i + 1)
	}
	_, _ = c.lookupKeeping(c.generation(), 9, []tuple{a}, func([]tuple) (snapshotLoad, error) {
		return snapshotLoad{got: big, members: membersAll}, nil
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries > maxSnapshotKeyEntries || len(c.byID) != 1 || c.members[7] != 0 {
		t.Fatalf("cache holds %d keys in %d snapshots (members of 7: %d), want only snapshot 9", c.entries, len(c.byID), c.members[7])
	}
}
