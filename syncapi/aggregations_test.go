package syncapi_test

import (
	"context"
	"encoding/json"
	"net/url"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// TestSyncBundledAggregationsWhenLimited: a limited timeline's events
// carry unsigned.m.relations (here a thread and an edit); a timeline
// that is not limited does not. Spec: client-server-api, "Aggregations
// of child events".
func TestSyncBundledAggregationsWhenLimited(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
		before := syncOK(t, srv, alice, "timeout=0")["next_batch"].(string)
		send := func(content string) string {
			t.Helper()
			resp, err := srv.HS.Rooms.SendEvent(context.Background(), roomserver.SendEventRequest{
				RoomID: roomID, Sender: alice.id, Type: "m.room.message", Content: json.RawMessage(content)})
			if err != nil {
				t.Fatal(err)
			}
			return resp.EventID
		}
		root := send(`{"msgtype":"m.text","body":"root"}`)
		edit := send(`{"msgtype":"m.text","body":"* edited","m.new_content":{"msgtype":"m.text","body":"edited"},
			"m.relates_to":{"rel_type":"m.replace","event_id":"` + root + `"}}`)
		reply := send(`{"msgtype":"m.text","body":"in thread","m.relates_to":{"rel_type":"m.thread","event_id":"` + root + `"}}`)

		rootEvent := func(body map[string]any) map[string]any {
			t.Helper()
			evs, _ := dig(body, "rooms", "join", roomID, "timeline", "events").([]any)
			for _, e := range evs {
				if ev := e.(map[string]any); ev["event_id"] == root {
					return ev
				}
			}
			t.Fatalf("root not in the timeline: %v", dig(body, "rooms", "join", roomID, "timeline"))
			return nil
		}
		filter := url.QueryEscape(`{"room":{"timeline":{"limit":3}}}`)
		limited := syncOK(t, srv, alice, "timeout=0&filter="+filter)
		if dig(limited, "rooms", "join", roomID, "timeline", "limited") != true {
			t.Fatalf("timeline not limited: %v", dig(limited, "rooms", "join", roomID, "timeline"))
		}
		rels := dig(rootEvent(limited), "unsigned", "m.relations")
		if got := dig(rels, "m.thread", "latest_event", "event_id"); got != reply {
			t.Errorf("m.thread latest_event %v, want %s (relations %v)", got, reply, rels)
		}
		if got := dig(rels, "m.thread", "count"); got != float64(1) {
			t.Errorf("m.thread count %v, want 1", got)
		}
		if got := dig(rels, "m.replace", "event_id"); got != edit {
			t.Errorf("m.replace %v, want %s", got, edit)
		}

		full := syncOK(t, srv, alice, "timeout=0&filter="+filter+"&since="+url.QueryEscape(before))
		if dig(full, "rooms", "join", roomID, "timeline", "limited") != false {
			t.Fatalf("incremental timeline limited: %v", dig(full, "rooms", "join", roomID, "timeline"))
		}
		if rels := dig(rootEvent(full), "unsigned", "m.relations"); rels != nil {
			t.Errorf("relations bundled into a timeline that is not limited: %v", rels)
		}
	})
}
