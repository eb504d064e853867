package clientapi_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// guestRoom is a public room of alice's open to guests (guest_access
// can_join, sent as its own event, whose ID is returned), joined by bob
// (a regular user) and by a guest. prefix sets the users' localparts
// apart from those of other rooms on srv.
type guestRoom struct {
	alice, bob    *user
	guest         *user
	room          id.RoomID
	guestAccessID id.EventID
}

func newGuestRoom(t *testing.T, srv *testserver.Server, prefix string) guestRoom {
	t.Helper()
	alice, bob := newUser(t, srv, prefix+"alice"), newUser(t, srv, prefix+"bob")
	resp, _, err := client(t, srv, "", "").RegisterGuest(bg, &mautrix.ReqRegister[any]{})
	ok(t, "guest registration", err)
	guest := &user{Client: client(t, srv, resp.UserID.String(), resp.AccessToken), id: resp.UserID, token: resp.AccessToken}
	room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	ok(t, "create", err)
	ga, err := alice.SendStateEvent(bg, room.RoomID, event.StateGuestAccess, "", map[string]string{"guest_access": "can_join"})
	ok(t, "guest_access can_join", err)
	_, err = bob.JoinRoomByID(bg, room.RoomID)
	ok(t, "bob joins", err)
	_, err = guest.JoinRoomByID(bg, room.RoomID)
	ok(t, "guest joins", err)
	return guestRoom{alice: alice, bob: bob, guest: guest, room: room.RoomID, guestAccessID: ga.EventID}
}

// member reads userID's current m.room.member event in the room, as alice.
func (g guestRoom) member(t *testing.T, srv *testserver.Server, userID id.UserID) (membership, sender string) {
	t.Helper()
	status, body := testserver.Call(t, srv, http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(g.room.String())+
		"/state/m.room.member/"+url.PathEscape(userID.String())+"?format=event", g.alice.token, nil)
	if status != http.StatusOK {
		t.Fatalf("member event of %s: %d %v", userID, status, body)
	}
	content, _ := body["content"].(map[string]any)
	m, _ := content["membership"].(string)
	s, _ := body["sender"].(string)
	return m, s
}

// waitGuestLeft waits until the guest's membership is leave, sent by the
// guest (the server leaves on the guest's behalf, as POST /leave would),
// and checks that alice and bob are still joined.
func (g guestRoom) waitGuestLeft(t *testing.T, srv *testserver.Server) {
	t.Helper()
	eventually(t, "the guest's leave", func() bool {
		m, _ := g.member(t, srv, g.guest.id)
		return m == "leave"
	})
	if _, sender := g.member(t, srv, g.guest.id); sender != g.guest.id.String() {
		t.Errorf("the guest's leave was sent by %s, want the guest %s", sender, g.guest.id)
	}
	for _, u := range []*user{g.alice, g.bob} {
		if m, _ := g.member(t, srv, u.id); m != "join" {
			t.Errorf("%s's membership = %q, want join (only guests leave)", u.id, m)
		}
	}
}

// syncedLeave reports whether bob's /sync since `since` shows the guest's
// leave in the room's timeline.
func (g guestRoom) syncedLeave(t *testing.T, since string) bool {
	t.Helper()
	resp, err := g.bob.SyncRequest(bg, 0, since, "", false, "")
	ok(t, "bob's sync", err)
	joined, found := resp.Rooms.Join[g.room]
	if !found {
		return false
	}
	for _, ev := range joined.Timeline.Events {
		if ev.Type == event.StateMember && ev.StateKey != nil && *ev.StateKey == g.guest.id.String() {
			var c struct {
				Membership string `json:"membership"`
			}
			if json.Unmarshal(ev.Content.VeryRaw, &c) == nil && c.Membership == "leave" {
				return true
			}
		}
	}
	return false
}

func guestsOn(c *config.Config) { c.ClientAPI.GuestAccess = true }

