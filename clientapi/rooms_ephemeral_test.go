package clientapi_test

import (
	"net/url"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestRoomsTyping: typing notifications start, stop and expire, and
// advance the typing stream. Spec: client-server-api, "Typing Notifications".
func TestRoomsTyping(t *testing.T) {
	srv := testserver.Start(t, "sqlite", nil)
	alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
	room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	ok(t, "create", err)
	roomID := room.RoomID.String()
	api := srv.HS.ClientAPI

	_, _, start := api.TypingFor(roomID)
	_, err = alice.UserTyping(bg, room.RoomID, true, 10*time.Second)
	ok(t, "typing", err)
	users, changed, latest := api.TypingFor(roomID)
	if !slices.Equal(users, []string{alice.id.String()}) || changed <= start || latest != changed {
		t.Fatalf("typing = %v changed %d latest %d (start %d)", users, changed, latest, start)
	}
	_, err = bob.UserTyping(bg, room.RoomID, true, time.Second)
	wantErrcode(t, "typing in a room not joined", err, 403, "M_FORBIDDEN")
	status, _ := callRaw(t, srv, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/typing/"+url.PathEscape(alice.id.String()), bob.token, `{"typing": true}`)
	if status != 403 {
		t.Fatalf("setting another user's typing: %d", status)
	}
	_, err = alice.UserTyping(bg, room.RoomID, false, 0)
	ok(t, "stop typing", err)
	if users, c, _ := api.TypingFor(roomID); len(users) != 0 || c <= changed {
		t.Fatalf("after stop: %v changed %d", users, c)
	}
	_, err = alice.UserTyping(bg, room.RoomID, true, 50*time.Millisecond)
	ok(t, "short typing", err)
	deadline := time.Now().Add(5 * time.Second)
	for {
		users, _, _ := api.TypingFor(roomID)
		if len(users) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("typing did not expire")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRoomsReceipts: public, private and threaded receipts as streams,
// and read markers. Spec: client-server-api, "Receipts", "Fully read markers".
func TestRoomsReceipts(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "create", err)
		_, err = bob.JoinRoomByID(bg, room.RoomID)
		ok(t, "join", err)
		msg, err := alice.SendText(bg, room.RoomID, "read me")
		ok(t, "send", err)
		api := srv.HS.ClientAPI
		rooms := []string{room.RoomID.String()}

		_, before, err := api.ReceiptsSince(bg, alice.id.String(), rooms, 0)
		ok(t, "receipts head", err)
		ok(t, "m.read", bob.SendReceipt(bg, room.RoomID, msg.EventID, event.ReceiptTypeRead, nil))
		ok(t, "m.read.private", bob.SendReceipt(bg, room.RoomID, msg.EventID, event.ReceiptTypeReadPrivate, nil))
		ok(t, "threaded", bob.SendReceipt(bg, room.RoomID, msg.EventID, event.ReceiptTypeRead, map[string]any{"thread_id": "main"}))

		forAlice, latest, err := api.ReceiptsSince(bg, alice.id.String(), rooms, before)
		ok(t, "receipts for alice", err)
		if latest <= before || len(forAlice) != 2 {
			t.Fatalf("alice sees %+v (latest %d)", forAlice, latest)
		}
		for _, r := range forAlice {
			if r.Type != "m.read" || r.UserID != bob.id.String() || r.EventID != msg.EventID.String() {
				t.Fatalf("alice sees %+v", r)
			}
		}
		if forAlice[0].ThreadID != "" || forAlice[1].ThreadID != "main" {
			t.Fatalf("thread IDs %q %q", forAlice[0].ThreadID, forAlice[1].ThreadID)
		}
		forBob, _, err := api.ReceiptsSince(bg, bob.id.String(), rooms, before)
		ok(t, "receipts for bob", err)
		if len(forBob) != 3 {
			t.Fatalf("bob sees %d receipts, want his private one too", len(forBob))
		}
		again, _, err := api.ReceiptsSince(bg, alice.id.String(), rooms, latest)
		ok(t, "receipts since latest", err)
		if len(again) != 0 {
			t.Fatalf("receipts after the head: %v", again)
		}

		err = carol.SendReceipt(bg, room.RoomID, msg.EventID, event.ReceiptTypeRead, nil)
		wantErrcode(t, "receipt outside the room", err, 403, "M_FORBIDDEN")
		r := "/_matrix/client/v3/rooms/" + url.PathEscape(room.RoomID.String())
		runSteps(t, srv, []step{
			{name: "empty thread_id", method: "POST", path: r + "/receipt/m.read/" + url.PathEscape(msg.EventID.String()), token: bob.token, body: `{"thread_id": ""}`, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "unknown type", method: "POST", path: r + "/receipt/m.seen/" + url.PathEscape(msg.EventID.String()), token: bob.token, body: `{}`, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "unknown event", method: "POST", path: r + "/receipt/m.read/%24nope", token: bob.token, body: `{}`, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "fully_read via receipt", method: "POST", path: r + "/receipt/m.fully_read/" + url.PathEscape(msg.EventID.String()), token: alice.token, body: `{}`, wantStatus: 200},
			{name: "fully_read stored as account data", method: "GET", path: "/_matrix/client/v3/user/@alice:localhost/rooms/" + url.PathEscape(room.RoomID.String()) + "/account_data/m.fully_read",
				token: alice.token, wantStatus: 200, wantBody: `{"event_id": "` + msg.EventID.String() + `"}`},
		})
		ok(t, "read_markers", bob.SetReadMarkers(bg, room.RoomID, map[string]any{"m.fully_read": msg.EventID, "m.read.private": msg.EventID}))
		status, body := callRaw(t, srv, "GET", "/_matrix/client/v3/user/@bob:localhost/rooms/"+url.PathEscape(room.RoomID.String())+"/account_data/m.fully_read", bob.token, "")
		if status != 200 || body["event_id"] != msg.EventID.String() {
			t.Fatalf("bob's m.fully_read = %d %v", status, body)
		}
	})
}

// TestRoomsPresence: setting and reading presence, as a stream.
// Spec: client-server-api, "Presence".
func TestRoomsPresence(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		api := srv.HS.ClientAPI
		never, err := bob.GetPresence(bg, alice.id)
		ok(t, "presence never set", err)
		if never.Presence != event.PresenceOffline {
			t.Fatalf("unset presence = %+v", never)
		}
		ok(t, "set presence", alice.SetPresence(bg, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "coding"}))
		got, err := bob.GetPresence(bg, alice.id)
		ok(t, "get presence", err)
		if got.Presence != event.PresenceOnline || got.StatusMsg != "coding" || !got.CurrentlyActive {
			t.Fatalf("presence = %+v", got)
		}
		changes, latest, err := api.PresenceSince(bg, 0)
		ok(t, "presence stream", err)
		if len(changes) != 1 || changes[0].UserID != alice.id.String() || changes[0].Position != latest {
			t.Fatalf("changes = %+v latest %d", changes, latest)
		}
		ok(t, "go away", alice.SetPresence(bg, mautrix.ReqPresence{Presence: event.PresenceUnavailable}))
		changes, next, err := api.PresenceSince(bg, latest)
		ok(t, "presence stream again", err)
		if len(changes) != 1 || changes[0].Presence != "unavailable" || changes[0].StatusMsg != nil || next <= latest {
			t.Fatalf("changes since %d = %+v", latest, changes)
		}
		runSteps(t, srv, []step{
			{name: "someone else's presence", method: "PUT", path: "/_matrix/client/v3/presence/@alice:localhost/status", token: bob.token, body: `{"presence": "offline"}`, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "bad state", method: "PUT", path: "/_matrix/client/v3/presence/@bob:localhost/status", token: bob.token, body: `{"presence": "busy"}`, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "unknown user", method: "GET", path: "/_matrix/client/v3/presence/@nobody:localhost/status", token: bob.token, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
		})
	})
}
