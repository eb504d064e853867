package pushserver

import (
	"context"
	"encoding/json"

	"github.com/myelin-chat/myelin/storage"
)

// insertNotesQuery writes a list of push_notifications rows passed as
// one JSON array ($2) of [user_id, room_id, event_id, stream_pos,
// thread_id, highlight, actions] arrays, all written at ts $1. One
// statement of two arguments, whatever the number of rows: a message to
// a room of 200 members was two statements of 800 placeholders each,
// whose text changed with the row count, so SQLite compiled them afresh
// for every message (statements of more than 128 arguments are not kept
// in its cache) and bound 1,600 arguments (docs/benchmarks.md,
// "sendsum"). The engines differ only in the function that turns the
// array into rows; ->> reads an element as SQL text (PostgreSQL) or as
// the SQL value of its JSON type (SQLite), and the casts make both the
// columns' types. On SQLite the rows come from jsonb_each, not json_each:
// both parse the argument once, but json_each hands each row's array back
// as JSON text, which every one of the seven ->> then parses again, while
// jsonb_each hands it back in SQLite's binary JSON form, which ->> reads
// without parsing. The rows and values are the same; the statement took
// 11–18 % less time for a message to 20 members (docs/benchmarks.md,
// "send8").
var insertNotesQuery = map[storage.Engine]string{
	storage.SQLite:   insertNotesHead + `jsonb_each($2) AS r`,
	storage.Postgres: insertNotesHead + `jsonb_array_elements(CAST($2 AS JSONB)) AS r(value)`,
}

const insertNotesHead = `INSERT INTO push_notifications
		(user_id, room_id, event_id, stream_pos, thread_id, highlight, actions, ts)
	SELECT r.value ->> 0, r.value ->> 1, r.value ->> 2, CAST(r.value ->> 3 AS BIGINT), r.value ->> 4,
		CAST(r.value ->> 5 AS BOOLEAN), r.value ->> 6, $1
	FROM `

// insertNotes writes notes as push_notifications rows at ts now, in
// one statement.
func (s *Server) insertNotes(ctx context.Context, tx storage.Tx, notes []notification, now int64) error {
	rows := make([][7]any, len(notes))
	for i, n := range notes {
		actions, err := json.Marshal(n.actions)
		if err != nil {
			return err
		}
		rows[i] = [7]any{n.userID, n.event.RoomID, n.event.EventID, n.event.StreamPos, n.thread, n.highlight, string(actions)}
	}
	list, err := json.Marshal(rows)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, insertNotesQuery[s.db.Engine()], now, string(list))
	return err
}
