package federationapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/roomserver"
)

// TestLongStateKeyInOldRoomVersions: a state key of 70 four-byte
// codepoints (280 bytes) is within the limit of room versions before 11,
// which count codepoints, and beyond that of version 11 on, which count
// bytes. Sent over federation, it is accepted into a version 10 room
// (other servers accepted it; refusing it would break the room's DAG
// here) and refused in a version 12 room.
// Complement: TestOutboundFederationEventSizeGetMissingEvents.
func TestLongStateKeyInOldRoomVersions(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a := n.start()
		alice := a.user("alice")
		f := newFakeRemote(t, n)
		mallory := "@mallory:" + f.name
		stateKey := strings.Repeat("💥", 70)
		for _, c := range []struct {
			version string
			accept  bool
		}{{"10", true}, {"12", false}} {
			created, err := a.HS.Rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: alice, Preset: "public_chat", RoomVersion: c.version})
			if err != nil {
				t.Fatal(err)
			}
			roomID := created.RoomID
			pl := map[string]any{"state_default": 0}
			if c.version == "10" {
				pl["users"] = map[string]int{alice: 100}
			}
			sendState(t, a, roomID, alice, "m.room.power_levels", "", pl)
			send := func(pdu gomatrixserverlib.PDU) string {
				t.Helper()
				status, body := n.request(a, f.name, f.key, a.Name, http.MethodPut,
					"/_matrix/federation/v1/send/size"+c.version+strings.ReplaceAll(pdu.EventID(), "$", "_"),
					map[string]any{"origin": f.name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{pdu.JSON()}})
				if status != http.StatusOK {
					t.Fatalf("send: %d %s", status, body)
				}
				var resp sendResponse
				_ = json.Unmarshal(body, &resp)
				return resp.PDUs[pdu.EventID()].Error
			}
			join := buildPDU(t, a, roomID, mallory, "m.room.member", &mallory, map[string]string{"membership": "join"}, f.name, f.key, nil)
			if e := send(join); e != "" {
				t.Fatalf("v%s: mallory's join: %s", c.version, e)
			}
			long := buildLenient(t, a, roomID, mallory, "my.room.breaker", &stateKey, f.name, f)
			e := send(long)
			_, _, err = a.HS.Rooms.FederationEvent(ctx, long.EventID())
			if c.accept && (e != "" || err != nil) {
				t.Errorf("v%s: a 280-byte, 70-codepoint state key refused: %q, %v", c.version, e, err)
			}
			if !c.accept && e == "" {
				t.Errorf("v%s: a 280-byte state key accepted", c.version)
			}
		}
	})
}

// buildLenient builds a state event like buildPDU but keeps it when
// gomatrixserverlib only objects to its sizes (as a remote server
// might send it anyway).
func buildLenient(t *testing.T, s *fedServer, roomID, sender, eventType string, stateKey *string, signer string, f *fakeRemote) gomatrixserverlib.PDU {
	t.Helper()
	ctx := context.Background()
	version, err := s.HS.Rooms.RoomVersion(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	impl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
	evs, err := s.HS.Rooms.CurrentState(ctx, firstJoined(t, s, roomID), roomID)
	if err != nil {
		t.Fatal(err)
	}
	var state []gomatrixserverlib.PDU
	for _, e := range evs {
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
	eb := impl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: roomID, Type: eventType,
		StateKey: stateKey, Content: spec.RawJSON(`{}`), PrevEvents: ext, Depth: depth + 1, Version: impl})
	provider, err := gomatrixserverlib.NewAuthEvents(state)
	if err != nil {
		t.Fatal(err)
	}
	if err := eb.AddAuthEvents(provider); err != nil {
		t.Fatal(err)
	}
	pdu, err := eb.Build(time.Now(), spec.ServerName(signer), gomatrixserverlib.KeyID(f.key.ID), f.key.PrivateKey)
	var verr gomatrixserverlib.EventValidationError
	if err != nil && !errors.As(err, &verr) {
		t.Fatal(err)
	}
	if pdu == nil {
		t.Fatalf("no event built: %v", err)
	}
	return pdu
}
