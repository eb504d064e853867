package federationapi

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// fakeRooms answers the two reads EDU checks make; everything else
// panics through the nil embedded interface.
type fakeRooms struct{ Rooms }

func (fakeRooms) ServerInRoom(context.Context, string, string) (bool, error) { return true, nil }
func (fakeRooms) FederationEvent(context.Context, string) (*roomserver.Event, string, error) {
	return nil, "", mxerr.New(mxerr.NotFound, "none")
}
func (fakeRooms) RoomStateEvent(context.Context, string, string, string) (*roomserver.Event, error) {
	return nil, mxerr.New(mxerr.NotFound, "none")
}

type recorder struct{ calls []string }

func (r *recorder) RemoteTyping(_ context.Context, _, userID string, _ bool) error {
	r.calls = append(r.calls, "typing "+userID)
	return nil
}
func (r *recorder) RemoteReceipt(_ context.Context, _, _, userID string, _ []string, _ json.RawMessage) error {
	r.calls = append(r.calls, "receipt "+userID)
	return nil
}
func (r *recorder) RemotePresence(_ context.Context, userID string, _ json.RawMessage) error {
	r.calls = append(r.calls, "presence "+userID)
	return nil
}
func (r *recorder) RemoteToDevice(_ context.Context, sender, _, _ string, msgs map[string]map[string]json.RawMessage) error {
	for u := range msgs {
		r.calls = append(r.calls, "to_device "+sender+" "+u)
	}
	return nil
}
func (r *recorder) RemoteDeviceListUpdate(_ context.Context, userID string, _ json.RawMessage) error {
	r.calls = append(r.calls, "device_list "+userID)
	return nil
}
func (r *recorder) MembersRevealed(context.Context, []string, int64) error { return nil }
func (r *recorder) MembersDropped(context.Context, []string) error         { return nil }
func (r *recorder) RemoteSigningKeyUpdate(_ context.Context, userID string, _ json.RawMessage) error {
	r.calls = append(r.calls, "signing_key "+userID)
	return nil
}

// TestEDUOriginChecks: each EDU type reaches its sink only when the user
// it concerns belongs to the origin; a forged one is dropped whole with
// no call at all (security case 15).
func TestEDUOriginChecks(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	s := &Server{serverName: "us.example", rooms: fakeRooms{}, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		edus: EDUSinks{Typing: rec, Receipts: rec, Presence: rec, ToDevice: rec, DeviceLists: rec}}
	edus := func(user string) []string {
		return []string{
			`{"edu_type":"m.typing","content":{"room_id":"!r:x","user_id":"` + user + `","typing":true}}`,
			`{"edu_type":"m.receipt","content":{"!r:x":{"m.read":{"@ok:them.example":{"event_ids":["$e"],"data":{"ts":1}},"` + user + `":{"event_ids":["$e"],"data":{"ts":1}}}}}}`,
			`{"edu_type":"m.presence","content":{"push":[{"user_id":"` + user + `","presence":"online"}]}}`,
			`{"edu_type":"m.device_list_update","content":{"user_id":"` + user + `","device_id":"D","stream_id":1}}`,
			`{"edu_type":"m.signing_key_update","content":{"user_id":"` + user + `"}}`,
			`{"edu_type":"m.direct_to_device","content":{"sender":"` + user + `","type":"m.room_key_request","message_id":"m1","messages":{"@me:us.example":{"*":{}}}}}`,
		}
	}
	for _, e := range edus("@mallory:elsewhere.example") {
		s.processEDU(context.Background(), "them.example", json.RawMessage(e))
	}
	if len(rec.calls) != 0 {
		t.Fatalf("forged EDUs reached sinks: %v", rec.calls)
	}
	for _, e := range edus("@friend:them.example") {
		s.processEDU(context.Background(), "them.example", json.RawMessage(e))
	}
	want := 7 // typing, 2 receipts, presence, device list, signing key, to-device
	if len(rec.calls) != want {
		t.Fatalf("genuine EDUs: %d calls %v, want %d", len(rec.calls), rec.calls, want)
	}
}

// TestACLMatching follows the spec's glob rules.
func TestACLMatching(t *testing.T) {
	t.Parallel()
	acl := json.RawMessage(`{"allow":["*"],"deny":["*.evil.example","bad?.example"],"allow_ip_literals":false}`)
	for server, want := range map[string]bool{
		"good.example": true, "a.evil.example": false, "bad1.example": false, "bad12.example": true,
		"1.2.3.4:8448": false, "[::1]": false, "good.example:8448": true,
	} {
		if got := aclAllows(acl, server); got != want {
			t.Errorf("%s: %v, want %v", server, got, want)
		}
	}
	if aclAllows(json.RawMessage(`{"allow":["only.example"]}`), "other.example") {
		t.Errorf("allow list not applied")
	}
}
