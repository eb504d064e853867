package clientapi_test

import (
	"net/url"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// deactivationRooms makes bob's three rooms in which gone is joined,
// invited and knocking, and returns them in that order.
func deactivationRooms(t *testing.T, srv *testserver.Server, bob *user, gone *mautrix.Client) [3]id.RoomID {
	t.Helper()
	joined, err := bob.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	ok(t, "create joined room", err)
	_, err = gone.JoinRoomByID(bg, joined.RoomID)
	ok(t, "join", err)
	invited, err := bob.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{gone.UserID}})
	ok(t, "create invited room", err)
	knocked, err := bob.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat",
		InitialState: []*event.Event{{Type: event.StateJoinRules, StateKey: ptr(""), Content: event.Content{Raw: map[string]any{"join_rule": "knock"}}}}})
	ok(t, "create knock room", err)
	st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/knock/"+url.PathEscape(knocked.RoomID.String()), gone.AccessToken, map[string]any{})
	if st != 200 {
		t.Fatalf("knock: %d %v", st, body)
	}
	rooms := [3]id.RoomID{joined.RoomID, invited.RoomID, knocked.RoomID}
	wantMemberships(t, bob, gone.UserID, rooms, [3]string{"join", "invite", "knock"})
	return rooms
}

// wantMemberships checks, as bob reads the rooms' state, user's
// membership in each room.
func wantMemberships(t *testing.T, bob *user, user id.UserID, rooms [3]id.RoomID, want [3]string) {
	t.Helper()
	for i, roomID := range rooms {
		var content struct {
			Membership string `json:"membership"`
		}
		err := bob.StateEvent(bg, roomID, event.StateMember, user.String(), &content)
		ok(t, "member state", err)
		if content.Membership != want[i] {
			t.Errorf("%s's membership in room %d = %q, want %q", user, i, content.Membership, want[i])
		}
	}
}

// TestDeactivateLeavesRooms: POST /account/deactivate makes the account
// leave the rooms it is joined to, reject its invites and withdraw its
// knocks, as its own POST /leave would (the other members see a leave),
// before it answers. Spec: client-server-api, "POST
// /_matrix/client/v3/account/deactivate" (the spec leaves rooms to the
// server; Synapse leaves them too), "Room membership".
func TestDeactivateLeavesRooms(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		bob := newUser(t, srv, "bob")
		gone := registerUser(t, srv, "gone")
		rooms := deactivationRooms(t, srv, bob, gone)
		deactivate := srv.URL + "/_matrix/client/v3/account/deactivate"
		st, body := call(t, "POST", deactivate, gone.AccessToken, map[string]any{})
		if st != 401 {
			t.Fatalf("deactivate without auth: %d %v", st, body)
		}
		st, body = call(t, "POST", deactivate, gone.AccessToken, map[string]any{"auth": passwordAuth(body["session"].(string), "gone", testPassword)})
		if st != 200 {
			t.Fatalf("deactivate: %d %v", st, body)
		}
		wantMemberships(t, bob, gone.UserID, rooms, [3]string{"leave", "leave", "leave"})
		var queued int
		ok(t, "queue", srv.HS.DB.Reader().QueryRow(bg, `SELECT COUNT(*) FROM deactivation_leaves`).Scan(&queued))
		if queued != 0 {
			t.Errorf("%d accounts still queued for leaving after the rooms were left", queued)
		}
	})
}

// TestDeactivationQueueTakenUpByRunningServer: an account deactivated by
// another process (Accounts.Deactivate is what `myelin user deactivate`
// runs; it cannot wake the server) is queued, and the running server
// leaves its rooms at its next poll (every minute; shortened for the
// tests), then dequeues it.
func TestDeactivationQueueTakenUpByRunningServer(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		bob := newUser(t, srv, "bob")
		gone := registerUser(t, srv, "gone")
		rooms := deactivationRooms(t, srv, bob, gone)
		ok(t, "deactivate", srv.HS.ClientAPI.Accounts().Deactivate(bg, "gone"))
		deadline := time.Now().Add(10 * time.Second)
		queued := 1
		for queued != 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			ok(t, "queue", srv.HS.DB.Reader().QueryRow(bg, `SELECT COUNT(*) FROM deactivation_leaves`).Scan(&queued))
		}
		if queued != 0 {
			t.Fatalf("the running server did not take the queued account up in 10 s")
		}
		wantMemberships(t, bob, gone.UserID, rooms, [3]string{"leave", "leave", "leave"})
	})
}
