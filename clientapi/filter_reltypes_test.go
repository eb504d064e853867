package clientapi_test

import (
	"encoding/json"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestFilterByRelType: MSC3874's org.matrix.msc3874.rel_types and
// not_rel_types on /messages and on the /sync timeline.
func TestFilterByRelType(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "create", err)
		before, err := alice.SyncRequest(bg, 0, "", "", false, "")
		ok(t, "sync", err)

		send := func(content map[string]any) id.EventID {
			t.Helper()
			resp, err := alice.SendMessageEvent(bg, room.RoomID, event.EventMessage, content)
			ok(t, "send", err)
			return resp.EventID
		}
		root := send(map[string]any{"msgtype": "m.text", "body": "root"})
		thread := send(map[string]any{"msgtype": "m.text", "body": "in thread",
			"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})
		reference := send(map[string]any{"msgtype": "m.text", "body": "reference",
			"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": root}})
		reply := send(map[string]any{"msgtype": "m.text", "body": "reply",
			"m.relates_to": map[string]any{"m.in_reply_to": map[string]any{"event_id": root}}})

		for _, tc := range []struct {
			filter string
			want   []id.EventID
		}{
			{`{"org.matrix.msc3874.rel_types": ["m.thread"]}`, []id.EventID{thread}},
			{`{"org.matrix.msc3874.rel_types": ["m.reference"]}`, []id.EventID{reference}},
			{`{"org.matrix.msc3874.rel_types": ["m.thread", "m.reference"]}`, []id.EventID{thread, reference}},
			{`{"org.matrix.msc3874.rel_types": []}`, nil},
			{`{"org.matrix.msc3874.not_rel_types": ["m.thread"]}`, []id.EventID{root, reference, reply}},
			{`{"org.matrix.msc3874.not_rel_types": ["m.reference"]}`, []id.EventID{root, thread, reply}},
			{`{"org.matrix.msc3874.not_rel_types": ["m.thread", "m.reference"]}`, []id.EventID{root, reply}},
			{`{"org.matrix.msc3874.rel_types": ["m.thread", "m.reference"], "org.matrix.msc3874.not_rel_types": ["m.thread"]}`, []id.EventID{reference}},
			{`{"types": ["m.room.message"]}`, []id.EventID{root, thread, reference, reply}},
		} {
			q := url.Values{"dir": {"f"}, "from": {before.NextBatch}, "filter": {tc.filter}}
			status, body := call(t, "GET", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(room.RoomID))+"/messages?"+q.Encode(), alice.token, nil)
			if status != 200 {
				t.Fatalf("%s: /messages = %d %v", tc.filter, status, body)
			}
			var got []id.EventID
			for _, ev := range body["chunk"].([]any) {
				got = append(got, id.EventID(ev.(map[string]any)["event_id"].(string)))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("%s: /messages = %v, want %v", tc.filter, got, tc.want)
			}
		}

		status, body := call(t, "GET", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(room.RoomID))+"/messages?dir=f&filter="+
			url.QueryEscape(`{"org.matrix.msc3874.rel_types": "m.thread"}`), alice.token, nil)
		expectError(t, "rel_types not a list", status, body, 400, "M_BAD_JSON")

		// The same filter on the sync timeline.
		filter, _ := json.Marshal(map[string]any{"room": map[string]any{"timeline": map[string]any{
			"org.matrix.msc3874.rel_types": []string{"m.thread"}}}})
		resp, err := alice.SyncRequest(bg, 0, before.NextBatch, string(filter), false, "")
		ok(t, "filtered sync", err)
		var got []id.EventID
		for _, ev := range resp.Rooms.Join[room.RoomID].Timeline.Events {
			got = append(got, ev.ID)
		}
		if !slices.Equal(got, []id.EventID{thread}) {
			t.Errorf("sync timeline with rel_types [m.thread] = %v, want [%s]", got, thread)
		}
	})
}