// TestGuestsLeaveWhenGuestAccessWithdrawn: when the room's
// m.room.guest_access stops being can_join — set to forbidden, or its
// event redacted (the redacted content has no guest_access) — the
// server makes every guest joined to the room leave; the leave reaches
// another member's /sync; regular users stay. A change that keeps
// can_join leaves the guest in.
// Spec: client-server-api, "Guest Access", "Server behaviour" ("If the
// m.room.guest_access event is changed to stop this from being the
// case, the server MUST set those users' m.room.member state to
// leave"); rooms/vN, "Redactions" (no content key of
// m.room.guest_access survives a redaction).
func TestGuestsLeaveWhenGuestAccessWithdrawn(t *testing.T) {
	testserver.ForEachEngine(t, guestsOn, func(t *testing.T, srv *testserver.Server) {
		t.Run("forbidden", func(t *testing.T) {
			g := newGuestRoom(t, srv, "f")
			before, err := g.bob.SyncRequest(bg, 0, "", "", false, "")
			ok(t, "bob's initial sync", err)
			_, err = g.alice.SendStateEvent(bg, g.room, event.StateGuestAccess, "", map[string]string{"guest_access": "can_join", "x": "y"})
			ok(t, "guest_access can_join again", err)
			time.Sleep(300 * time.Millisecond) // three polls of the tests' runner
			if m, _ := g.member(t, srv, g.guest.id); m != "join" {
				t.Fatalf("after a change that keeps can_join the guest's membership = %q, want join", m)
			}
			_, err = g.alice.SendStateEvent(bg, g.room, event.StateGuestAccess, "", map[string]string{"guest_access": "forbidden"})
			ok(t, "guest_access forbidden", err)
			g.waitGuestLeft(t, srv)
			if !g.syncedLeave(t, before.NextBatch) {
				t.Errorf("bob's /sync since %s does not show the guest's leave", before.NextBatch)
			}
		})
		t.Run("redacted", func(t *testing.T) {
			g := newGuestRoom(t, srv, "r")
			_, err := g.alice.RedactEvent(bg, g.room, g.guestAccessID)
			ok(t, "redact guest_access", err)
			g.waitGuestLeft(t, srv)
		})
	})
}

// TestGuestLeavesQueuedAcrossRestart: the leaves are queued in the
// transaction of the guest_access change, so a server stopped before it
// made the guest leave does so after its restart.
func TestGuestLeavesQueuedAcrossRestart(t *testing.T) {
	testserver.ForEachEngine(t, guestsOn, func(t *testing.T, srv *testserver.Server) {
		g := newGuestRoom(t, srv, "")
		clientapi.HoldGuestLeaves(true)
		defer clientapi.HoldGuestLeaves(false)
		_, err := g.alice.SendStateEvent(bg, g.room, event.StateGuestAccess, "", map[string]string{"guest_access": "forbidden"})
		ok(t, "guest_access forbidden", err)
		var queued int
		ok(t, "queue", srv.HS.DB.Reader().QueryRow(bg, `SELECT COUNT(*) FROM guest_access_leaves WHERE room_id = $1`, g.room.String()).Scan(&queued))
		if queued != 1 {
			t.Fatalf("guest_access_leaves holds %d rows for the room after the change, want 1", queued)
		}
		time.Sleep(300 * time.Millisecond)
		if m, _ := g.member(t, srv, g.guest.id); m != "join" {
			t.Fatalf("the guest left while the queue was held (membership %q): the test proves nothing", m)
		}
		srv.Restart(t)
		for _, u := range []*user{g.alice, g.bob, g.guest} {
			u.HomeserverURL, _ = url.Parse(srv.URL)
		}
		clientapi.HoldGuestLeaves(false)
		g.waitGuestLeft(t, srv)
		eventually(t, "the queue emptied", func() bool {
			ok(t, "queue", srv.HS.DB.Reader().QueryRow(bg, `SELECT COUNT(*) FROM guest_access_leaves`).Scan(&queued))
			return queued == 0
		})
	})
}

// TestGuestKnockRefused: POST /knock is not among the endpoints guests
// may use, so a guest's knock is refused with 403 M_GUEST_ACCESS_FORBIDDEN
// and writes no member event, even in a knock room open to guests.
// Spec: client-server-api, "Guest Access", "Client behaviour".
func TestGuestKnockRefused(t *testing.T) {
	testserver.ForEachEngine(t, guestsOn, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		resp, _, err := client(t, srv, "", "").RegisterGuest(bg, &mautrix.ReqRegister[any]{})
		ok(t, "guest registration", err)
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10",
			InitialState: []*event.Event{
				{Type: event.StateJoinRules, StateKey: new(string), Content: event.Content{Raw: map[string]any{"join_rule": "knock"}}},
				{Type: event.StateGuestAccess, StateKey: new(string), Content: event.Content{Raw: map[string]any{"guest_access": "can_join"}}},
			}})
		ok(t, "create", err)
		rp := "/_matrix/client/v3/rooms/" + url.PathEscape(room.RoomID.String())
		runSteps(t, srv, []step{
			{name: "guest knocks by room ID", method: "POST", path: "/_matrix/client/v3/knock/" + url.PathEscape(room.RoomID.String()),
				token: resp.AccessToken, body: `{}`, wantStatus: http.StatusForbidden, wantErrcode: "M_GUEST_ACCESS_FORBIDDEN"},
			{name: "no member event", method: "GET", path: rp + "/state/m.room.member/" + url.PathEscape(resp.UserID.String()),
				token: alice.token, wantStatus: http.StatusNotFound, wantErrcode: "M_NOT_FOUND"},
			{name: "a regular user may knock", method: "POST", path: "/_matrix/client/v3/knock/" + url.PathEscape(room.RoomID.String()),
				token: newUser(t, srv, "carol").token, body: `{}`, wantStatus: http.StatusOK},
		})
	})
}

