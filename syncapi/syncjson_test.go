package syncapi

import (
	"bytes"
	"encoding/json"
	"strconv"
	"testing"
)

// TestSyncBodyMatchesMarshal: the body written piece by piece is
// json.Marshal's, and its size — the Content-Length the handler sends — is
// its exact length, for rooms whose IDs need escaping, rooms with each kind
// of state list, empty lists, and a response that falls back to
// json.Marshal (a null list).
func TestSyncBodyMatchesMarshal(t *testing.T) {
	ev := func(s string) json.RawMessage {
		return json.RawMessage(`{"type":"m.room.message","content":{"body":` + strconv.Quote(s) + `}}`)
	}
	base := func() *syncResponse {
		return &syncResponse{
			NextBatch: "s1_2", Rooms: roomsSection{Join: map[string]*joinedRoom{}, Invite: map[string]*invitedRoom{},
				Knock: map[string]*knockedRoom{}, Leave: map[string]*leftRoom{}},
			AccountData: events(nil), Presence: events(nil), ToDevice: events(nil),
			DeviceLists: DeviceLists{Changed: []string{"@a:x"}, Left: []string{}}, OneTimeKeysCount: map[string]int{"signed_curve25519": 3},
			FallbackKeys: []string{},
		}
	}
	one := 1
	full := base()
	full.Rooms.Join["!plain:x"] = &joinedRoom{State: &eventList{Events: []json.RawMessage{ev("s1"), ev("s2")}},
		Timeline: timeline{Events: []json.RawMessage{ev("a"), ev("b"), ev("c")}, Limited: true, PrevBatch: "p"},
		Summary:  &roomSummary{Heroes: []string{"@b:x"}, Joined: &one}, Ephemeral: events(nil), AccountData: events([]json.RawMessage{ev("acct")})}
	full.Rooms.Join["!esc<&>\u00e9\u2028\"q:x"] = &joinedRoom{StateAfter: &eventList{Events: []json.RawMessage{}},
		Timeline: timeline{Events: []json.RawMessage{ev("only")}}, Ephemeral: events(nil), AccountData: events(nil)}
	full.Rooms.Join["!unstable:x"] = &joinedRoom{StateAfterUnstable: &eventList{Events: []json.RawMessage{ev("u")}},
		Timeline: timeline{Events: []json.RawMessage{}}, Ephemeral: events(nil), AccountData: events(nil),
		UnreadNotifications: &unreadCounts{NotificationCount: 2}}
	fallback := base()
	fallback.Rooms.Join["!null:x"] = &joinedRoom{Timeline: timeline{Events: nil}, Ephemeral: events(nil), AccountData: events(nil)}
	for name, resp := range map[string]*syncResponse{"no rooms": base(), "rooms": full, "null list": fallback} {
		want, err := json.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		b, err := newSyncBody(resp)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var got bytes.Buffer
		if err := b.writeTo(&got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("%s:\n got %s\nwant %s", name, got.Bytes(), want)
		}
		if b.size != len(want) {
			t.Errorf("%s: size %d, body %d bytes", name, b.size, len(want))
		}
		if name == "null list" && b.whole == nil {
			t.Errorf("a null list must fall back to json.Marshal")
		}
	}
}
