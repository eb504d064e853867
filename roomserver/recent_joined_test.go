package roomserver

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestRecentEventsJoinedAtTo: RecentRequest.JoinedAtTo only stands in
// for the read of the user's current membership, which "shared" history
// visibility alone looks at. When it is true (bob was joined at To, and
// has left since) the answer is the one read without it: the shared
// events before his join (he joined after they were sent) and those he
// was in the room for, never the "joined"-only era before his join.
// Room versions come from the version cache, not the room's row.
// Spec: client-server-api, "Room History Visibility", "Server behaviour".
func TestRecentEventsJoinedAtTo(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "10", Preset: PresetPublicChat}).RoomID
		shared := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"shared era"}`)
		mustSend(t, s, room, alice, "m.room.history_visibility", ptr(""), `{"history_visibility":"joined"}`)
		joinedOnly := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"joined era, before bob"}`)
		mustSend(t, s, room, alice, "m.room.history_visibility", ptr(""), `{"history_visibility":"shared"}`)
		beforeBob := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"shared again, before bob"}`)
		if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		withBob := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"bob is here"}`)
		joinedTo, err := s.StreamPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Leave(ctx, MembershipRequest{RoomID: room, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		visible := func(user string, hint bool) map[string]bool {
			t.Helper()
			rr, err := s.RecentEvents(ctx, RecentRequest{UserID: user, RoomID: room, To: joinedTo, Limit: 100, JoinedAtTo: hint})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]bool{}
			for _, e := range rr.Events {
				got[e.EventID] = true
			}
			return got
		}
		// Bob was joined at joinedTo: every shared event before it is his.
		got := visible(bob, true)
		if !got[shared] || !got[beforeBob] || !got[withBob] || got[joinedOnly] {
			t.Errorf("bob joined at To: shared %v, before bob %v, with bob %v, joined era %v; want true, true, true, false",
				got[shared], got[beforeBob], got[withBob], got[joinedOnly])
		}
		// Without the hint his membership is read (leave), with the same answer.
		got = visible(bob, false)
		if !got[shared] || !got[beforeBob] || !got[withBob] || got[joinedOnly] {
			t.Errorf("bob, no hint: shared %v, before bob %v, with bob %v, joined era %v; want true, true, true, false",
				got[shared], got[beforeBob], got[withBob], got[joinedOnly])
		}
		// Charlie never joined: without the hint nothing of the room.
		if got := visible(charlie, false); len(got) != 0 {
			t.Errorf("charlie, never joined, sees %d events", len(got))
		}
		if v, ok := s.versions.get(room); !ok || v != "10" {
			t.Errorf("room version cached by RecentEvents: %q, %v", v, ok)
		}
	})
}