// TestGuestJoinRacingGuestAccessChange: guest_access stops being
// can_join after a guest's join checked it but before the join is in,
// and the queued check of the change runs (finding no guest) before the
// join commits. The join looks again once it is in: the guest leaves
// and is answered 403 M_GUEST_ACCESS_FORBIDDEN, so no guest stays joined.
// Spec: client-server-api, "Guest Access", "Server behaviour".
func TestGuestJoinRacingGuestAccessChange(t *testing.T) {
	testserver.ForEachEngine(t, guestsOn, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		resp, _, err := client(t, srv, "", "").RegisterGuest(bg, &mautrix.ReqRegister[any]{})
		ok(t, "guest registration", err)
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "create", err)
		_, err = alice.SendStateEvent(bg, room.RoomID, event.StateGuestAccess, "", map[string]string{"guest_access": "can_join"})
		ok(t, "guest_access can_join", err)
		clientapi.SetAfterGuestJoinCheck(func() {
			_, err := alice.SendStateEvent(bg, room.RoomID, event.StateGuestAccess, "", map[string]string{"guest_access": "forbidden"})
			if err != nil {
				t.Errorf("guest_access forbidden: %v", err)
				return
			}
			// This runs on the join's goroutine: report, never t.Fatal.
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				var queued int
				if err := srv.HS.DB.Reader().QueryRow(bg, `SELECT COUNT(*) FROM guest_access_leaves`).Scan(&queued); err != nil {
					t.Errorf("queue: %v", err)
					return
				}
				if queued == 0 {
					return
				}
				if time.Now().After(deadline) {
					t.Errorf("the change's queued check did not run in 20 s")
					return
				}
			}
		})
		defer clientapi.SetAfterGuestJoinCheck(nil)
		rp := "/_matrix/client/v3/rooms/" + url.PathEscape(room.RoomID.String())
		runSteps(t, srv, []step{
			{name: "guest joins as guest_access changes", method: "POST", path: rp + "/join", token: resp.AccessToken, body: `{}`,
				wantStatus: http.StatusForbidden, wantErrcode: "M_GUEST_ACCESS_FORBIDDEN"},
		})
		clientapi.SetAfterGuestJoinCheck(nil)
		g := guestRoom{alice: alice, room: room.RoomID}
		if m, _ := g.member(t, srv, resp.UserID); m != "leave" {
			t.Errorf("the guest's membership = %q, want leave", m)
		}
	})
}

