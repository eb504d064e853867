package homeserver

import (
	"context"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestSharedRoomUsers: the device-list audience of a user is everyone
// joined to one of the user's joined rooms, once each; invited and departed
// members and rooms the user has left do not count.
func TestSharedRoomUsers(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		key, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		rooms, err := roomserver.New(ctx, roomserver.Deps{DB: db, ServerName: "test.local", Key: key,
			Config: config.RoomServer{DefaultRoomVersion: "12"}, Notify: func(string, int64) {}})
		if err != nil {
			t.Fatal(err)
		}
		const alice, bob, carol, dan, erin = "@alice:test.local", "@bob:test.local", "@carol:test.local", "@dan:test.local", "@erin:test.local"
		room := func(creator string, joiners ...string) string {
			t.Helper()
			resp, err := rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: creator, Preset: "public_chat"})
			if err != nil {
				t.Fatal(err)
			}
			for _, u := range joiners {
				if _, err := rooms.Join(ctx, roomserver.MembershipRequest{RoomID: resp.RoomID, Sender: u}); err != nil {
					t.Fatal(err)
				}
			}
			return resp.RoomID
		}
		first := room(alice, bob, carol)
		room(bob, alice, carol) // carol and bob again: listed once
		left := room(dan, alice)
		if _, err := rooms.Leave(ctx, roomserver.MembershipRequest{RoomID: left, Sender: alice}); err != nil {
			t.Fatal(err) // dan shares no joined room with alice any more
		}
		if _, err := rooms.Invite(ctx, roomserver.MembershipRequest{RoomID: first, Sender: alice, Target: erin}); err != nil {
			t.Fatal(err) // invited, not joined
		}
		got, err := sharedRoomUsers(rooms)(ctx, alice)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		if want := []string{alice, bob, carol}; !slices.Equal(got, want) {
			t.Errorf("sharedRoomUsers(alice) = %v, want %v", got, want)
		}
	})
}
