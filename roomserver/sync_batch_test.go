package roomserver

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// The batched sync reads answer, room by room, exactly what the per-room
// reads answer, whether the events come from the parsed-event cache or
// (rendered without parsing, eventFromRow) from the table: rooms of
// several versions, a redacted event, a reader who may not see the
// history before their join, transaction IDs.
func TestSyncBatchReadsMatchPerRoomReads(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		var rooms []string
		for i, version := range []string{"1", "2", "6", "10", "11", "12"} {
			room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: version, Preset: PresetPublicChat}).RoomID
			if i%2 == 0 {
				empty := ""
				mustSend(t, s, room, alice, "m.room.history_visibility", &empty, `{"history_visibility":"joined"}`)
			}
			mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"before bob <b>&</b>"}`)
			if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob, Target: bob}); err != nil {
				t.Fatal(err)
			}
			target := mustSend(t, s, room, bob, "m.room.message", nil, `{"msgtype":"m.text","body":"to redact"}`)
			if _, err := s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.redaction",
				Content: json.RawMessage(`{"reason":"test"}`), Redacts: target}); err != nil {
				t.Fatal(err)
			}
			for j := range 3 {
				if _, err := s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: bob, Type: "m.room.message",
					Content: json.RawMessage(fmt.Sprintf(`{"msgtype":"m.text","body":"%d"}`, j)),
					TxnID:   &TxnID{DeviceID: "BOBDEV", TxnID: fmt.Sprint(room, j)}}); err != nil {
					t.Fatal(err)
				}
			}
			name := ""
			mustSend(t, s, room, alice, "m.room.name", &name, fmt.Sprintf(`{"name":"room %s"}`, version))
			rooms = append(rooms, room)
		}
		// A room bob was never in.
		rooms = append(rooms, mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPrivateChat}).RoomID)
		head, err := s.StreamPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		same := func(what string, want, got any) {
			t.Helper()
			w, _ := json.Marshal(want)
			g, _ := json.Marshal(got)
			if string(w) != string(g) {
				t.Errorf("%s:\nper room: %s\nbatched:  %s", what, w, g)
			}
		}
		for _, cold := range []bool{false, true} {
			for _, limit := range []int{2, 50} {
				if cold {
					s.events = newEventCache(4096)
				}
				batch, err := s.RecentEventsOfRooms(ctx, RecentRoomsRequest{UserID: bob, RoomIDs: rooms, To: head, Limit: limit})
				if err != nil {
					t.Fatal(err)
				}
				if cold {
					s.events = newEventCache(4096)
				}
				states, err := s.CurrentStateOfRooms(ctx, rooms, limit == 2)
				if err != nil {
					t.Fatal(err)
				}
				if cold {
					s.events = newEventCache(4096)
				}
				members, err := s.MemberEventsOfRooms(ctx, map[string][]string{rooms[0]: {bob, alice}, rooms[3]: {charlie, bob}})
				if err != nil {
					t.Fatal(err)
				}
				summaries, err := s.RoomMemberSummaries(ctx, rooms)
				if err != nil {
					t.Fatal(err)
				}
				var ids []string
				roomOf := map[string]string{}
				for _, room := range rooms {
					what := fmt.Sprintf("room %s cold %v limit %d", room, cold, limit)
					rr, err := s.RecentEvents(ctx, RecentRequest{UserID: bob, RoomID: room, To: head, Limit: limit})
					if err != nil {
						t.Fatal(err)
					}
					same(what+" recent", rr, batch.Rooms[room])
					for _, e := range rr.Events {
						ids = append(ids, e.EventID)
						roomOf[e.EventID] = room
					}
					st, err := s.IndexedCurrentState(ctx, room, nil, limit == 2)
					if err != nil {
						t.Fatal(err)
					}
					same(what+" state", st, states[room])
					sum, err := s.RoomMemberSummary(ctx, room)
					if err != nil {
						t.Fatal(err)
					}
					same(what+" summary", sum, summaries[room])
				}
				ms, err := s.MembershipsAt(ctx, bob, ids)
				if err != nil {
					t.Fatal(err)
				}
				same("memberships", ms, batch.Memberships)
				m0, err := s.IndexedStateKeys(ctx, rooms[0], "m.room.member", []string{bob, alice})
				if err != nil {
					t.Fatal(err)
				}
				m3, err := s.IndexedStateKeys(ctx, rooms[3], "m.room.member", []string{charlie, bob})
				if err != nil {
					t.Fatal(err)
				}
				same("members", map[string][]*Event{rooms[0]: m0, rooms[3]: m3}, members)
				want := map[string]string{}
				for _, room := range rooms {
					var inRoom []string
					for _, id := range ids {
						if roomOf[id] == room {
							inRoom = append(inRoom, id)
						}
					}
					got, err := s.TxnIDs(ctx, room, bob, "BOBDEV", inRoom)
					if err != nil {
						t.Fatal(err)
					}
					for k, v := range got {
						want[k] = v
					}
				}
				txns, err := s.TxnIDsOfEvents(ctx, bob, "BOBDEV", roomOf)
				if err != nil {
					t.Fatal(err)
				}
				same("txn IDs", want, txns)
				if limit == 50 && len(txns) != 18 {
					t.Errorf("%d transaction IDs, want 18", len(txns))
				}
			}
		}
	})
}

// eventContent finds an event's content by scanning the top level only,
// and must give what decoding the whole event gives, on any input: the
// cases where the two could part (case-insensitive keys, repeated keys,
// escapes, null) fall back to decoding.
func TestEventContentMatchesDecoding(t *testing.T) {
	for _, js := range []string{
		`{"type":"m.room.message","content":{"body":"hi"}}`,
		`{"content":{"body":"<b>&</b> \u00e9"},"depth":3}`,
		`{ "content" : { "a" : [1, 2] } , "x" : "content" }`,
		`{"content":null}`,
		`{"content":"text"}`,
		`{"content":{}}`,
		`{"type":"m.room.create"}`,
		`{"unsigned":{"content":{"inner":true}},"content":{"outer":true}}`,
		`{"content":{"first":1},"content":{"second":2}}`,
		`{"Content":{"upper":1}}`,
		`{"content":{"lower":1},"CONTENT":{"upper":1}}`,
		`{"cont\u0065nt":{"escaped":1}}`,
		`{"content":{"a":1},"cont\u0065nt":{"escaped":1}}`,
		`[1,2]`,
		`{"content":{"a":1}`,
		`not json`,
		``,
	} {
		var want struct {
			Content spec.RawJSON `json:"content"`
		}
		wantErr := json.Unmarshal([]byte(js), &want)
		got, err := eventContent([]byte(js))
		if (err != nil) != (wantErr != nil) || string(got) != string(want.Content) || (got == nil) != (want.Content == nil) {
			t.Errorf("%s: got %q (%v), decoding gives %q (%v)", js, got, err, want.Content, wantErr)
		}
	}
}

// The timeline reads of sync (recentRows, and each term of
// RecentEventsOfRooms) read only the index that holds every column they
// select (migration 007), not the events' table rows: SQLite's plan says
// COVERING INDEX for each. (PostgreSQL's planner picks by table
// statistics, which a test's few rows do not give; there the index is
// checked to exist in place of the one it replaces.)
func TestRecentRowsReadOnlyTheIndex(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		newTestServer(t, db) // migrates
		if db.Engine() == storage.Postgres {
			var def string
			if err := db.Reader().QueryRow(ctx, `SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = 'roomserver_events_room_stream_covering'`).Scan(&def); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(def, "(room_id, event_nid, rejected, soft_failed, state_before, state_after, redacted_because)") {
				t.Errorf("index: %s", def)
			}
			var n int
			if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM pg_indexes WHERE schemaname = current_schema() AND indexname = 'roomserver_events_room_stream'`).Scan(&n); err != nil || n != 0 {
				t.Errorf("the replaced index: %d, %v", n, err)
			}
			return
		}
		for _, query := range []string{recentRowsQuery, recentRowsOfRoomsQuery(3)} {
			args := []any{"!a:example.org", 0, 100, 10}
			if query != recentRowsQuery {
				args = []any{0, 100, 10, "!a:example.org", "!b:example.org", "!c:example.org"}
			}
			plan := sqlitePlan(t, db, query, args...)
			uses := 0
			for _, step := range plan {
				if strings.Contains(step, "USING COVERING INDEX roomserver_events_room_stream_covering") {
					uses++
				} else if strings.Contains(step, "roomserver_events") {
					t.Errorf("a plan step reads the table another way: %s", step)
				}
			}
			if n := strings.Count(query, "FROM roomserver_events"); uses != n {
				t.Errorf("%d of %d reads use the covering index; plan:\n%s", uses, n, strings.Join(plan, "\n"))
			}
		}
	})
}

