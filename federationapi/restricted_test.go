package federationapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Restricted rooms over federation. Spec: server-server-api,
// "Restricted rooms"; client-server-api, "Restricted rooms".

// restrictedRooms makes creator create a public room (the one that
// grants access) and a room of version whose join rule is joinRule,
// allowing members of the first.
func restrictedRooms(t *testing.T, creator *syncer, version, joinRule string) (allowed, room id.RoomID) {
	t.Helper()
	ctx := context.Background()
	a, err := creator.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "allowed"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := creator.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "public_chat", Name: "restricted", RoomVersion: id.RoomVersion(version),
		InitialState: []*event.Event{{
			Type: event.StateJoinRules, StateKey: ptr(""),
			Content: event.Content{Raw: map[string]any{
				"join_rule": joinRule,
				"allow":     []any{map[string]any{"type": "m.room_membership", "room_id": a.RoomID, "via": []string{creator.cli.UserID.Homeserver()}}},
			}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return a.RoomID, r.RoomID
}

// joinVia joins roomID through servers; the error is mautrix's.
func (u *syncer) joinVia(roomID id.RoomID, servers ...string) error {
	_, err := u.cli.JoinRoom(context.Background(), roomID.String(), &mautrix.ReqJoinRoom{Via: servers})
	return err
}

// errCode is the Matrix errcode of a mautrix error, or "".
func errCode(err error) string {
	var he mautrix.HTTPError
	if errors.As(err, &he) && he.RespError != nil {
		return he.RespError.ErrCode
	}
	return ""
}

// authoriser reads join_authorised_via_users_server of userID's current
// membership in roomID, as s holds it.
func authoriser(t *testing.T, s *fedServer, roomID id.RoomID, userID id.UserID) string {
	t.Helper()
	ev, err := s.HS.Rooms.RoomStateEvent(context.Background(), string(roomID), "m.room.member", string(userID))
	if err != nil {
		t.Fatalf("%s's membership on %s: %v", userID, s.Name, err)
	}
	var c struct {
		Via string `json:"join_authorised_via_users_server"`
	}
	_ = json.Unmarshal(ev.Content, &c)
	return c.Via
}

func setPowerLevels(t *testing.T, u *syncer, roomID id.RoomID, content map[string]any) {
	t.Helper()
	if _, err := u.cli.SendStateEvent(context.Background(), roomID, event.StatePowerLevels, "", content); err != nil {
		t.Fatalf("power levels: %v", err)
	}
}

func awaitMembership(t *testing.T, s *fedServer, roomID id.RoomID, userID id.UserID, want string) {
	t.Helper()
	eventually(t, s.Name+" to see "+string(userID)+" "+want, func() bool {
		m, _ := s.HS.Rooms.Membership(context.Background(), string(roomID), string(userID))
		return m == want
	})
}

// TestRestrictedRoomRemoteJoin: bob on B may join alice's restricted room
// on A only while he is in the allowed room; A signs his join as
// authorised by alice; after he leaves the allowed room, and when the
// allow list is mangled, the join is refused.
func TestRestrictedRoomRemoteJoin(t *testing.T) {
	t.Parallel()
	for _, rule := range []string{"restricted", "knock_restricted"} {
		t.Run(rule, func(t *testing.T) {
			n := newNetwork(t, "sqlite")
			a, b := n.start(), n.start()
			alice, bob := a.register("alice"), b.register("bob")
			ctx := context.Background()
			allowed, room := restrictedRooms(t, alice, "10", rule)

			if err := bob.joinVia(room, a.Name); errCode(err) != "M_FORBIDDEN" {
				t.Fatalf("join before joining the allowed room: %v, want M_FORBIDDEN", err)
			}
			if err := bob.joinVia(allowed, a.Name); err != nil {
				t.Fatalf("joining the allowed room: %v", err)
			}
			if err := bob.joinVia(room, a.Name); err != nil {
				t.Fatalf("joining the restricted room: %v", err)
			}
			if got := authoriser(t, b, room, bob.id()); got != string(alice.id()) {
				t.Fatalf("join authorised via %q, want %s", got, alice.id())
			}
			// join -> join ignores join_authorised_via_users_server.
			if _, err := bob.cli.SendStateEvent(ctx, room, event.StateMember, string(bob.id()), map[string]any{
				"membership": "join", "displayname": "Bobby", "join_authorised_via_users_server": "unused"}); err != nil {
				t.Fatalf("changing displayname: %v", err)
			}

			for _, r := range []id.RoomID{room, allowed} {
				if _, err := bob.cli.LeaveRoom(ctx, r); err != nil {
					t.Fatalf("leaving %s: %v", r, err)
				}
			}
			awaitMembership(t, a, allowed, bob.id(), "leave")
			if err := bob.joinVia(room, a.Name); errCode(err) != "M_FORBIDDEN" {
				t.Fatalf("join after leaving the allowed room: %v, want M_FORBIDDEN", err)
			}

			if err := bob.joinVia(allowed, a.Name); err != nil {
				t.Fatalf("rejoining the allowed room: %v", err)
			}
			for _, allow := range []any{[]any{"invalid"}, "invalid"} {
				if _, err := alice.cli.SendStateEvent(ctx, room, event.StateJoinRules, "", map[string]any{"join_rule": rule, "allow": allow}); err != nil {
					t.Fatal(err)
				}
				if err := bob.joinVia(room, a.Name); err == nil {
					t.Fatalf("allow %v: the join succeeded", allow)
				}
			}
		})
	}
}

// TestRestrictedRoomJoinFailsOver: C's charlie joins through B, which
// has no member able to invite (400 M_UNABLE_TO_GRANT_JOIN), then through
// B and A, which authorises it; once B has left the allowed room it
// cannot tell (400 M_UNABLE_TO_AUTHORISE_JOIN), and A still can.
func TestRestrictedRoomJoinFailsOver(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, "sqlite")
	a, b, c := n.start(), n.start(), n.start()
	alice, bob, charlie := a.register("alice"), b.register("bob"), c.register("charlie")
	ctx := context.Background()
	allowed, room := restrictedRooms(t, alice, "8", "restricted")
	setPowerLevels(t, alice, room, map[string]any{"invite": 100, "users": map[string]any{string(alice.id()): 100}})

	for _, r := range []id.RoomID{allowed, room} {
		if err := bob.joinVia(r, a.Name); err != nil {
			t.Fatalf("bob joining %s: %v", r, err)
		}
	}
	if err := charlie.joinVia(allowed, a.Name); err != nil {
		t.Fatal(err)
	}
	awaitMembership(t, b, allowed, charlie.id(), "join")
	if err := charlie.joinVia(room, b.Name); errCode(err) != "M_UNABLE_TO_GRANT_JOIN" {
		t.Fatalf("join through B alone: %v, want M_UNABLE_TO_GRANT_JOIN", err)
	}
	if err := charlie.joinVia(room, b.Name, a.Name); err != nil {
		t.Fatalf("join through B then A: %v", err)
	}
	if got := authoriser(t, c, room, charlie.id()); got != string(alice.id()) {
		t.Fatalf("authorised via %q, want %s", got, alice.id())
	}

	if _, err := charlie.cli.LeaveRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	awaitMembership(t, a, room, charlie.id(), "leave")
	awaitMembership(t, b, room, charlie.id(), "leave")
	setPowerLevels(t, alice, room, map[string]any{"invite": 100, "users": map[string]any{string(alice.id()): 100, string(bob.id()): 100}})
	if _, err := bob.cli.LeaveRoom(ctx, allowed); err != nil {
		t.Fatal(err)
	}
	if err := charlie.joinVia(room, b.Name); errCode(err) != "M_UNABLE_TO_AUTHORISE_JOIN" {
		t.Fatalf("join through B after B left the allowed room: %v, want M_UNABLE_TO_AUTHORISE_JOIN", err)
	}
	if err := charlie.joinVia(room, b.Name, a.Name); err != nil {
		t.Fatalf("join through B then A: %v", err)
	}
	if got := authoriser(t, c, room, charlie.id()); got != string(alice.id()) {
		t.Fatalf("authorised via %q, want %s", got, alice.id())
	}
}

// TestRestrictedRoomLocalAuthoriser: in a v11 and a v12 room, a server
// already in the room lets its user in with a local member who may
// invite (bob) as authoriser; and a server whose members may not invite
// joins its user through a server that can.
func TestRestrictedRoomLocalAuthoriser(t *testing.T) {
	t.Parallel()
	for _, version := range []string{"11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			n := newNetwork(t, "sqlite")
			a, b := n.start(), n.start()
			alice, bob, charlie, dave := a.register("alice"), b.register("bob"), b.register("charlie"), b.register("dave")
			allowed, room := restrictedRooms(t, alice, version, "restricted")
			for _, r := range []id.RoomID{allowed, room} {
				if err := bob.joinVia(r, a.Name); err != nil {
					t.Fatalf("bob joining %s: %v", r, err)
				}
			}
			users := map[string]any{string(bob.id()): 50}
			if version != "12" {
				users[string(alice.id())] = 100
			}
			setPowerLevels(t, alice, room, map[string]any{"invite": 50, "users": users})
			awaitMembership(t, b, room, bob.id(), "join")
			eventually(t, "B to see the new power levels", func() bool {
				ev, err := b.HS.Rooms.RoomStateEvent(context.Background(), string(room), "m.room.power_levels", "")
				return err == nil && hasKey(ev.Content, "users."+string(bob.id()), 50)
			})
			if err := charlie.joinVia(allowed, a.Name); err != nil {
				t.Fatal(err)
			}
			if err := charlie.joinVia(room, b.Name); err != nil {
				t.Fatalf("charlie joining through B: %v", err)
			}
			if got := authoriser(t, b, room, charlie.id()); got != string(bob.id()) {
				t.Fatalf("authorised via %q, want %s", got, bob.id())
			}

			// Nobody on B may invite any more: dave's join goes through A.
			users = map[string]any{}
			if version != "12" {
				users[string(alice.id())] = 100
			}
			setPowerLevels(t, alice, room, map[string]any{"invite": 50, "users": users})
			eventually(t, "B to see bob lose his power", func() bool {
				ev, err := b.HS.Rooms.RoomStateEvent(context.Background(), string(room), "m.room.power_levels", "")
				return err == nil && !hasKey(ev.Content, "users."+string(bob.id()), 50)
			})
			if err := dave.joinVia(allowed, a.Name); err != nil {
				t.Fatal(err)
			}
			awaitMembership(t, a, allowed, dave.id(), "join")
			if err := dave.joinVia(room, b.Name); err != nil {
				t.Fatalf("dave joining through B: %v", err)
			}
			if got := authoriser(t, b, room, dave.id()); got != string(alice.id()) {
				t.Fatalf("authorised via %q, want %s", got, alice.id())
			}
			awaitMembership(t, a, room, dave.id(), "join")
		})
	}
}

// hasKey reports whether the JSON object content has the number want
// at the top-level key, or at a "users.<id>" entry.
func hasKey(content json.RawMessage, key string, want float64) bool {
	var c map[string]any
	if json.Unmarshal(content, &c) != nil {
		return false
	}
	if len(key) > 6 && key[:6] == "users." {
		users, _ := c["users"].(map[string]any)
		v, ok := users[key[6:]].(float64)
		return ok && v == want
	}
	v, ok := c[key].(float64)
	return ok && v == want
}
