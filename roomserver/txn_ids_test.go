package roomserver

import (
	"context"
	"encoding/json"
	"io/fs"
	"testing"
	"testing/fstest"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// migrationsUpTo is the roomserver's migrations numbered at most last,
// as an older binary shipped them.
func migrationsUpTo(t *testing.T, last string) fs.FS {
	t.Helper()
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := fs.ReadDir(sub, ".")
	if err != nil {
		t.Fatal(err)
	}
	out := fstest.MapFS{}
	for _, e := range entries {
		if e.Name()[:3] > last {
			continue
		}
		body, err := fs.ReadFile(sub, e.Name())
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = &fstest.MapFile{Data: body}
	}
	return out
}

// Migration 013 moves the transaction IDs of roomserver_txn_ids into
// their events' rows and drops the table. The IDs recorded before it
// still answer retries afterwards (lookupTxn) and sync
// (unsigned.transaction_id: TxnIDs, TxnIDsOfEvents), the unique index
// still refuses a second event for the same (room, user, device, txnId),
// a row whose event is not stored is dropped, and new sends with a
// transaction ID store it and refuse a retry.
func TestTxnIDsMoveIntoEventRows(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		if err := db.Migrate(ctx, "roomserver", migrationsUpTo(t, "012")); err != nil {
			t.Fatal(err)
		}
		old := []struct{ room, user, device, txn, event string }{
			{"!a:test", alice, "DEV", "t1", "$old1"},
			{"!a:test", alice, "DEV", "t2", "$old2"},
			{"!a:test", alice, "DEV2", "t1", "$old3"},
			{"!b:test", alice, "DEV", "t1", "$old4"},
			{"!a:test", bob, "DEV", "t1", "$old5"},
		}
		if err := db.Write(ctx, func(tx storage.Tx) error {
			for _, r := range old {
				if _, err := tx.Exec(ctx, `INSERT INTO roomserver_events (event_id, room_id, type, sender, depth, origin_server_ts, json)
					VALUES ($1, $2, 'm.room.message', $3, 1, 1, '{}')`, r.event, r.room, r.user); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `INSERT INTO roomserver_txn_ids (room_id, user_id, device_id, txn_id, event_id, created_ts)
					VALUES ($1, $2, $3, $4, $5, 1)`, r.room, r.user, r.device, r.txn, r.event); err != nil {
					return err
				}
			}
			// An event sent without a transaction ID, and a transaction
			// ID whose event is not stored.
			if _, err := tx.Exec(ctx, `INSERT INTO roomserver_events (event_id, room_id, type, sender, depth, origin_server_ts, json)
				VALUES ('$plain', '!a:test', 'm.room.message', $1, 1, 1, '{}')`, alice); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO roomserver_txn_ids (room_id, user_id, device_id, txn_id, event_id, created_ts)
				VALUES ('!a:test', $1, 'DEV', 't9', '$gone', 1)`, alice)
			return err
		}); err != nil {
			t.Fatal(err)
		}

		s := newTestServer(t, db) // runs the remaining migrations
		for _, r := range old {
			got, err := lookupTxn(ctx, db.Reader(), r.room, r.user, "m.room.message", "", &TxnID{DeviceID: r.device, TxnID: r.txn})
			if err != nil || got != r.event {
				t.Fatalf("after the migration %v maps to %q, %v; want %s", r, got, err, r.event)
			}
		}
		for _, txn := range []string{"t3", "t9"} {
			if got, err := lookupTxn(ctx, db.Reader(), "!a:test", alice, "m.room.message", "", &TxnID{DeviceID: "DEV", TxnID: txn}); err != nil || got != "" {
				t.Fatalf("txnId %s maps to %q, %v; want none", txn, got, err)
			}
		}
		var txnOfPlain *string
		if err := db.Reader().QueryRow(ctx, `SELECT txn_id FROM roomserver_events WHERE event_id = '$plain'`).Scan(&txnOfPlain); err != nil || txnOfPlain != nil {
			t.Fatalf("an event sent without a transaction ID has %v, %v", txnOfPlain, err)
		}
		err := db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO roomserver_events (event_id, room_id, type, sender, depth, origin_server_ts, json, txn_device, txn_id)
				VALUES ('$dup', '!a:test', 'm.room.message', $1, 2, 2, '{}', 'DEV', 't1')`, alice)
			return err
		})
		if !storage.IsUniqueViolation(err) {
			t.Fatalf("a second event for the same txnId gave %v, want a unique violation", err)
		}
		got, err := s.TxnIDs(ctx, "!a:test", alice, "DEV", []string{"$old1", "$old2", "$old3", "$old5", "$plain"})
		if err != nil || len(got) != 2 || got["$old1"] != "t1" || got["$old2"] != "t2" {
			t.Fatalf("TxnIDs after the migration: %v, %v", got, err)
		}
		got, err = s.TxnIDsOfEvents(ctx, alice, "DEV", map[string]string{"$old1": "!a:test", "$old4": "!b:test",
			"$old3": "!a:test", "$old5": "!a:test", "$plain": "!a:test", "$old2": "!b:test"})
		if err != nil || len(got) != 2 || got["$old1"] != "t1" || got["$old4"] != "t1" {
			t.Fatalf("TxnIDsOfEvents after the migration: %v, %v", got, err)
		}
		if n := countRows(t, db, "roomserver_events"); n != 6 {
			t.Fatalf("%d event rows after the migration, want 6", n)
		}
		var tables int
		if err := db.Reader().QueryRow(ctx, tableExistsQuery(db), "roomserver_txn_ids").Scan(&tables); err != nil || tables != 0 {
			t.Fatalf("roomserver_txn_ids still exists (%d, %v)", tables, err)
		}

		// Sends with transaction IDs: a retry returns the first event and
		// stores nothing; the ID is echoed to the sending device only.
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID
		req := SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.message",
			Content: json.RawMessage(`{"body":"once"}`), TxnID: &TxnID{DeviceID: "DEV", TxnID: "t1"}}
		first, err := s.SendEvent(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		n := countRows(t, db, "roomserver_events")
		again, err := s.SendEvent(ctx, req)
		if err != nil || again.EventID != first.EventID || countRows(t, db, "roomserver_events") != n {
			t.Fatalf("retry gave %+v, %v; want %s and nothing stored", again, err, first.EventID)
		}
		if got, err := s.TxnIDs(ctx, room, alice, "DEV", []string{first.EventID}); err != nil || got[first.EventID] != "t1" {
			t.Fatalf("TxnIDs of the new send: %v, %v", got, err)
		}
		if got, err := s.TxnIDs(ctx, room, alice, "DEV2", []string{first.EventID}); err != nil || len(got) != 0 {
			t.Fatalf("TxnIDs of the new send for another device: %v, %v", got, err)
		}
	})
}

