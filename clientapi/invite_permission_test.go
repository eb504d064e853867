package clientapi_test

import (
	"encoding/json"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestInvitePermissionRules: MSC4155's precedence (allowed, ignored,
// blocked users, then allowed, ignored, blocked servers, then allow) and
// globs with * and ?.
func TestInvitePermissionRules(t *testing.T) {
	for _, tc := range []struct {
		config  string
		inviter string
		want    clientapi.InviteRule
	}{
		{`{}`, "@bob:hs2", clientapi.InviteAllowed},
		{`{"blocked_users": ["@bob:hs2"]}`, "@bob:hs2", clientapi.InviteBlocked},
		{`{"blocked_users": ["@bob:hs2"]}`, "@bobby:hs2", clientapi.InviteAllowed},
		{`{"ignored_users": ["@bob:hs2"]}`, "@bob:hs2", clientapi.InviteIgnored},
		{`{"blocked_servers": ["hs2"]}`, "@bob:hs2", clientapi.InviteBlocked},
		{`{"blocked_servers": ["hs2"]}`, "@bob:hs22", clientapi.InviteAllowed},
		{`{"ignored_servers": ["HS2"]}`, "@bob:hs2", clientapi.InviteIgnored},
		{`{"blocked_servers": ["hs*"]}`, "@bob:hs1", clientapi.InviteBlocked},
		{`{"blocked_servers": ["hs?"]}`, "@bob:hs10", clientapi.InviteAllowed},
		{`{"blocked_users": ["@user-?*"]}`, "@user-1:hs2", clientapi.InviteBlocked},
		{`{"blocked_users": ["@user-?*"]}`, "@user-:hs2", clientapi.InviteBlocked},
		{`{"blocked_users": ["@user-?*"]}`, "@alice:hs2", clientapi.InviteAllowed},
		{`{"allowed_users": ["@bob:hs2"], "blocked_servers": ["hs2"]}`, "@bob:hs2", clientapi.InviteAllowed},
		{`{"allowed_users": ["@bob:hs2"], "blocked_servers": ["hs2"]}`, "@eve:hs2", clientapi.InviteBlocked},
		{`{"blocked_users": ["@eve:hs2"], "allowed_servers": ["hs2"]}`, "@eve:hs2", clientapi.InviteBlocked},
		{`{"ignored_users": ["@bob:hs2"], "blocked_users": ["@bob:hs2"]}`, "@bob:hs2", clientapi.InviteIgnored},
		{`{"ignored_users": ["@bob:hs2"], "allowed_users": ["@bob:hs2"]}`, "@bob:hs2", clientapi.InviteAllowed},
		{`{"allowed_users": null, "blocked_users": null, "blocked_servers": "hs2"}`, "@bob:hs2", clientapi.InviteAllowed},
		{`{"blocked_users": [1, "@bob:hs2"]}`, "@bob:hs2", clientapi.InviteBlocked},
		{`not json`, "@bob:hs2", clientapi.InviteAllowed},
	} {
		if got := clientapi.ParseInvitePermissionConfig(json.RawMessage(tc.config)).Rule(tc.inviter); got != tc.want {
			t.Errorf("%s for %s = %d, want %d", tc.config, tc.inviter, got, tc.want)
		}
	}
}

// TestInviteFilterLocal: MSC4155 between users of one server. A blocked
// inviter gets 403 from /invite and createRoom; an ignored one succeeds
// but the invite is not in the invitee's /sync (whose rooms.invite is
// then absent); lifting the rule shows it.
func TestInviteFilterLocal(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		ok(t, "config", alice.SetAccountData(bg, clientapi.InvitePermissionConfigType, map[string]any{
			"blocked_users": []string{"@bob:*"}, "ignored_users": []string{"@carol:localhost"}}))

		room, err := bob.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		ok(t, "create", err)
		_, err = bob.InviteUser(bg, room.RoomID, &mautrix.ReqInviteUser{UserID: alice.id})
		wantErrcode(t, "blocked invite", err, 403, "M_FORBIDDEN")
		if m, _ := srv.HS.Rooms.Membership(bg, string(room.RoomID), string(alice.id)); m != "" {
			t.Errorf("alice's membership after a blocked invite = %q", m)
		}
		_, err = bob.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{alice.id}})
		wantErrcode(t, "createRoom inviting a user who blocks the creator", err, 403, "M_FORBIDDEN")

		ignored, err := carol.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		ok(t, "create", err)
		_, err = carol.InviteUser(bg, ignored.RoomID, &mautrix.ReqInviteUser{UserID: alice.id})
		ok(t, "ignored invite succeeds for the inviter", err)

		status, body := call(t, "GET", srv.URL+"/_matrix/client/v3/sync", alice.token, nil)
		if status != 200 {
			t.Fatalf("sync = %d %v", status, body)
		}
		if rooms, _ := body["rooms"].(map[string]any); rooms["invite"] != nil {
			t.Errorf("rooms.invite = %v, want absent", rooms["invite"])
		}

		ok(t, "lift", alice.SetAccountData(bg, clientapi.InvitePermissionConfigType, map[string]any{"allowed_users": nil}))
		resp, err := alice.SyncRequest(bg, 0, "", "", false, "")
		ok(t, "sync", err)
		if _, shown := resp.Rooms.Invite[ignored.RoomID]; !shown {
			t.Errorf("invite still hidden after the config was cleared: %v", resp.Rooms.Invite)
		}
		_, err = bob.InviteUser(bg, room.RoomID, &mautrix.ReqInviteUser{UserID: alice.id})
		ok(t, "invite once unblocked", err)
	})
}

