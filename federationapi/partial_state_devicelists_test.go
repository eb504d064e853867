package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/roomserver"
)

// Device lists after a partial-state resync corrects who was in the
// room (MSC3706): a remote member the partial state wrongly held as
// joined stops being tracked, and a server it wrongly held as absent
// gets the device-list updates it missed. Complement: msc3902
// TestPartialStateJoin "Device list tracking" and "Outgoing device list
// updates".

// stateBuiltPDU builds an event of sender in roomID on top of s's
// forward extremities, with the auth events chosen from authState (as
// the room version selects them), signed by signerName's key.
func stateBuiltPDU(t *testing.T, s *fedServer, roomID, sender, eventType string, stateKey *string, content any,
	authState []*roomserver.Event, signerName string, key *signing.Key) gomatrixserverlib.PDU {
	t.Helper()
	ctx := context.Background()
	version, err := s.HS.Rooms.RoomVersion(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	impl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
	var state []gomatrixserverlib.PDU
	for _, e := range authState {
		pdu, err := impl.NewEventFromTrustedJSONWithEventID(e.EventID, e.JSON, false)
		if err != nil {
			t.Fatal(err)
		}
		state = append(state, pdu)
	}
	ext, err := s.HS.Rooms.Extremities(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	var depth int64
	for _, id := range ext {
		ev, _, err := s.HS.Rooms.FederationEvent(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		depth = max(depth, ev.Depth)
	}
	proto := &gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: roomID, Type: eventType, StateKey: stateKey,
		Content: mustJSON(content), PrevEvents: ext, Depth: depth + 1, Version: impl}
	eb := impl.NewEventBuilderFromProtoEvent(proto)
	provider, err := gomatrixserverlib.NewAuthEvents(state)
	if err != nil {
		t.Fatal(err)
	}
	if err := eb.AddAuthEvents(provider); err != nil {
		t.Fatal(err)
	}
	pdu, err := eb.Build(time.Now(), spec.ServerName(signerName), gomatrixserverlib.KeyID(key.ID), key.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return pdu
}

// stateEvents reads the given (type, "") state events of roomID on s.
func stateEvents(t *testing.T, s *fedServer, roomID string, types ...string) []*roomserver.Event {
	t.Helper()
	var out []*roomserver.Event
	for _, typ := range types {
		ev, err := s.HS.Rooms.RoomStateEvent(context.Background(), roomID, typ, "")
		if err != nil {
			t.Fatalf("%s on %s: %v", typ, s.Name, err)
		}
		out = append(out, ev)
	}
	return out
}

// sendPDUs pushes pdus to dest in a transaction from origin.
func sendPDUs(t *testing.T, n *network, dest, origin *fedServer, txnID string, pdus ...gomatrixserverlib.PDU) {
	t.Helper()
	var raw []json.RawMessage
	for _, p := range pdus {
		raw = append(raw, p.JSON())
	}
	status, body := n.request(dest, origin.Name, origin.HS.Key, dest.Name, http.MethodPut, "/_matrix/federation/v1/send/"+txnID,
		map[string]any{"origin": origin.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": raw})
	if status != http.StatusOK {
		t.Fatalf("send to %s: %d %s", dest.Name, status, body)
	}
}

// remoteCacheHolds reports whether s's key server holds a fresh cached
// device list for the remote user userID (a row not marked stale: an
// untracked user's row stays, stale, with their keys dropped).
func remoteCacheHolds(t *testing.T, s *fedServer, userID string) bool {
	t.Helper()
	var n int
	if err := s.HS.DB.Reader().QueryRow(context.Background(), `SELECT COUNT(*) FROM keyserver_remote_users WHERE user_id = $1 AND NOT stale`,
		userID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// TestPartialStateJoinStopsTrackingWrongMember: elsie (on C), banned
// from the room before bob's partial-state join, gets a join accepted by
// B's partial state, which lacks her ban; bob queries her keys, so B
// tracks and caches her device list. The resync rejects the join: she
// shares no room with a user of B, so B drops her cached list (a later
// join fetches it afresh). fred (on C too), who joined after bob for
// real, stays tracked and cached.
// Spec: client-server-api, "Tracking the device list for a user".
// Complement: msc3902 "Device list tracking for user incorrectly
// believed to be in room when they rejoin after partial state join
// completes".
func TestPartialStateJoinStopsTrackingWrongMember(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, c := n.start(), n.start(), n.start()
		ctx := context.Background()
		alice, bob, elsie, fred := a.register("alice"), b.register("bob"), c.register("elsie"), c.register("fred")
		elsie.uploadDeviceKeys()
		fred.uploadDeviceKeys()
		roomID := namedPublicRoom(t, alice)
		if _, err := a.HS.Rooms.Ban(ctx, roomserver.MembershipRequest{RoomID: string(roomID), Sender: string(alice.id()),
			Target: string(elsie.id())}); err != nil {
			t.Fatal(err)
		}
		release := partialJoin(t, a, b, bob, roomID)
		if _, err := fred.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "B to see fred join", func() bool {
			m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(fred.id()))
			return m == "join"
		})

		elsieID := string(elsie.id())
		join := stateBuiltPDU(t, b, string(roomID), elsieID, "m.room.member", &elsieID, map[string]string{"membership": "join"},
			stateEvents(t, a, string(roomID), "m.room.create", "m.room.power_levels", "m.room.join_rules"), c.Name, c.HS.Key)
		sendPDUs(t, n, b, c, "banned-join", join)
		eventually(t, "B's partial state to take elsie's join", func() bool {
			m, _ := b.HS.Rooms.Membership(ctx, string(roomID), elsieID)
			return m == "join"
		})
		if _, err := bob.cli.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{
			elsie.id(): {}, fred.id(): {}}}); err != nil {
			t.Fatal(err)
		}
		for _, u := range []id.UserID{elsie.id(), fred.id()} {
			if !remoteCacheHolds(t, b, string(u)) {
				t.Fatalf("B does not cache %s's device list during the resync", u)
			}
		}

		release()
		if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), elsieID); m == "join" {
			t.Fatal("after the resync B still holds elsie as joined")
		}
		eventually(t, "B to drop elsie's cached device list", func() bool { return !remoteCacheHolds(t, b, elsieID) })
		if !remoteCacheHolds(t, b, string(fred.id())) {
			t.Fatal("B dropped the cached device list of fred, who shares the room with bob")
		}
	})
}

