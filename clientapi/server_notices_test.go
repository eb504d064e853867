package clientapi_test

import (
	"net/url"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

func withServerNotices(c *config.Config) {
	c.ClientAPI.ServerNotices.Localpart = "notices"
	c.ClientAPI.ServerNotices.DisplayName = "Official"
	c.ClientAPI.ServerNotices.RoomName = "Notices from the server"
}

// newAdmin creates a server administrator.
func newAdmin(t *testing.T, srv *testserver.Server, localpart string) *user {
	t.Helper()
	u := newUser(t, srv, localpart)
	err := srv.HS.DB.Write(bg, func(tx storage.Tx) error {
		_, err := tx.Exec(bg, `UPDATE accounts SET is_admin = TRUE WHERE localpart = $1`, localpart)
		return err
	})
	ok(t, "make admin", err)
	return u
}

// TestServerNotices: the send_server_notice admin API invites the user
// to one server notices room per user, tagged m.server_notice; the user
// cannot reject the invite but can join and leave; a later notice
// re-invites them to the same room, also after a restart; a txnId makes
// the send idempotent.
// Spec: client-server-api, "Server Notices".
func TestServerNotices(t *testing.T) {
	testserver.ForEachEngine(t, withServerNotices, func(t *testing.T, srv *testserver.Server) {
		admin := newAdmin(t, srv, "admin")
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		const api = "/_synapse/admin/v1/send_server_notice"
		notice := map[string]any{"user_id": "@alice:localhost",
			"content": map[string]any{"msgtype": "m.text", "body": "maintenance tonight"}}

		status, body := call(t, "POST", srv.URL+api, alice.token, nil)
		expectError(t, "a normal user", status, body, 403, "M_FORBIDDEN")
		status, body = call(t, "POST", srv.URL+api, "", notice)
		expectError(t, "no token", status, body, 401, "M_MISSING_TOKEN")
		status, body = call(t, "POST", srv.URL+api, admin.token, map[string]any{"content": map[string]any{}})
		expectError(t, "no user_id", status, body, 400, "M_MISSING_PARAM")
		status, body = call(t, "POST", srv.URL+api, admin.token, map[string]any{"user_id": "@alice:localhost"})
		expectError(t, "no content", status, body, 400, "M_BAD_JSON")
		status, body = call(t, "POST", srv.URL+api, admin.token, map[string]any{"user_id": "@alice:elsewhere.example", "content": map[string]any{}})
		expectError(t, "remote user", status, body, 400, "M_INVALID_PARAM")
		status, body = call(t, "POST", srv.URL+api, admin.token, map[string]any{"user_id": "@nobody:localhost", "content": map[string]any{}})
		expectError(t, "unknown user", status, body, 404, "M_NOT_FOUND")

		status, body = call(t, "POST", srv.URL+api, admin.token, notice)
		if status != 200 || body["event_id"] == nil {
			t.Fatalf("send = %d %v", status, body)
		}
		firstEvent := id.EventID(body["event_id"].(string))

		sync, err := alice.SyncRequest(bg, 0, "", "", false, "")
		ok(t, "sync", err)
		if len(sync.Rooms.Invite) != 1 {
			t.Fatalf("alice's invites = %v, want one", sync.Rooms.Invite)
		}
		var roomID id.RoomID
		named := false
		for r, inv := range sync.Rooms.Invite {
			roomID = r
			for _, ev := range inv.State.Events {
				if ev.Sender != "@notices:localhost" {
					t.Errorf("invite_state %s sent by %s, want the notices user", ev.Type.Type, ev.Sender)
				}
				if ev.Type == event.StateRoomName {
					named = ev.Content.Raw["name"] == "Notices from the server"
				}
			}
		}
		if !named {
			t.Errorf("invite_state lacks the configured room name")
		}
		var tags map[string]any
		ok(t, "get m.tag", alice.GetRoomAccountData(bg, roomID, "m.tag", &tags))
		if _, tagged := tags["tags"].(map[string]any)["m.server_notice"]; !tagged {
			t.Errorf("m.tag = %v, want m.server_notice", tags)
		}

		_, err = alice.LeaveRoom(bg, roomID)
		wantErrcode(t, "rejecting the invite", err, 403, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM")
		_, err = bob.JoinRoomByID(bg, roomID)
		wantErrcode(t, "a stranger joins", err, 403, "M_FORBIDDEN")

		_, err = alice.JoinRoomByID(bg, roomID)
		ok(t, "join", err)
		ev, err := alice.GetEvent(bg, roomID, firstEvent)
		ok(t, "get notice", err)
		if ev.Sender != "@notices:localhost" || ev.Content.Raw["body"] != "maintenance tonight" {
			t.Errorf("notice = %s %v", ev.Sender, ev.Content.Raw)
		}
		var member map[string]any
		ok(t, "notices user's member event", alice.StateEvent(bg, roomID, event.StateMember, "@notices:localhost", &member))
		if member["displayname"] != "Official" {
			t.Errorf("notices user's displayname = %v", member["displayname"])
		}
		_, err = alice.SendText(bg, roomID, "hello?")
		wantErrcode(t, "the user writes in the notices room", err, 403, "M_FORBIDDEN")
		_, err = alice.LeaveRoom(bg, roomID)
		ok(t, "leave after joining", err)

		// A new notice: the same room, a new invite. Then the same after a
		// restart (the room is remembered in the database).
		for _, restart := range []bool{false, true} {
			if restart {
				_, err = alice.LeaveRoom(bg, roomID)
				wantErrcode(t, "rejecting before restart", err, 403, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM")
				_, err = alice.JoinRoomByID(bg, roomID)
				ok(t, "join again", err)
				_, err = alice.LeaveRoom(bg, roomID)
				ok(t, "leave again", err)
				srv.Restart(t)
				alice.HomeserverURL = mustParseURL(t, srv.URL)
			}
			status, body = call(t, "POST", srv.URL+api, admin.token, notice)
			if status != 200 {
				t.Fatalf("second send = %d %v", status, body)
			}
			sync, err = alice.SyncRequest(bg, 0, "", "", false, "")
			ok(t, "sync", err)
			if _, invited := sync.Rooms.Invite[roomID]; !invited || len(sync.Rooms.Invite) != 1 {
				t.Fatalf("after leaving, invites = %v, want only %s", sync.Rooms.Invite, roomID)
			}
		}

		// Idempotent with a transaction ID; another ID is another event.
		send := func(txn string) string {
			t.Helper()
			status, body := call(t, "PUT", srv.URL+api+"/"+txn, admin.token, notice)
			if status != 200 {
				t.Fatalf("PUT %s = %d %v", txn, status, body)
			}
			return body["event_id"].(string)
		}
		a, b, c := send("t1"), send("t1"), send("t2")
		if a != b || a == c {
			t.Errorf("txn t1 twice = %s, %s; t2 = %s", a, b, c)
		}

		// Nobody can log in as the notices user or take its name.
		_, err = client(t, srv, "", "").Login(bg, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "notices"}, Password: ""})
		if err == nil {
			t.Error("logged in as the notices user with an empty password")
		}
		_, err = client(t, srv, "", "").RegisterDummy(bg, &mautrix.ReqRegister[any]{Username: "notices", Password: testPassword})
		wantErrcode(t, "registering the notices user's name", err, 400, "M_USER_IN_USE")
	})
}

// TestServerNoticesDisabled: without client_api.server_notices.localpart
// the admin API answers 400 and normal users still get 403.
func TestServerNoticesDisabled(t *testing.T) {
	srv := testserver.Start(t, storage.SQLite, nil)
	admin := newAdmin(t, srv, "admin")
	alice := newUser(t, srv, "alice")
	notice := map[string]any{"user_id": "@alice:localhost", "content": map[string]any{"body": "x"}}
	status, body := call(t, "POST", srv.URL+"/_synapse/admin/v1/send_server_notice", admin.token, notice)
	expectError(t, "disabled", status, body, 400, "M_UNKNOWN")
	status, body = call(t, "POST", srv.URL+"/_synapse/admin/v1/send_server_notice", alice.token, notice)
	expectError(t, "normal user", status, body, 403, "M_FORBIDDEN")
}

func mustParseURL(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	ok(t, "parse URL", err)
	return u
}