// TestInvitePermissionBlockAll: spec v1.18 "Invite permission". With
// m.invite_permission_config default_action "block", /invite, createRoom
// and a PUT of an invite member event answer 403 M_INVITE_BLOCKED, and an
// invite that arrived before is not served by /sync; without
// default_action, invites work and the old one shows again.
func TestInvitePermissionBlockAll(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		earlier, err := bob.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{alice.id}})
		ok(t, "create with invite", err)
		ok(t, "block all", alice.SetAccountData(bg, clientapi.StableInvitePermissionType, map[string]any{"default_action": "block"}))

		room, err := bob.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		ok(t, "create", err)
		_, err = bob.InviteUser(bg, room.RoomID, &mautrix.ReqInviteUser{UserID: alice.id})
		wantErrcode(t, "/invite", err, 403, "M_INVITE_BLOCKED")
		_, err = bob.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{alice.id}})
		wantErrcode(t, "createRoom", err, 403, "M_INVITE_BLOCKED")
		_, err = bob.SendStateEvent(bg, room.RoomID, event.StateMember, string(alice.id), map[string]any{"membership": "invite"})
		wantErrcode(t, "PUT state m.room.member invite", err, 403, "M_INVITE_BLOCKED")
		if m, _ := srv.HS.Rooms.Membership(bg, string(room.RoomID), string(alice.id)); m != "" {
			t.Errorf("alice's membership after blocked invites = %q", m)
		}
		resp, err := alice.SyncRequest(bg, 0, "", "", false, "")
		ok(t, "sync", err)
		if len(resp.Rooms.Invite) != 0 {
			t.Errorf("/sync serves invites while blocked: %v", resp.Rooms.Invite)
		}

		ok(t, "unblock", alice.SetAccountData(bg, clientapi.StableInvitePermissionType, map[string]any{"other": true}))
		_, err = bob.InviteUser(bg, room.RoomID, &mautrix.ReqInviteUser{UserID: alice.id})
		ok(t, "invite after unblocking", err)
		resp, err = alice.SyncRequest(bg, 0, "", "", false, "")
		ok(t, "sync", err)
		if _, shown := resp.Rooms.Invite[earlier.RoomID]; !shown || len(resp.Rooms.Invite) != 2 {
			t.Errorf("invites after unblocking = %v, want both rooms", resp.Rooms.Invite)
		}
	})
}
