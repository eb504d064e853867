package roomserver

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// RelationCandidatesAfter answers, of what EventsAfter answers, every
// event the relations index can act on — redactions, and every event
// whose content encoding/json decodes an m.relates_to from (it matches
// keys without regard to case) — and leaves out plain messages; an event
// whose JSON keeps a \u escape is read too (an escaped key could spell
// m.relates_to). Both engines' query texts are held to this.
func TestRelationCandidatesAfter(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
		start, err := s.StreamPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		root := mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"root"}`)
		var want []string
		want = append(want, mustSend(t, s, room, alice, "m.room.message", nil,
			`{"msgtype":"m.text","body":"in a thread","m.relates_to":{"rel_type":"m.thread","event_id":"`+root+`"}}`))
		mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"plain"}`)
		want = append(want, mustSend(t, s, room, alice, "m.room.message", nil,
			`{"msgtype":"m.text","body":"upper case","M.Relates_To":{"rel_type":"m.reference","event_id":"`+root+`"}}`))
		want = append(want, mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"bell \u0007"}`))
		mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"plain again"}`)
		want = append(want, mustSend(t, s, room, alice, "m.room.redaction", nil, `{"redacts":"`+root+`"}`))
		mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"last"}`)

		all, err := s.EventsAfter(ctx, start, 100)
		if err != nil {
			t.Fatal(err)
		}
		// The events the index acts on, decoded as the indexer decodes.
		for _, ev := range all {
			var c struct {
				RelatesTo *json.RawMessage `json:"m.relates_to"`
			}
			_ = json.Unmarshal(ev.Content, &c)
			isWanted := strings.Contains(strings.Join(want, " "), ev.EventID)
			if (c.RelatesTo != nil || ev.Type == "m.room.redaction") && !isWanted {
				t.Fatalf("set-up: %s has a relation or is a redaction but is not expected", ev.EventID)
			}
		}
		if len(all) != 8 {
			t.Fatalf("set-up: %d events, want 8", len(all))
		}
		head, got, err := s.RelationCandidatesAfter(ctx, start, 100)
		if err != nil {
			t.Fatal(err)
		}
		if head != all[len(all)-1].StreamPos {
			t.Errorf("head %d, want the last event's position %d", head, all[len(all)-1].StreamPos)
		}
		if ids := eventIDs(got); strings.Join(ids, " ") != strings.Join(want, " ") {
			t.Errorf("candidates %v, want %v", ids, want)
		}
		for _, ev := range got {
			if ev.RoomID != room || len(ev.JSON) == 0 || len(ev.Content) == 0 {
				t.Errorf("candidate %s lacks its room, JSON or content: %+v", ev.EventID, ev)
			}
		}
		_, one, err := s.RelationCandidatesAfter(ctx, got[0].StreamPos, 1)
		if err != nil {
			t.Fatal(err)
		}
		if ids := eventIDs(one); len(ids) != 1 || ids[0] != want[1] {
			t.Errorf("after the first, limit 1: %v, want [%s]", ids, want[1])
		}
		h, none, err := s.RelationCandidatesAfter(ctx, head, 100)
		if err != nil || h != head || len(none) != 0 {
			t.Errorf("at the head: %d, %v, %v; want %d and no events", h, none, err, head)
		}
	})
}