// tableExistsQuery counts the tables named $1.
func tableExistsQuery(db *storage.DB) string {
	if db.Engine() == storage.SQLite {
		return `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1`
	}
	return `SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1`
}

// TestTxnIDScopedToEndpoint: a transaction ID is scoped to a device and
// an endpoint, and a request is a retransmission only when its path is
// that of the first. The same ID used for a message, a message of
// another type (another /send path), a redaction (PUT /redact) and a
// redaction of another event each makes its own event, and each retry
// returns its own first event, also through a new Server on the same
// database (a restart); another device or another room is a new
// request too. A redaction sent through /send (content.redacts) is found
// again on its retry. Spec: client-server-api, "Transaction
// identifiers".
func TestTxnIDScopedToEndpoint(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID
		other := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID
		target := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"to redact"}`)
		txn := func(device string) *TxnID { return &TxnID{DeviceID: device, TxnID: "t1"} }
		reqs := []struct {
			name string
			req  SendEventRequest
		}{
			{"message", SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.message",
				Content: json.RawMessage(`{"body":"one"}`), TxnID: txn("DEV")}},
			{"another type", SendEventRequest{RoomID: room, Sender: alice, Type: "org.example.other",
				Content: json.RawMessage(`{"body":"two"}`), TxnID: txn("DEV")}},
			{"redaction", SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.redaction",
				Content: json.RawMessage(`{}`), Redacts: target, TxnID: txn("DEV")}},
			{"another device", SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.message",
				Content: json.RawMessage(`{"body":"three"}`), TxnID: txn("DEV2")}},
			{"another room", SendEventRequest{RoomID: other, Sender: alice, Type: "m.room.message",
				Content: json.RawMessage(`{"body":"four"}`), TxnID: txn("DEV")}},
		}
		first := map[string]string{}
		seen := map[string]string{}
		for _, r := range reqs {
			resp, err := s.SendEvent(ctx, r.req)
			if err != nil {
				t.Fatalf("%s with a transaction ID used by another endpoint: %v", r.name, err)
			}
			if prev, ok := seen[resp.EventID]; ok {
				t.Fatalf("%s answered with %s, the event of %s: a new request taken for a retry", r.name, resp.EventID, prev)
			}
			first[r.name], seen[resp.EventID] = resp.EventID, r.name
		}
		// The redaction of another event, with the same ID: new too.
		target2 := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"to redact too"}`)
		resp, err := s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.redaction",
			Content: json.RawMessage(`{}`), Redacts: target2, TxnID: txn("DEV")})
		if err != nil || resp.EventID == first["redaction"] {
			t.Fatalf("the redaction of another event with the same transaction ID gave %+v, %v; want a new event", resp, err)
		}
		reqs = append(reqs, struct {
			name string
			req  SendEventRequest
		}{"redaction of another event", SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.redaction",
			Content: json.RawMessage(`{}`), Redacts: target2, TxnID: txn("DEV")}})
		first["redaction of another event"] = resp.EventID
		for _, id := range []string{target, target2} {
			ev, err := s.Event(ctx, alice, id)
			if err != nil || ev.RedactedBecause == "" {
				t.Fatalf("%s after its redaction: %+v, %v; want it redacted", id, ev, err)
			}
		}
		// A redaction sent through /send names its target in content.
		viaSend := SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.redaction",
			Content: json.RawMessage(`{"redacts":"` + first["message"] + `"}`), TxnID: &TxnID{DeviceID: "DEV", TxnID: "t5"}}
		resp, err = s.SendEvent(ctx, viaSend)
		if err != nil {
			t.Fatal(err)
		}
		first["redaction through /send"] = resp.EventID
		reqs = append(reqs, struct {
			name string
			req  SendEventRequest
		}{"redaction through /send", viaSend})

		n := countRows(t, db, "roomserver_events")
		for _, srv := range []*Server{s, newTestServer(t, db)} {
			for _, r := range reqs {
				again, err := srv.SendEvent(ctx, r.req)
				if err != nil || again.EventID != first[r.name] {
					t.Errorf("retry of the %s gave %+v, %v; want its first event %s", r.name, again, err, first[r.name])
				}
			}
		}
		if got := countRows(t, db, "roomserver_events"); got != n {
			t.Errorf("the retries stored %d events, want none", got-n)
		}
	})
}