// deviceChangesAbout counts s's device-list changes about userID (one
// per m.device_list_update about a remote user it took).
func deviceChangesAbout(t *testing.T, s *fedServer, userID string) int {
	t.Helper()
	var n int
	if err := s.HS.DB.Reader().QueryRow(context.Background(), `SELECT COUNT(*) FROM keyserver_device_list_changes WHERE user_id = $1`,
		userID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPartialStateJoinDevicesReachWronglyKickedServer: dave (on D) joins
// after bob's partial-state join; carol, a moderator who had left before
// it, "kicks" him with an event B's partial state cannot refute, so B
// sends D none of bob's device-list updates. dave then really leaves.
// The resync rejects the kick: D was in the room while bob's devices
// changed, so B sends it bob's devices although D is in the room neither
// before bob's join nor now. Spec: server-server-api, "Device
// Management". Complement: msc3902 "Device list updates reach
// incorrectly kicked servers once partial state join completes even
// though remote server left room".
func TestPartialStateJoinDevicesReachWronglyKickedServer(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, c, d := n.start(), n.start(), n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.user("alice"), b.register("bob")
		carol, dave := c.user("carol"), d.user("dave")
		bob.uploadDeviceKeys()
		created, err := a.HS.Rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: alice, Preset: "public_chat",
			Name: "kick", PowerLevelContentOverride: map[string]any{"users": map[string]any{carol: 50}}})
		if err != nil {
			t.Fatal(err)
		}
		roomID := created.RoomID
		if _, err := c.HS.Federation.JoinRemote(ctx, roomID, carol, []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		var carolJoin *roomserver.Event
		eventually(t, "A to see carol join", func() bool {
			ev, err := a.HS.Rooms.RoomStateEvent(ctx, roomID, "m.room.member", carol)
			carolJoin = ev
			return err == nil && ev.Membership == "join"
		})
		if err := c.HS.Rooms.AwaitFullState(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		// carol's topic puts her join in the auth chain of the partial
		// state B will get.
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

		release := partialJoin(t, a, b, bob, id.RoomID(roomID))
		if _, err := d.HS.Federation.JoinRemote(ctx, roomID, dave, []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		var daveJoin *roomserver.Event
		eventually(t, "B to see dave join", func() bool {
			ev, err := b.HS.Rooms.RoomStateEvent(ctx, roomID, "m.room.member", dave)
			daveJoin = ev
			return err == nil && ev.Membership == "join"
		})
		kick := stateBuiltPDU(t, b, roomID, carol, "m.room.member", &dave, map[string]string{"membership": "leave"},
			append(stateEvents(t, a, roomID, "m.room.create", "m.room.power_levels", "m.room.join_rules"), carolJoin, daveJoin),
			c.Name, c.HS.Key)
		sendPDUs(t, n, b, c, "bad-kick", kick)
		eventually(t, "B's partial state to take carol's kick", func() bool {
			m, _ := b.HS.Rooms.Membership(ctx, roomID, dave)
			return m == "leave"
		})

		// bob's device changes: A is told, D (not in B's partial state) is not.
		onA, onD := deviceChangesAbout(t, a, string(bob.id())), deviceChangesAbout(t, d, string(bob.id()))
		if err := bob.cli.SetDeviceInfo(ctx, bob.cli.DeviceID, &mautrix.ReqDeviceInfo{DisplayName: "renamed while partial"}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "A to get bob's device-list update", func() bool { return deviceChangesAbout(t, a, string(bob.id())) > onA })
		time.Sleep(500 * time.Millisecond)
		if got := deviceChangesAbout(t, d, string(bob.id())); got != onD {
			t.Fatalf("D, kicked in B's partial state, got bob's device-list update during the resync (%d changes, had %d)", got, onD)
		}

		// dave really leaves.
		if _, err := d.HS.Rooms.Leave(ctx, roomserver.MembershipRequest{RoomID: roomID, Sender: dave}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "A to see dave leave", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, roomID, dave)
			return m == "leave"
		})

		release()
		eventually(t, "B's full state to hold dave's own leave", func() bool {
			ev, err := b.HS.Rooms.RoomStateEvent(ctx, roomID, "m.room.member", dave)
			return err == nil && ev.Membership == "leave" && ev.Sender == dave
		})
		eventually(t, "D to get bob's devices after the resync", func() bool {
			return deviceChangesAbout(t, d, string(bob.id())) > onD
		})
	})
}