// TestGuestEndpointGate: a guest may call the endpoints the spec lists
// for guests, and is refused every other one with 403
// M_GUEST_ACCESS_FORBIDDEN before anything is written: a refused typing
// notification, receipt, redaction or read marker leaves no trace, and a
// refused /logout leaves the token valid.
// Spec: client-server-api, "Guest Access", "Client behaviour".
func TestGuestEndpointGate(t *testing.T) {
	testserver.ForEachEngine(t, guestsOn, func(t *testing.T, srv *testserver.Server) {
		g := newGuestRoom(t, srv, "")
		sent, err := g.guest.SendMessageEvent(bg, g.room, event.EventMessage, map[string]string{"msgtype": "m.text", "body": "guest's message"})
		ok(t, "guest sends", err)
		rp := "/_matrix/client/v3/rooms/" + url.PathEscape(g.room.String())
		ev := url.PathEscape(sent.EventID.String())
		me := url.PathEscape(g.guest.id.String())
		refused := func(method, path, body string) step {
			return step{name: "refused: " + method + " " + path, method: method, path: path, token: g.guest.token, body: body,
				wantStatus: http.StatusForbidden, wantErrcode: "M_GUEST_ACCESS_FORBIDDEN"}
		}
		allowed := func(method, path, body string) step {
			return step{name: "allowed: " + method + " " + path, method: method, path: path, token: g.guest.token, body: body,
				wantStatus: http.StatusOK}
		}
		runSteps(t, srv, []step{
			allowed("GET", "/_matrix/client/v3/account/whoami", ""),
			allowed("GET", "/_matrix/client/v3/devices", ""),
			allowed("GET", rp+"/state/m.room.guest_access/", ""),
			allowed("GET", rp+"/event/"+ev, ""),
			allowed("GET", rp+"/context/"+ev, ""),
			allowed("GET", rp+"/members", ""),
			allowed("GET", rp+"/messages?dir=b", ""),
			allowed("PUT", "/_matrix/client/v3/profile/"+me+"/displayname", `{"displayname": "A guest"}`),
			refused("PUT", rp+"/typing/"+me, `{"typing": true, "timeout": 30000}`),
			refused("POST", rp+"/receipt/m.read/"+ev, `{}`),
			refused("POST", rp+"/read_markers", `{"m.fully_read": "`+sent.EventID.String()+`"}`),
			refused("PUT", rp+"/redact/"+ev+"/r1", `{}`),
			refused("POST", rp+"/forget", `{}`),
			refused("GET", "/_matrix/client/v3/joined_rooms", ""),
			refused("POST", "/_matrix/client/v3/logout", `{}`),
			allowed("GET", "/_matrix/client/v3/account/whoami", ""), // the token still works
		})
		e, err := g.alice.GetEvent(bg, g.room, sent.EventID)
		ok(t, "read the guest's message", err)
		if e.Unsigned.RedactedBecause != nil || !strings.Contains(string(e.Content.VeryRaw), "guest's message") {
			t.Errorf("the guest's message was redacted by a refused request: %s", e.Content.VeryRaw)
		}
		resp, err := g.alice.SyncRequest(bg, 0, "", "", false, "")
		ok(t, "alice's sync", err)
		for _, e := range resp.Rooms.Join[g.room].Ephemeral.Events {
			if (e.Type == event.EphemeralEventTyping || e.Type == event.EphemeralEventReceipt) &&
				strings.Contains(string(e.Content.VeryRaw), g.guest.id.String()) {
				t.Errorf("a refused request left %s naming the guest: %s", e.Type, e.Content.VeryRaw)
			}
		}
	})
}

// TestGuestLeavesQueuedOnlyWithGuests: a change of m.room.guest_access
// in a room no local guest has joined queues nothing — not the
// guest_access event of each preset's room creation, not a change to
// forbidden — so it costs no queue row, runner pass or commit of its
// removal; in a room a guest has joined, the change is still queued and
// the guest still leaves.
// Spec: client-server-api, "Guest Access", "Server behaviour".
func TestGuestLeavesQueuedOnlyWithGuests(t *testing.T) {
	testserver.ForEachEngine(t, guestsOn, func(t *testing.T, srv *testserver.Server) {
		clientapi.HoldGuestLeaves(true)
		defer clientapi.HoldGuestLeaves(false)
		queued := func(room id.RoomID) int {
			var n int
			ok(t, "queue", srv.HS.DB.Reader().QueryRow(bg, `SELECT COUNT(*) FROM guest_access_leaves WHERE room_id = $1`, room.String()).Scan(&n))
			return n
		}
		carol := newUser(t, srv, "carol")
		for _, preset := range []string{"public_chat", "private_chat", "trusted_private_chat"} {
			room, err := carol.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: preset})
			ok(t, "create "+preset, err)
			if n := queued(room.RoomID); n != 0 {
				t.Errorf("creating a %s room queued %d guest leaves", preset, n)
			}
			for _, access := range []string{"can_join", "forbidden"} {
				_, err = carol.SendStateEvent(bg, room.RoomID, event.StateGuestAccess, "", map[string]string{"guest_access": access})
				ok(t, "guest_access "+access, err)
				if n := queued(room.RoomID); n != 0 {
					t.Errorf("guest_access %s in a %s room without guests queued %d guest leaves", access, preset, n)
				}
			}
		}

		g := newGuestRoom(t, srv, "")
		_, err := g.alice.SendStateEvent(bg, g.room, event.StateGuestAccess, "", map[string]string{"guest_access": "forbidden"})
		ok(t, "guest_access forbidden", err)
		if n := queued(g.room); n != 1 {
			t.Fatalf("guest_access forbidden in a room with a guest queued %d rows, want 1", n)
		}
		clientapi.HoldGuestLeaves(false)
		srv.HS.ClientAPI.WakeQueuedLeaves()
		g.waitGuestLeft(t, srv)
	})
}
