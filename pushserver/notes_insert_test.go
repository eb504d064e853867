package pushserver

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestInsertNotesStoresEveryField: the notifications of one write (two
// events of two rooms, as the catching-up consumer writes them, and 250
// recipients) are stored field for field as given, on both engines: IDs
// and thread IDs with quotes, backslashes, control and non-ASCII
// characters, large positions, both highlight values, actions with
// tweaks, the write's ts; and the write adds them to the summary.
func TestInsertNotesStoresEveryField(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newBareServer(t, db, time.Now)
		odd := "$t\"hr\\ead\u0001 ü 🧵 '); DROP TABLE x; --"
		evs := []*roomserver.Event{
			{EventID: "$e1\"\\", RoomID: "!r1:x", StreamPos: 1 << 40},
			{EventID: "$e2 ü", RoomID: "!r2:x\u007f", StreamPos: 1<<40 + 1},
		}
		actions := []json.RawMessage{json.RawMessage(`"notify"`), json.RawMessage(`{"set_tweak":"sound","value":"d\"ef ü"}`)}
		var notes []notification
		for i := range 250 {
			ev := evs[i%2]
			thread := mainThread
			if i%3 == 0 {
				thread = odd
			}
			notes = append(notes, notification{userID: fmt.Sprintf("@u%03d\"ü:x", i), event: ev, thread: thread,
				highlight: i%5 == 0, actions: actions[:1+i%2], room: &roomInfo{}})
		}
		const ts = 1_700_000_000_123
		if err := db.Write(ctx, func(tx storage.Tx) error {
			_, err := s.writeNotifications(ctx, tx, notes, nil, ts)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		rows, err := db.Reader().Query(ctx, `SELECT user_id, room_id, event_id, stream_pos, thread_id, highlight, actions, ts
			FROM push_notifications ORDER BY user_id`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		i := 0
		for ; rows.Next(); i++ {
			var userID, roomID, eventID, thread, acts string
			var pos, gotTS int64
			var highlight bool
			if err := rows.Scan(&userID, &roomID, &eventID, &pos, &thread, &highlight, &acts, &gotTS); err != nil {
				t.Fatal(err)
			}
			if i >= len(notes) {
				continue
			}
			n := notes[i]
			wantActs, _ := json.Marshal(n.actions)
			if userID != n.userID || roomID != n.event.RoomID || eventID != n.event.EventID || pos != n.event.StreamPos ||
				thread != n.thread || highlight != n.highlight || acts != string(wantActs) || gotTS != ts {
				t.Fatalf("row %d: %q %q %q %d %q %v %s %d, want %q %q %q %d %q %v %s %d", i,
					userID, roomID, eventID, pos, thread, highlight, acts, gotTS,
					n.userID, n.event.RoomID, n.event.EventID, n.event.StreamPos, n.thread, n.highlight, wantActs, int64(ts))
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if i != len(notes) {
			t.Fatalf("%d rows, want %d", i, len(notes))
		}
		// Every row counted into the summary, highlights included.
		want := map[string]map[string]RoomCounts{}
		for _, n := range notes {
			if want[n.userID] == nil {
				want[n.userID] = map[string]RoomCounts{}
			}
			c := Counts{Notifications: 1}
			if n.highlight {
				c.Highlights = 1
			}
			addUnread(want[n.userID], n.event.RoomID, n.thread, c)
		}
		if got := fromScratch(t, db); !reflect.DeepEqual(got, want) {
			t.Fatalf("counted from scratch %v, want %v", got, want)
		}
		checkSummary(t, s, []string{notes[0].userID, notes[1].userID, notes[3].userID}, []string{"!r1:x", "!r2:x\u007f"}, "the write")
	})
}
