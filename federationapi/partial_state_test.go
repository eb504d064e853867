package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/roomserver"
)

// Partial-state ("faster") joins, MSC3706/MSC3902.
// Spec: server-server-api, "PUT /_matrix/federation/v2/send_join".

// sendJoinAs runs make_join on a for userID of origin (signed with
// origin's key) and send_join with the given query, returning the
// decoded send_join answer.
func sendJoinAs(t *testing.T, n *network, a, origin *fedServer, roomID, userID, query string) map[string]json.RawMessage {
	t.Helper()
	status, body := n.request(a, origin.Name, origin.HS.Key, a.Name, http.MethodGet,
		"/_matrix/federation/v1/make_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(userID)+"?ver=12", nil)
	if status != http.StatusOK {
		t.Fatalf("make_join: %d %s", status, body)
	}
	var tmpl struct {
		RoomVersion string                       `json:"room_version"`
		Event       gomatrixserverlib.ProtoEvent `json:"event"`
	}
	if err := json.Unmarshal(body, &tmpl); err != nil {
		t.Fatal(err)
	}
	impl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(tmpl.RoomVersion))
	join, err := impl.NewEventBuilderFromProtoEvent(&tmpl.Event).Build(time.Now(), spec.ServerName(origin.Name),
		gomatrixserverlib.KeyID(origin.HS.Key.ID), origin.HS.Key.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	status, body = n.request(a, origin.Name, origin.HS.Key, a.Name, http.MethodPut,
		"/_matrix/federation/v2/send_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(join.EventID())+query, json.RawMessage(join.JSON()))
	if status != http.StatusOK {
		t.Fatalf("send_join: %d %s", status, body)
	}
	var out map[string]json.RawMessage
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// stateKeys lists "type|state_key" of a PDU array.
func stateKeys(t *testing.T, raw json.RawMessage) (keys, ids []string) {
	t.Helper()
	var evs []struct {
		Type     string `json:"type"`
		StateKey string `json:"state_key"`
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &evs); err != nil {
		t.Fatal(err)
	}
	impl := gomatrixserverlib.MustGetRoomVersion("12")
	for i, e := range evs {
		keys = append(keys, e.Type+"|"+e.StateKey)
		pdu, err := impl.NewEventFromTrustedJSON(list[i], false)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, pdu.EventID())
	}
	sort.Strings(keys)
	return keys, ids
}

// TestSendJoinOmitMembers: send_join with omit_members=true leaves out
// the membership events but the heroes' (none in a named room), sets
// members_omitted, lists the servers in the room before the join, and
// does not repeat state events in the auth chain; without it the answer
// is the full state.
func TestSendJoinOmitMembers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, c := n.start(), n.start(), n.start()
		ctx := context.Background()
		alice, carol := a.user("alice"), c.user("carol")
		named := publicRoom(t, a, alice)
		resp, err := a.HS.Rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: alice, Preset: "public_chat"})
		if err != nil {
			t.Fatal(err)
		}
		unnamed := resp.RoomID
		for _, roomID := range []string{named, unnamed} {
			if _, err := c.HS.Federation.JoinRemote(ctx, roomID, carol, []string{a.Name}); err != nil {
				t.Fatal(err)
			}
		}

		for _, tc := range []struct {
			roomID  string
			members []string // membership events expected in state
		}{
			{named, nil},
			{unnamed, []string{alice, carol}}, // heroes: no name, no alias
		} {
			partial := sendJoinAs(t, n, a, b, tc.roomID, b.user("bob2"), "?omit_members=true")
			if string(partial["members_omitted"]) != "true" {
				t.Fatalf("members_omitted = %s", partial["members_omitted"])
			}
			var servers []string
			if err := json.Unmarshal(partial["servers_in_room"], &servers); err != nil {
				t.Fatal(err)
			}
			sort.Strings(servers)
			want := []string{a.Name, c.Name}
			sort.Strings(want)
			if !slices.Equal(servers, want) {
				t.Fatalf("servers_in_room = %v, want %v (before the join: not %s)", servers, want, b.Name)
			}
			keys, stateIDs := stateKeys(t, partial["state"])
			var members []string
			for _, k := range keys {
				if len(k) > len("m.room.member|") && k[:len("m.room.member|")] == "m.room.member|" {
					members = append(members, k[len("m.room.member|"):])
				}
			}
			sort.Strings(members)
			wantMembers := slices.Clone(tc.members)
			sort.Strings(wantMembers)
			if !slices.Equal(members, wantMembers) {
				t.Fatalf("room %s: members in state %v, want %v", tc.roomID, members, wantMembers)
			}
			for _, k := range []string{"m.room.create|", "m.room.power_levels|", "m.room.join_rules|"} {
				if !slices.Contains(keys, k) {
					t.Fatalf("state lacks %s: %v", k, keys)
				}
			}
			chainKeys, chainIDs := stateKeys(t, partial["auth_chain"])
			for _, id := range chainIDs {
				if slices.Contains(stateIDs, id) {
					t.Fatalf("auth chain repeats state event %s", id)
				}
			}
			if tc.members == nil && !slices.Contains(chainKeys, "m.room.member|"+alice) {
				// alice's join authorises the power levels: it must come
				// with the auth chain when the state leaves it out.
				t.Fatalf("auth chain lacks alice's join: %v", chainKeys)
			}
			if slices.Contains(chainKeys, "m.room.member|"+carol) && !slices.Contains(tc.members, carol) {
				t.Fatalf("auth chain holds carol's join, which nothing in state needs: %v", chainKeys)
			}
		}
		// Without omit_members: the full state.
		full := sendJoinAs(t, n, a, b, named, b.user("bob3"), "")
		if string(full["members_omitted"]) == "true" {
			t.Fatalf("members omitted without omit_members: %s", full["members_omitted"])
		}
		keys, _ := stateKeys(t, full["state"])
		if !slices.Contains(keys, "m.room.member|"+carol) {
			t.Fatalf("full state lacks carol: %v", keys)
		}

	})
}