// TestTxnIDRedactionThroughSendAndRedact: PUT /send/m.room.redaction
// with content.redacts X and PUT /redact/X are two endpoints, so one
// transaction ID used for both makes two redactions, in either order,
// and each retry returns its own first event, also through a new Server
// on the same database. The path of /send does not name the target, so
// a retry of /send/m.room.redaction with the same transaction ID is a
// retransmission whatever its content.redacts. Spec: client-server-api,
// "Transaction identifiers" (scoped to a device and an endpoint; a
// retransmission has the transaction ID and the path of the first).
func TestTxnIDRedactionThroughSendAndRedact(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID
		x := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"x"}`)
		y := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"y"}`)
		viaSend := func(txnID, target string) SendEventRequest {
			return SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.redaction",
				Content: json.RawMessage(`{"redacts":"` + target + `"}`), TxnID: &TxnID{DeviceID: "DEV", TxnID: txnID}}
		}
		viaRedact := func(txnID, target string) SendEventRequest {
			return SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.redaction",
				Content: json.RawMessage(`{}`), Redacts: target, TxnID: &TxnID{DeviceID: "DEV", TxnID: txnID}}
		}
		reqs := []struct {
			name string
			req  SendEventRequest
		}{
			{"/send first", viaSend("t1", x)},
			{"/redact after /send", viaRedact("t1", x)},
			{"/redact first", viaRedact("t2", y)},
			{"/send after /redact", viaSend("t2", y)},
		}
		first := map[string]string{}
		seen := map[string]string{}
		for _, r := range reqs {
			resp, err := s.SendEvent(ctx, r.req)
			if err != nil {
				t.Fatalf("%s: %v", r.name, err)
			}
			if prev, ok := seen[resp.EventID]; ok {
				t.Errorf("%s answered with %s, the event of %s: a request to another endpoint taken for a retry", r.name, resp.EventID, prev)
			}
			first[r.name], seen[resp.EventID] = resp.EventID, r.name
		}
		// The same /send path and transaction ID, another content.redacts:
		// a retransmission of the first.
		reqs = append(reqs, struct {
			name string
			req  SendEventRequest
		}{"/send first, retried naming another target", viaSend("t1", y)})
		first["/send first, retried naming another target"] = first["/send first"]

		n := countRows(t, db, "roomserver_events")
		for _, srv := range []*Server{s, newTestServer(t, db)} {
			for _, r := range reqs {
				again, err := srv.SendEvent(ctx, r.req)
				if err != nil || again.EventID != first[r.name] {
					t.Errorf("retry of %s gave %+v, %v; want its first event %s", r.name, again, err, first[r.name])
				}
			}
		}
		if got := countRows(t, db, "roomserver_events"); got != n {
			t.Errorf("the retries stored %d events, want none", got-n)
		}
	})
}

