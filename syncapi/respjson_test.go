package syncapi

import (
	"bytes"
	"encoding/json"
	"strconv"
	"testing"
)

// wokenResponse is what a long poll woken by one message answers: one
// joined room with the message and its unread counts, key counts, the
// rest empty.
func wokenResponse() *syncResponse {
	ev := json.RawMessage(`{"content":{"body":"ping 12","msgtype":"m.text"},"event_id":"$abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",` +
		`"origin_server_ts":1764270000000,"sender":"@alice:test.local","type":"m.room.message","unsigned":{"age":12,"membership":"join"}}`)
	return &syncResponse{NextBatch: "s123_4_5_6_7_8_9_10_11",
		Rooms: roomsSection{Join: map[string]*joinedRoom{"!abcdefghijklmnop:test.local": {
			Timeline: timeline{Events: []json.RawMessage{ev}, PrevBatch: "s122_4_5_6_7_8_9_10_11"}, State: &eventList{Events: []json.RawMessage{}},
			Ephemeral: events(nil), AccountData: events(nil), UnreadNotifications: &unreadCounts{NotificationCount: 3}}},
			Invite: map[string]*invitedRoom{}, Knock: map[string]*knockedRoom{}, Leave: map[string]*leftRoom{}},
		AccountData: events(nil), Presence: events(nil), ToDevice: events(nil), DeviceLists: DeviceLists{Changed: []string{}, Left: []string{}},
		OneTimeKeysCount: map[string]int{"signed_curve25519": 0}, FallbackKeys: []string{}}
}

// appendResponse writes json.Marshal's bytes for every shape a response
// takes: each section empty, nil and full; room IDs, keys and strings
// that need escaping; raw events with whitespace and HTML characters;
// every optional field of a joined room. A raw event that is not JSON is
// an error, as it is for json.Marshal, and leaves dst as it was.
func TestAppendResponseMatchesMarshal(t *testing.T) {
	ev := func(s string) json.RawMessage {
		return json.RawMessage(`{"type":"m.room.message","content":{"body":` + strconv.Quote(s) + `}}`)
	}
	one, two := 1, 2
	cases := map[string]*syncResponse{"woken": wokenResponse(), "zero value": {}}
	full := wokenResponse()
	full.NextBatch = "s<&>\u2028"
	full.Rooms.Join["!esc<&>\u00e9\u2028\"q:x"] = &joinedRoom{
		Summary:                   &roomSummary{Heroes: []string{"@b:x", "@<c>:x"}, Joined: &one, Invited: &two},
		StateAfter:                &eventList{Events: []json.RawMessage{ev("s1"), json.RawMessage(" { \"a\" : \"<b>\" } ")}},
		StateAfterUnstable:        &eventList{Events: nil},
		Timeline:                  timeline{Events: []json.RawMessage{ev("a"), nil, ev("\u2029&")}, Limited: true},
		Ephemeral:                 events([]json.RawMessage{json.RawMessage(`{"type":"m.typing","content":{"user_ids":[]}}`)}),
		AccountData:               eventList{},
		UnreadNotifications:       &unreadCounts{NotificationCount: 2, HighlightCount: 1},
		UnreadThreadNotifications: map[string]unreadCounts{"$t2": {NotificationCount: 1}, "$t1": {HighlightCount: 3}},
	}
	full.Rooms.Join["!nil:x"] = nil
	full.Rooms.Join["!empty:x"] = &joinedRoom{UnreadThreadNotifications: map[string]unreadCounts{}}
	full.Rooms.Invite["!inv:x"] = &invitedRoom{InviteState: strippedList{Events: []strippedEvent{}}}
	full.Rooms.Knock["!knock:x"] = &knockedRoom{}
	full.Rooms.Leave["!left:x"] = &leftRoom{Timeline: timeline{Events: []json.RawMessage{ev("bye")}}, AccountData: events(nil)}
	full.AccountData = events([]json.RawMessage{ev("acct")})
	full.Presence = eventList{}
	full.ToDevice = events([]json.RawMessage{json.RawMessage("[1,\n2]")})
	full.DeviceLists = DeviceLists{Changed: []string{"@a:x", "@\u00e9:x"}, Left: nil}
	full.OneTimeKeysCount = map[string]int{"signed_curve25519": 50, "curve25519": 0, "<": -1}
	full.FallbackKeys = nil
	cases["full"] = full
	nilMaps := wokenResponse()
	nilMaps.Rooms = roomsSection{}
	nilMaps.OneTimeKeysCount = nil
	cases["nil maps"] = nilMaps
	for name, resp := range cases {
		want, err := json.Marshal(resp)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := appendResponse([]byte("prefix"), resp)
		if err != nil || !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Errorf("%s (%v):\n got %s\nwant prefix%s", name, err, got, want)
		}
	}
	for name, bad := range map[string]json.RawMessage{"empty": {}, "not JSON": json.RawMessage(`{"a":`), "two values": json.RawMessage(`{} {}`)} {
		resp := wokenResponse()
		resp.Rooms.Join["!abcdefghijklmnop:test.local"].Timeline.Events[0] = bad
		if _, err := json.Marshal(resp); err == nil {
			t.Fatalf("%s: json.Marshal accepted it", name)
		}
		got, err := appendResponse([]byte("prefix"), resp)
		if err == nil || string(got) != "prefix" {
			t.Errorf("%s: %q, %v; want prefix and an error", name, got, err)
		}
	}
}

// BenchmarkWokenResponseJSON: encoding a woken long poll's response,
// json.Marshal against appendResponse.
func BenchmarkWokenResponseJSON(b *testing.B) {
	resp := wokenResponse()
	b.Run("marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = json.Marshal(resp)
		}
	})
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf, _ = appendResponse(buf[:0], resp)
		}
	})
	// As the handler has it: the formatter's events marked marshalled.
	formatted := wokenResponse()
	for _, jr := range formatted.Rooms.Join {
		jr.Timeline.marshalled, jr.State.marshalled = true, true
	}
	b.Run("append-marshalled", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf, _ = appendResponse(buf[:0], formatted)
		}
	})
}
