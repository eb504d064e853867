package syncapi_test

import (
	"context"
	"testing"

	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// An incremental sync lists only the rooms with news since the token,
// and still carries each room's new timeline and state: a message in
// one room, a state change in another, nothing in a third.
func TestIncrementalSyncOnlyRoomsWithNews(t *testing.T) {
	engines := []storage.Engine{storage.SQLite}
	if postgresAvailable() {
		engines = append(engines, storage.Postgres)
	}
	for _, engine := range engines {
		t.Run(string(engine), func(t *testing.T) {
			srv := testserver.Start(t, engine, nil)
			alice := newUser(t, srv, "alice")
			ctx := context.Background()
			msgRoom := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
			stateRoom := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
			quietRoom := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
			first, err := alice.client.SyncRequest(ctx, 0, "", "", false, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(first.Rooms.Join) != 3 {
				t.Fatalf("initial sync has %d rooms, want 3", len(first.Rooms.Join))
			}
			sendText(t, srv, alice, msgRoom, "news")
			topicID := sendState(t, srv, alice, stateRoom, "m.room.topic", "", `{"topic":"new topic"}`)

			resp, err := alice.client.SyncRequest(ctx, 0, first.NextBatch, "", false, "")
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := resp.Rooms.Join[id.RoomID(quietRoom)]; ok {
				t.Errorf("quiet room %s is in the incremental sync", quietRoom)
			}
			if got := bodies(resp.Rooms.Join[id.RoomID(msgRoom)].Timeline.Events); len(got) != 1 || got[0] != "news" {
				t.Errorf("message room timeline = %v, want [news]", got)
			}
			sr := resp.Rooms.Join[id.RoomID(stateRoom)]
			if sr == nil || len(sr.Timeline.Events) != 1 || sr.Timeline.Events[0].ID != id.EventID(topicID) {
				t.Fatalf("state room = %+v, want the topic change in its timeline", sr)
			}

			// state_after carries the changed state, which the legacy state
			// section leaves to the timeline.
			code, body := rawSync(t, srv, alice, "since="+first.NextBatch+"&use_state_after=true")
			if code != 200 {
				t.Fatalf("sync with use_state_after: %d %v", code, body)
			}
			join := body["rooms"].(map[string]any)["join"].(map[string]any)
			if _, ok := join[quietRoom]; ok {
				t.Errorf("quiet room in the use_state_after sync")
			}
			st := join[stateRoom].(map[string]any)["state_after"].(map[string]any)["events"].([]any)
			if len(st) != 1 || st[0].(map[string]any)["event_id"] != topicID {
				t.Errorf("state_after of the state room = %v, want the topic event", st)
			}
			mr := join[msgRoom].(map[string]any)["state_after"].(map[string]any)["events"].([]any)
			if len(mr) != 0 {
				t.Errorf("state_after of the message room = %v, want none", mr)
			}
		})
	}
}