// Migration 015 keys transaction IDs on the target in the path of
// /redact (txn_redacts) instead of the event's redacts. A redaction
// stored before it, whose endpoint is not known, keeps its key: taken as
// sent through /redact, its retry there returns it, and the unique index
// still refuses a second row with that key; a message keeps its own.
func TestTxnIDRedactPathMigration(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		if err := db.Migrate(ctx, "roomserver", migrationsUpTo(t, "014")); err != nil {
			t.Fatal(err)
		}
		if err := db.Write(ctx, func(tx storage.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO roomserver_events (event_id, room_id, type, sender, depth, origin_server_ts, json, txn_device, txn_id)
				VALUES ('$msg', '!a:test', 'm.room.message', $1, 1, 1, '{}', 'DEV', 't1')`, alice); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO roomserver_events (event_id, room_id, type, sender, depth, origin_server_ts, json, redacts, txn_device, txn_id)
				VALUES ('$red', '!a:test', 'm.room.redaction', $1, 2, 2, '{}', '$msg', 'DEV', 't1')`, alice)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		newTestServer(t, db) // runs the remaining migrations
		txn := &TxnID{DeviceID: "DEV", TxnID: "t1"}
		for _, c := range []struct{ evType, redacts, want string }{
			{"m.room.message", "", "$msg"},
			{"m.room.redaction", "$msg", "$red"}, // PUT /redact/$msg/t1
			{"m.room.redaction", "", ""},         // PUT /send/m.room.redaction/t1
		} {
			if got, err := lookupTxn(ctx, db.Reader(), "!a:test", alice, c.evType, c.redacts, txn); err != nil || got != c.want {
				t.Errorf("after migration 015, %s redacting %q with t1 maps to %q, %v; want %q", c.evType, c.redacts, got, err, c.want)
			}
		}
		err := db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO roomserver_events (event_id, room_id, type, sender, depth, origin_server_ts, json, redacts, txn_device, txn_id, txn_redacts)
				VALUES ('$dup', '!a:test', 'm.room.redaction', $1, 3, 3, '{}', '$msg', 'DEV', 't1', '$msg')`, alice)
			return err
		})
		if !storage.IsUniqueViolation(err) {
			t.Errorf("a second redaction through /redact/$msg with t1 gave %v, want a unique violation", err)
		}
	})
}
