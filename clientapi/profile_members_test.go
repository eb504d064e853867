package clientapi_test

import (
	"encoding/json"
	"net/url"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// memberState is a user's current m.room.member event in a room, as
// another member reads the room's state.
type memberState struct {
	EventID     id.EventID
	Membership  string
	DisplayName *string
	AvatarURL   *string
}

func readMember(t *testing.T, reader *user, roomID id.RoomID, userID id.UserID) memberState {
	t.Helper()
	state, err := reader.State(bg, roomID)
	ok(t, "room state", err)
	ev := state[event.StateMember][userID.String()]
	if ev == nil {
		t.Fatalf("%s has no member event in %s", userID, roomID)
	}
	var c struct {
		Membership  string  `json:"membership"`
		DisplayName *string `json:"displayname"`
		AvatarURL   *string `json:"avatar_url"`
	}
	ok(t, "member content", json.Unmarshal(ev.Content.VeryRaw, &c))
	return memberState{ev.ID, c.Membership, c.DisplayName, c.AvatarURL}
}

func strOr(p *string) string {
	if p == nil {
		return "<absent>"
	}
	return *p
}

// TestProfileChangeResendsMemberEvents: a displayname or avatar_url change
// through PUT/DELETE /profile sends alice a new m.room.member event (join,
// with her new profile) in every room she is joined to — a room where she
// had a room-specific name included: the spec sends the change to every
// room — before the request answers, and nothing in the rooms she has
// left, is banned from, is only invited to or has knocked on (a join
// there would change her membership). Each change is one new event per
// joined room; an avatar change keeps her displayname and a deleted
// avatar_url leaves the member events.
// Spec: client-server-api, "Events on Change of Profile Information"
// ("an m.room.member event (with a join membership) is sent to every
// room the user is a member of").
func TestProfileChangeResendsMemberEvents(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		bob, alice := newUser(t, srv, "bob"), newUser(t, srv, "alice")
		create := func(req *mautrix.ReqCreateRoom) id.RoomID {
			t.Helper()
			resp, err := bob.CreateRoom(bg, req)
			ok(t, "createRoom", err)
			return resp.RoomID
		}
		join := func(roomID id.RoomID) {
			t.Helper()
			_, err := alice.JoinRoomByID(bg, roomID)
			ok(t, "join "+roomID.String(), err)
		}
		public := create(&mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(public)
		private := create(&mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{alice.id}})
		join(private)
		// A room-specific name in the private room.
		_, err := alice.SendStateEvent(bg, private, event.StateMember, alice.id.String(),
			map[string]any{"membership": "join", "displayname": "Alice in private"})
		ok(t, "room-specific name", err)
		left := create(&mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(left)
		_, err = alice.LeaveRoom(bg, left)
		ok(t, "leave", err)
		banned := create(&mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(banned)
		_, err = bob.BanUser(bg, banned, &mautrix.ReqBanUser{UserID: alice.id})
		ok(t, "ban", err)
		invited := create(&mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{alice.id}})
		knocked := create(&mautrix.ReqCreateRoom{Preset: "private_chat",
			InitialState: []*event.Event{{Type: event.StateJoinRules, StateKey: ptr(""), Content: event.Content{Raw: map[string]any{"join_rule": "knock"}}}}})
		if st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/knock/"+url.PathEscape(knocked.String()), alice.token, map[string]any{}); st != 200 {
			t.Fatalf("knock: %d %v", st, body)
		}

		joined := []id.RoomID{public, private}
		others := map[id.RoomID]string{left: "leave", banned: "ban", invited: "invite", knocked: "knock"}
		before := map[id.RoomID]memberState{}
		for roomID := range others {
			before[roomID] = readMember(t, bob, roomID, alice.id)
		}
		seen := map[id.EventID]bool{}
		for _, roomID := range joined {
			seen[readMember(t, bob, roomID, alice.id).EventID] = true
		}

		profile := srv.URL + "/_matrix/client/v3/profile/" + url.PathEscape(alice.id.String())
		for _, step := range []struct {
			what, method, path string
			body               map[string]any
			name, avatar       *string
		}{
			{"set displayname", "PUT", "/displayname", map[string]any{"displayname": "Alice Liddell"}, ptr("Alice Liddell"), nil},
			{"set avatar_url", "PUT", "/avatar_url", map[string]any{"avatar_url": "mxc://localhost/rabbit"}, ptr("Alice Liddell"), ptr("mxc://localhost/rabbit")},
			{"change displayname", "PUT", "/displayname", map[string]any{"displayname": "Alice L."}, ptr("Alice L."), ptr("mxc://localhost/rabbit")},
			{"delete avatar_url", "DELETE", "/avatar_url", nil, ptr("Alice L."), nil},
		} {
			if st, body := call(t, step.method, profile+step.path, alice.token, step.body); st != 200 {
				t.Fatalf("%s: %d %v", step.what, st, body)
			}
			for _, roomID := range joined {
				m := readMember(t, bob, roomID, alice.id)
				if seen[m.EventID] {
					t.Errorf("%s: no new member event in joined room %s", step.what, roomID)
				}
				seen[m.EventID] = true
				if m.Membership != "join" || strOr(m.DisplayName) != strOr(step.name) || strOr(m.AvatarURL) != strOr(step.avatar) {
					t.Errorf("%s: alice's member event in %s: membership %q, displayname %s, avatar_url %s; want join, %s, %s",
						step.what, roomID, m.Membership, strOr(m.DisplayName), strOr(m.AvatarURL), strOr(step.name), strOr(step.avatar))
				}
			}
			for roomID, membership := range others {
				if m := readMember(t, bob, roomID, alice.id); m != before[roomID] || m.Membership != membership {
					t.Errorf("%s: alice's member event in the %s room changed: %+v, was %+v", step.what, membership, m, before[roomID])
				}
			}
		}

		// One new event per change and joined room: the public room's
		// member events of alice, newest first.
		resp, err := bob.Messages(bg, public, "", "", mautrix.DirectionBackward, nil, 50)
		ok(t, "/messages", err)
		var names []string
		for _, ev := range resp.Chunk {
			if ev.Type == event.StateMember && ev.StateKey != nil && *ev.StateKey == alice.id.String() {
				var c struct {
					DisplayName *string `json:"displayname"`
				}
				_ = json.Unmarshal(ev.Content.VeryRaw, &c)
				names = append(names, strOr(c.DisplayName))
			}
		}
		want := []string{"Alice L.", "Alice L.", "Alice Liddell", "Alice Liddell", "<absent>"}
		if len(names) != len(want) {
			t.Fatalf("alice's member events in the public room, newest first: %q, want %q", names, want)
		}
		for i := range want {
			if names[i] != want[i] {
				t.Fatalf("alice's member events in the public room, newest first: %q, want %q", names, want)
			}
		}
	})
}
