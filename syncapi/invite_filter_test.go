package syncapi_test

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// TestSlidingSyncHidesFilteredInvites: sliding sync lists no invite the
// invitee's MSC4155 config ignores, and none at all while
// m.invite_permission_config blocks every invite; other invites stay.
func TestSlidingSyncHidesFilteredInvites(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		fromBob := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "private_chat"})
		fromCarol := createRoom(t, srv, carol, roomserver.CreateRoomRequest{Preset: "private_chat"})
		membership(t, srv, "invite", bob, alice.id, fromBob)
		membership(t, srv, "invite", carol, alice.id, fromCarol)
		listed := func() []string {
			t.Helper()
			code, resp := sliding(t, srv, alice, map[string]any{"lists": map[string]any{"l": map[string]any{
				"ranges": [][]int{{0, 10}}, "timeline_limit": 0, "required_state": [][]string{}}}})
			if code != 200 {
				t.Fatalf("sliding sync = %d %v", code, resp)
			}
			rooms, _ := resp["rooms"].(map[string]any)
			return keys(rooms)
		}
		if got := listed(); len(got) != 2 {
			t.Fatalf("without a config, rooms = %v", got)
		}
		setAcct := func(dataType string, content map[string]any) {
			t.Helper()
			if err := alice.client.SetAccountData(context.Background(), dataType, content); err != nil {
				t.Fatal(err)
			}
		}
		setAcct(clientapi.InvitePermissionConfigType, map[string]any{"ignored_users": []string{bob.id}})
		if got := listed(); len(got) != 1 || got[0] != fromCarol {
			t.Errorf("with bob ignored, rooms = %v, want only %s", got, fromCarol)
		}
		setAcct(clientapi.StableInvitePermissionType, map[string]any{"default_action": "block"})
		if got := listed(); len(got) != 0 {
			t.Errorf("with all invites blocked, rooms = %v", got)
		}
	})
}
