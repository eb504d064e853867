package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// fakeRoom is a room of version 10 held only by a fakeRemote: its events
// in order, built by the test.
type fakeRoom struct {
	t      *testing.T
	f      *fakeRemote
	roomID string
	events []gomatrixserverlib.PDU
}

func (r *fakeRoom) impl() gomatrixserverlib.IRoomVersion {
	return gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV10)
}

// add builds the next event, on the last one, authorised by auth.
func (r *fakeRoom) add(sender, eventType string, stateKey *string, content any, auth ...gomatrixserverlib.PDU) gomatrixserverlib.PDU {
	r.t.Helper()
	raw, _ := json.Marshal(content)
	prev, authIDs := []string{}, []string{}
	if n := len(r.events); n > 0 {
		prev = []string{r.events[n-1].EventID()}
	}
	for _, a := range auth {
		authIDs = append(authIDs, a.EventID())
	}
	proto := &gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: r.roomID, Type: eventType, StateKey: stateKey,
		Content: raw, PrevEvents: prev, AuthEvents: authIDs, Depth: int64(len(r.events) + 1), Version: r.impl()}
	pdu, err := r.impl().NewEventBuilderFromProtoEvent(proto).Build(time.Now(), spec.ServerName(r.f.name),
		gomatrixserverlib.KeyID(r.f.key.ID), r.f.key.PrivateKey)
	if err != nil {
		r.t.Fatal(err)
	}
	r.events = append(r.events, pdu)
	return pdu
}

// resign replaces the signatures of pdu (last added) with sigs.
func (r *fakeRoom) resign(pdu gomatrixserverlib.PDU, sigs any) gomatrixserverlib.PDU {
	r.t.Helper()
	raw, err := sjson.SetBytes(pdu.JSON(), "signatures", sigs)
	if err != nil {
		r.t.Fatal(err)
	}
	out, err := r.impl().NewEventFromTrustedJSON(raw, false)
	if err != nil {
		r.t.Fatal(err)
	}
	r.events[len(r.events)-1] = out
	return out
}

// serveJoins answers make_join and send_join for the room: the state is
// every event, the auth chain empty (every event is in the state).
func (r *fakeRoom) serveJoins(create, powerLevels, joinRules gomatrixserverlib.PDU) {
	r.f.mux.HandleFunc("/_matrix/federation/v1/make_join/", func(w http.ResponseWriter, req *http.Request) {
		userID, _ := unescape(req.URL.EscapedPath()[len("/_matrix/federation/v1/make_join/")+len(pathEscape(r.roomID))+1:])
		last := r.events[len(r.events)-1]
		_, _ = w.Write(mustJSON(map[string]any{"room_version": "10", "event": map[string]any{
			"type": "m.room.member", "sender": userID, "state_key": userID, "room_id": r.roomID,
			"content": map[string]string{"membership": "join"}, "prev_events": []string{last.EventID()},
			"auth_events": []string{create.EventID(), powerLevels.EventID(), joinRules.EventID()},
			"depth":       len(r.events) + 1, "origin": r.f.name, "origin_server_ts": time.Now().UnixMilli(),
		}}))
	})
	r.f.mux.HandleFunc("/_matrix/federation/v2/send_join/", func(w http.ResponseWriter, req *http.Request) {
		var state []json.RawMessage
		for _, e := range r.events {
			state = append(state, e.JSON())
		}
		_, _ = w.Write(mustJSON(map[string]any{"origin": r.f.name, "state": state, "auth_chain": []json.RawMessage{},
			"members_omitted": false, "servers_in_room": []string{r.f.name}}))
	})
}

// TestJoinWithUnverifiableEvents: a send_join answer whose state holds
// events with no signature, a bad signature, a signature by a key that
// cannot be had, and an event authorised by one of those, still lets the
// join through; those events are dropped and the rest of the state kept.
// Spec: server-server-api, "Checks performed on receipt of a PDU".
func TestJoinWithUnverifiableEvents(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, storage.SQLite)
	a := n.start()
	f := newFakeRemote(t, n)
	ctx := context.Background()
	charlie := "@charlie:" + f.name
	empty := ""
	r := &fakeRoom{t: t, f: f, roomID: "!unverifiable:" + f.name}
	create := r.add(charlie, "m.room.create", &empty, map[string]string{"creator": charlie, "room_version": "10"})
	join := r.add(charlie, "m.room.member", &charlie, map[string]string{"membership": "join"}, create)
	pl := r.add(charlie, "m.room.power_levels", &empty, map[string]any{"users": map[string]int{charlie: 100}}, create, join)
	jr := r.add(charlie, "m.room.join_rules", &empty, map[string]string{"join_rule": "public"}, create, join, pl)
	topic := r.add(charlie, "m.room.topic", &empty, map[string]string{"topic": "kept"}, create, join, pl)
	badSig := "/3z+pJjiJXWhwfqIEzmNksvBHCoXTktK/y0rRuWJXw6i1+ygRG/suDCKhFuuz6gPapRmEMPVILi2mJqHHXPKAg"
	unsigned := r.resign(r.add(charlie, "m.room.name", &empty, map[string]string{"name": "no signature"}, create, join, pl), map[string]any{})
	badly := r.resign(r.add(charlie, "m.room.avatar", &empty, map[string]string{"url": "mxc://bad/signature"}, create, join, pl),
		map[string]any{f.name: map[string]string{f.key.ID: badSig}})
	unobtainable := r.resign(r.add(charlie, "m.room.guest_access", &empty, map[string]string{"guest_access": "can_join"}, create, join, pl),
		map[string]any{f.name: map[string]string{"ed25519:bogus": badSig}})
	badMember := r.resign(r.add(charlie, "m.room.member", &charlie, map[string]string{"membership": "join", "displayname": "bad"}, create, join, pl),
		map[string]any{f.name: map[string]string{f.key.ID: badSig}})
	dependent := r.add(charlie, "m.room.history_visibility", &empty, map[string]string{"history_visibility": "shared"}, create, badMember, pl)
	r.serveJoins(create, pl, jr)

	alice := a.user("alice")
	if _, err := a.HS.Federation.JoinRemote(ctx, r.roomID, alice, []string{f.name}); err != nil {
		t.Fatalf("join: %v", err)
	}
	if m, _ := a.HS.Rooms.Membership(ctx, r.roomID, alice); m != "join" {
		t.Fatalf("alice's membership is %q", m)
	}
	if ev, err := a.HS.Rooms.RoomStateEvent(ctx, r.roomID, "m.room.topic", ""); err != nil || ev.EventID != topic.EventID() {
		t.Errorf("the well-signed topic is not in the state: %v, %v", ev, err)
	}
	for what, ev := range map[string]gomatrixserverlib.PDU{"unsigned": unsigned, "badly signed": badly,
		"unobtainable key": unobtainable, "authorised by a badly signed event": dependent} {
		if got, err := a.HS.Rooms.RoomStateEvent(ctx, r.roomID, ev.Type(), ""); !mxerr.Is(err, mxerr.NotFound) {
			t.Errorf("the %s %s is in the state: %v, %v", what, ev.Type(), got, err)
		}
	}
	if ev, err := a.HS.Rooms.RoomStateEvent(ctx, r.roomID, "m.room.member", charlie); err != nil || ev.EventID != join.EventID() {
		t.Errorf("charlie's membership is not his well-signed join: %v, %v", ev, err)
	}
}