// TestPartialStateJoinResync: a join through a server answering with
// members omitted returns at once with a partial-state room: the room
// lacks the other servers' members, member lists wait, other servers
// may not join through it, events still arrive; a restart in the middle
// resumes the resync, after which the room has the full state and the
// same current state as the resident server.
func TestPartialStateJoinResync(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, c := n.start(), n.start(), n.start()
		ctx := context.Background()
		alice, bob, carol := a.user("alice"), b.user("bob"), c.user("carol")
		roomID := publicRoom(t, a, alice)
		if _, err := c.HS.Federation.JoinRemote(ctx, roomID, carol, []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "A to see carol", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, roomID, carol)
			return m == "join"
		})

		release := make(chan struct{})
		b.HS.Federation.HoldResyncs(release)
		if _, err := b.HS.Federation.JoinRemote(ctx, roomID, bob, []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		if partial, err := b.HS.Rooms.IsPartialState(ctx, roomID); err != nil || !partial {
			t.Fatalf("B's room partial = %v, %v; want partial", partial, err)
		}
		if m, _ := b.HS.Rooms.Membership(ctx, roomID, bob); m != "join" {
			t.Fatalf("bob's membership on B is %q", m)
		}
		if m, _ := b.HS.Rooms.Membership(ctx, roomID, carol); m != "" {
			t.Fatalf("partial state holds carol's membership %q", m)
		}
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		if err := b.HS.Rooms.AwaitFullState(short, roomID); err == nil {
			t.Fatal("AwaitFullState returned while the room is partial")
		}
		cancel()
		// Other servers may not join through a partial-state server.
		status, body := n.request(b, c.Name, c.HS.Key, b.Name, http.MethodGet,
			"/_matrix/federation/v1/make_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(c.user("dave"))+"?ver=12", nil)
		if status != http.StatusNotFound || !json.Valid(body) || !containsErrcode(body, "M_NOT_FOUND") {
			t.Fatalf("make_join through B: %d %s, want 404 M_NOT_FOUND", status, body)
		}
		// Events arrive while partial: carol's sender membership is not
		// in B's state, her message's auth events vouch for it.
		fromCarol := sendText(t, c, roomID, carol, "hello while partial")
		eventually(t, "B to receive carol's message", func() bool { return hasEvent(b, bob, fromCarol) })
		fromBob := sendText(t, b, roomID, bob, "bob while partial")
		eventually(t, "A to receive bob's message", func() bool { return hasEvent(a, alice, fromBob) })

		// A restart with the resync still held: the new process resumes it.
		b.restart()
		eventually(t, "B's resync after the restart", func() bool {
			partial, err := b.HS.Rooms.IsPartialState(ctx, roomID)
			return err == nil && !partial
		})
		close(release)
		if err := b.HS.Rooms.AwaitFullState(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		if m, _ := b.HS.Rooms.Membership(ctx, roomID, carol); m != "join" {
			t.Fatalf("after the resync carol's membership on B is %q", m)
		}
		if !hasEvent(b, bob, fromCarol) {
			t.Fatal("carol's message is no longer visible after the resync")
		}
		sa, err := a.HS.Rooms.CurrentState(ctx, alice, roomID)
		if err != nil {
			t.Fatal(err)
		}
		sb, err := b.HS.Rooms.CurrentState(ctx, bob, roomID)
		if err != nil {
			t.Fatal(err)
		}
		if len(sa) != len(sb) {
			t.Fatalf("state differs: A has %d events, B %d", len(sa), len(sb))
		}
		for i := range sa {
			if sa[i].EventID != sb[i].EventID {
				t.Fatalf("state differs at %s: %s vs %s", sa[i].Type, sa[i].EventID, sb[i].EventID)
			}
		}
		// Joins through B work again.
		status, body = n.request(b, c.Name, c.HS.Key, b.Name, http.MethodGet,
			"/_matrix/federation/v1/make_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(c.user("dave"))+"?ver=12", nil)
		if status != http.StatusOK {
			t.Fatalf("make_join through B after the resync: %d %s", status, body)
		}
	})
}

func containsErrcode(body []byte, code string) bool {
	var e struct {
		Errcode string `json:"errcode"`
	}
	return json.Unmarshal(body, &e) == nil && e.Errcode == code
}

// TestPartialStateReplayRejects: an event accepted on partial state,
// because its auth events vouch for a membership the partial state does
// not hold, is rejected once the resync brings the full state (its
// sender had left), and stays out of the room state.
func TestPartialStateReplayRejects(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, c := n.start(), n.start(), n.start()
		ctx := context.Background()
		alice, bob, carol := a.user("alice"), b.user("bob"), c.user("carol")
		created, err := a.HS.Rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: alice, Preset: "public_chat",
			Name: "replay", PowerLevelContentOverride: map[string]any{"users": map[string]any{carol: 50}}})
		if err != nil {
			t.Fatal(err)
		}
		roomID := created.RoomID
		if _, err := c.HS.Federation.JoinRemote(ctx, roomID, carol, []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		var carolJoin string
		eventually(t, "A to see carol join", func() bool {
			ev, err := a.HS.Rooms.RoomStateEvent(ctx, roomID, "m.room.member", carol)
			if err == nil && ev.Membership == "join" {
				carolJoin = ev.EventID
				return true
			}
			return false
		})
		if err := c.HS.Rooms.AwaitFullState(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		// carol sets the topic: her join enters the auth chain B will
		// get with the partial state.
		empty := ""
		topic, err := c.HS.Rooms.SendEvent(ctx, roomserver.SendEventRequest{RoomID: roomID, Sender: carol,
			Type: "m.room.topic", StateKey: &empty, Content: json.RawMessage(`{"topic":"carol's"}`)})
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "A to get carol's topic", func() bool { return hasEvent(a, alice, topic.EventID) })
		if _, err := c.HS.Rooms.Leave(ctx, roomserver.MembershipRequest{RoomID: roomID, Sender: carol}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "A to see carol leave", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, roomID, carol)
			return m == "leave"
		})

		release := make(chan struct{})
		b.HS.Federation.HoldResyncs(release)
		if _, err := b.HS.Federation.JoinRemote(ctx, roomID, bob, []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		// carol's state event claims, through its auth events, that she
		// is still joined: B's partial state cannot tell otherwise.
		pl, err := a.HS.Rooms.RoomStateEvent(ctx, roomID, "m.room.power_levels", "")
		if err != nil {
			t.Fatal(err)
		}
		ext, err := b.HS.Rooms.Extremities(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		var depth int64
		for _, id := range ext {
			ev, _, err := b.HS.Rooms.FederationEvent(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			depth = max(depth, ev.Depth)
		}
		impl := gomatrixserverlib.MustGetRoomVersion("12")
		proto := &gomatrixserverlib.ProtoEvent{SenderID: carol, RoomID: roomID, Type: "m.test", StateKey: &empty,
			Content: spec.RawJSON(`{"body":"stale"}`), PrevEvents: ext, AuthEvents: []string{pl.EventID, carolJoin},
			Depth: depth + 1, Version: impl}
		stale, err := impl.NewEventBuilderFromProtoEvent(proto).Build(time.Now(), spec.ServerName(c.Name),
			gomatrixserverlib.KeyID(c.HS.Key.ID), c.HS.Key.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		status, body := n.request(b, c.Name, c.HS.Key, b.Name, http.MethodPut, "/_matrix/federation/v1/send/replay1",
			map[string]any{"origin": c.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{stale.JSON()}})
		if status != http.StatusOK {
			t.Fatalf("send: %d %s", status, body)
		}
		eventually(t, "B to accept carol's event on partial state", func() bool { return hasEvent(b, bob, stale.EventID()) })
		if ev, err := b.HS.Rooms.RoomStateEvent(ctx, roomID, "m.test", ""); err != nil || ev.EventID != stale.EventID() {
			t.Fatalf("partial state m.test = %v, %v; want carol's event", ev, err)
		}

		close(release)
		if err := b.HS.Rooms.AwaitFullState(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		if hasEvent(b, bob, stale.EventID()) {
			t.Fatal("carol's event is still visible after the resync")
		}
		if ev, err := b.HS.Rooms.RoomStateEvent(ctx, roomID, "m.test", ""); err == nil {
			t.Fatalf("after the resync the room state holds m.test %s", ev.EventID)
		}
		if m, _ := b.HS.Rooms.Membership(ctx, roomID, carol); m != "leave" {
			t.Fatalf("after the resync carol's membership on B is %q, want leave", m)
		}
	})
}
