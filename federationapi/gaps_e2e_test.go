package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestClientCreateRoomInvitesRemoteUser: alice on A creates a DM with
// invite: [bob on B]; the invite goes to B over federation (invite v2),
// reaches bob's /sync there, and bob joins through A.
func TestClientCreateRoomInvitesRemoteUser(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.register("alice"), b.register("bob")
		carol := a.register("carol")
		bob.syncOnce()

		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
			Preset: "trusted_private_chat", IsDirect: true, Invite: []id.UserID{bob.id(), carol.id()}})
		if err != nil {
			t.Fatalf("createRoom: %v", err)
		}
		roomID := created.RoomID
		// The invite A holds is the one B countersigned.
		ev, err := a.HS.Rooms.CurrentStateEvent(ctx, string(alice.id()), string(roomID), "m.room.member", string(bob.id()))
		if err != nil || ev.Membership != "invite" {
			t.Fatalf("bob's membership on A: %+v, %v", ev, err)
		}
		if !containsSignatureOf(ev.JSON, b.Name) {
			t.Fatalf("bob's invite on A is not signed by %s: %s", b.Name, ev.JSON)
		}
		if m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(carol.id())); m != "invite" {
			t.Fatalf("carol (local) membership %q, want invite", m)
		}
		bob.await("the invite from createRoom", func() bool { return bob.invites[roomID] })

		if _, err := bob.cli.JoinRoomByID(ctx, roomID); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		bob.send(roomID, "joined from B")
		alice.await("bob's message", func() bool { return alice.sawMessage(roomID, bob.id(), "joined from B") })
	})
}

// containsSignatureOf reports whether an event's JSON carries a
// signature of server.
func containsSignatureOf(raw []byte, server string) bool {
	var ev struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if json.Unmarshal(raw, &ev) != nil {
		return false
	}
	return len(ev.Signatures[server]) > 0
}

// knockRoom makes a room on A with join rule knock, named name.
func knockRoom(t *testing.T, alice *syncer, name string) id.RoomID {
	t.Helper()
	created, err := alice.cli.CreateRoom(context.Background(), &mautrix.ReqCreateRoom{
		Preset: "private_chat", Name: name,
		InitialState: []*event.Event{{Type: event.StateJoinRules, StateKey: new(string),
			Content: event.Content{Raw: map[string]any{"join_rule": "knock"}}}},
	})
	if err != nil {
		t.Fatalf("createRoom: %v", err)
	}
	return created.RoomID
}

// knockStateHas reports whether a knock_state list holds an event of
// type t (and, for the member event, membership knock).
func knockStateHas(evs []*event.Event, t event.Type, want string) bool {
	return slices.ContainsFunc(evs, func(e *event.Event) bool {
		return e.Type.Type == t.Type && strings.Contains(string(e.Content.VeryRaw), want)
	})
}

// TestClientKnockRemoteRoom: bob on B knocks on alice's knock room on A
// through B's client API (make_knock/send_knock); the knock shows in
// bob's /sync rooms.knock with the stripped state A answered, and A has
// bob's knock. carol on B knocks too and alice rejects her (kicks):
// carol's knock leaves /sync's rooms.knock for rooms.leave. alice accepts
// bob's by inviting him; bob joins and they talk.
func TestClientKnockRemoteRoom(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob, carol := a.register("alice"), b.register("bob"), b.register("carol")
		roomID := knockRoom(t, alice, "knock knock")
		bob.syncOnce()

		resp, err := bob.cli.KnockRoom(ctx, roomID.String(), &mautrix.ReqKnockRoom{Via: []string{a.Name}, Reason: "let me in"})
		if err != nil {
			t.Fatalf("bob knocking: %v", err)
		}
		if resp.RoomID != roomID {
			t.Fatalf("knocked on %s, want %s", resp.RoomID, roomID)
		}
		ev, err := a.HS.Rooms.CurrentStateEvent(ctx, string(alice.id()), string(roomID), "m.room.member", string(bob.id()))
		if err != nil || ev.Membership != "knock" || !strings.Contains(string(ev.Content), "let me in") {
			t.Fatalf("bob's membership on A: %+v, %v", ev, err)
		}
		bob.await("the knock in rooms.knock", func() bool { return len(bob.knocks[roomID]) > 0 })
		if st := bob.knocks[roomID]; !knockStateHas(st, event.StateRoomName, "knock knock") || !knockStateHas(st, event.StateMember, `"knock"`) {
			t.Fatalf("knock_state lacks the room name or the knock: %+v", st)
		}

		// Rejection (while B still holds no copy of the room): carol
		// knocks, alice kicks her.
		carol.syncOnce()
		if _, err := carol.cli.KnockRoom(ctx, roomID.String(), &mautrix.ReqKnockRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("carol knocking: %v", err)
		}
		carol.await("carol's knock", func() bool { return len(carol.knocks[roomID]) > 0 })
		if _, err := alice.cli.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: carol.id(), Reason: "no"}); err != nil {
			t.Fatalf("rejecting carol: %v", err)
		}
		carol.await("the rejection in rooms.leave", func() bool { return carol.left[roomID] })
		if _, ok := carol.knocks[roomID]; ok {
			t.Fatal("carol's knock is still pending after the rejection")
		}

		// Acceptance: alice invites bob, who joins.
		if _, err := alice.cli.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.id()}); err != nil {
			t.Fatalf("inviting the knocker: %v", err)
		}
		bob.await("the invite answering the knock", func() bool { return bob.invites[roomID] })
		if _, ok := bob.knocks[roomID]; ok {
			t.Fatal("the knock is still pending after the invite")
		}
		if _, err := bob.cli.JoinRoomByID(ctx, roomID); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		bob.send(roomID, "knocked and joined")
		alice.await("bob's message", func() bool { return alice.sawMessage(roomID, bob.id(), "knocked and joined") })
	})
}

// TestClientKnockBadTemplate: a make_knock template that changes what we
// asked for (here: the membership) aborts the knock (security case 14).
func TestClientKnockBadTemplate(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, "sqlite")
	b := n.start()
	bob := b.register("bob")
	evil, _ := n.fakeServer(t, func(_ string, mux *http.ServeMux) {
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { evilKnock(t, w, r) })
	})
	_, err := bob.cli.KnockRoom(context.Background(), "!room:"+evil, &mautrix.ReqKnockRoom{Via: []string{evil}})
	if !httpStatusIs(err, http.StatusForbidden) {
		t.Fatalf("knock with a tampered template: %v, want 403", err)
	}
}

// evilKnock answers make_knock with a template for a join.
func evilKnock(t *testing.T, w http.ResponseWriter, r *http.Request) {
	if strings.Contains(r.URL.Path, "/make_knock/") {
		parts := strings.Split(r.URL.Path, "/")
		roomID, _ := unescape(parts[len(parts)-2])
		userID, _ := unescape(parts[len(parts)-1])
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(mustJSON(map[string]any{"room_version": "10", "event": map[string]any{
			"type": "m.room.member", "sender": userID, "state_key": userID, "room_id": roomID,
			"content": map[string]any{"membership": "join"}, "prev_events": []string{"$x"}, "auth_events": []string{"$y"}, "depth": 5,
		}}))
		return
	}
	if strings.Contains(r.URL.Path, "/send_knock/") {
		t.Errorf("send_knock reached after a bad template")
	}
	http.NotFound(w, r)
}