// TestTxnIDsOfEventsSeeksByEventID checks that the transaction IDs sync
// echoes are read from the events' rows found by event ID, not by a scan of
// the events. The plan is SQLite's (EXPLAIN QUERY
// PLAN); PostgreSQL's planner picks a scan for a table this small whatever
// the query, so there the test checks the answer only.
func TestTxnIDsOfEventsSeeksByEventID(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db) // migrates
		query, args := txnIDsOfEventsQuery([]string{"$1", "$2", "$3"}, "@bob:example.org", "BOBDEV")
		if db.Engine() == storage.SQLite {
			plan := sqlitePlan(t, db, query, args...)
			joined := strings.Join(plan, "\n")
			if strings.Contains(joined, "SCAN") || !strings.Contains(joined, "SEARCH roomserver_events USING INDEX sqlite_autoindex_roomserver_events_1 (event_id=?)") {
				t.Errorf("plan does not seek by event ID:\n%s", joined)
			}
		}
		got, err := s.TxnIDsOfEvents(ctx, "@bob:example.org", "BOBDEV", map[string]string{"$nothing": "!a:example.org"})
		if err != nil || len(got) != 0 {
			t.Errorf("TxnIDsOfEvents of an unknown event: %v, %v", got, err)
		}
	})
}

// sqlitePlan returns the detail lines of SQLite's EXPLAIN QUERY PLAN for query.
func sqlitePlan(t *testing.T, db *storage.DB, query string, args ...any) []string {
	t.Helper()
	var plan []string
	// In a read transaction whose first statement reads the schema: EXPLAIN
	// alone starts no transaction, so on a reader connection opened before
	// the migrations (the checkpointer's NOOP checkpoints open one while
	// they run) it would plan against the schema that connection loaded
	// then. A statement that runs re-reads a changed schema by itself.
	err := db.Read(context.Background(), func(q storage.Querier) error {
		var n int
		if err := q.QueryRow(context.Background(), "SELECT count(*) FROM sqlite_schema").Scan(&n); err != nil {
			return err
		}
		rows, err := q.Query(context.Background(), "EXPLAIN QUERY PLAN "+query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				return err
			}
			plan = append(plan, detail)
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	return plan
}
