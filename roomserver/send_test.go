package roomserver

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// Security cases 1–4: size and JSON limits. Nothing is stored and no
// stream position is used by a refused event.
func TestSendLimits(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "11", Preset: PresetPublicChat}).RoomID
		before, _ := s.StreamPosition(ctx)
		rowsBefore := countRows(t, db, "roomserver_events")

		body := func(n int) string { return `{"body":"` + strings.Repeat("x", n) + `"}` }
		long := strings.Repeat("t", 256)
		cases := []struct {
			name     string
			typ      string
			stateKey *string
			content  string
			want     mxerr.Code
		}{
			{"event over 65536 bytes", "m.room.message", nil, body(65000), mxerr.TooLarge},
			{"content over 65536 bytes", "m.room.message", nil, body(70000), mxerr.TooLarge},
			{"type over 255 bytes", long, nil, `{}`, mxerr.BadJSON},
			{"state_key over 255 bytes", "m.room.topic", &long, `{}`, mxerr.BadJSON},
			{"2^53", "m.room.message", nil, `{"n":9007199254740992}`, mxerr.BadJSON},
			{"-2^53", "m.room.message", nil, `{"n":-9007199254740992}`, mxerr.BadJSON},
			{"float", "m.room.message", nil, `{"n":1.1}`, mxerr.BadJSON},
			{"exponent", "m.room.message", nil, `{"n":1e3}`, mxerr.BadJSON},
			{"minus zero", "m.room.message", nil, `{"n":-0}`, mxerr.BadJSON},
			{"NaN", "m.room.message", nil, `{"n":NaN}`, mxerr.BadJSON},
			{"duplicate keys", "m.room.message", nil, `{"body":"a","body":"b"}`, mxerr.BadJSON},
			{"lone surrogate", "m.room.message", nil, `{"body":"\ud800"}`, mxerr.BadJSON},
			{"invalid UTF-8", "m.room.message", nil, "{\"body\":\"\xff\"}", mxerr.BadJSON},
			{"not an object", "m.room.message", nil, `[1]`, mxerr.BadJSON},
		}
		for _, c := range cases {
			_, err := s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: alice, Type: c.typ, StateKey: c.stateKey, Content: json.RawMessage(c.content)})
			if !mxerr.Is(err, c.want) {
				t.Errorf("%s: got %v, want %s", c.name, err, c.want)
			}
			if c.want == mxerr.TooLarge {
				if e, _ := mxerr.As(err); e == nil || e.Status() != 413 {
					t.Errorf("%s: status is not 413", c.name)
				}
			}
		}
		// Largest safe integers and a message just under the limit pass.
		mustSend(t, s, room, alice, "m.room.message", nil, `{"n":9007199254740991,"m":-9007199254740991,"s":"\ud83d\ude00"}`)
		after, _ := s.StreamPosition(ctx)
		if got := countRows(t, db, "roomserver_events"); got != rowsBefore+1 {
			t.Fatalf("stored %d events for 1 accepted send", got-rowsBefore)
		}
		if db.Engine() == storage.SQLite && after != before+1 {
			t.Fatalf("stream moved from %d to %d for one accepted event", before, after)
		}
	})
}

// Security case 34: a retried send with the same device and txnId
// returns the first event, also after a restart.
func TestTxnIdempotencyAcrossReopen(t *testing.T) {
	for _, engine := range storagetest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			var opts storage.Options
			if engine == storage.SQLite {
				opts = storagetest.SQLiteOptions(t)
			} else {
				opts = storagetest.PostgresOptions(t)
			}
			db, err := storage.Open(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			s := newTestServer(t, db)
			room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID
			req := SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.message",
				Content: json.RawMessage(`{"body":"once"}`), TxnID: &TxnID{DeviceID: "DEV", TxnID: "t1"}}
			first, err := s.SendEvent(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			again, err := s.SendEvent(ctx, req)
			if err != nil || again.EventID != first.EventID {
				t.Fatalf("retry gave %v, %v; want %s", again, err, first.EventID)
			}
			db.Close()

			db, err = storage.Open(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			s = newTestServer(t, db)
			n := countRows(t, db, "roomserver_events")
			retry, err := s.SendEvent(ctx, req)
			if err != nil || retry.EventID != first.EventID || retry.StreamPos != first.StreamPos {
				t.Fatalf("retry after reopen gave %+v, %v; want %s", retry, err, first.EventID)
			}
			if got := countRows(t, db, "roomserver_events"); got != n {
				t.Fatalf("retry stored a duplicate")
			}
			// Another device with the same txnId is a different request.
			other := req
			other.TxnID = &TxnID{DeviceID: "DEV2", TxnID: "t1"}
			second, err := s.SendEvent(ctx, other)
			if err != nil || second.EventID == first.EventID {
				t.Fatalf("other device got %v, %v", second, err)
			}
		})
	}
}

// Many messages share one state snapshot: the state tables do not grow.
func TestSnapshotSharing(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID
		snaps, entries := countRows(t, db, "roomserver_snapshots"), countRows(t, db, "roomserver_snapshot_entries")
		for i := 0; i < 50; i++ {
			mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"hi"}`)
		}
		if s2, e2 := countRows(t, db, "roomserver_snapshots"), countRows(t, db, "roomserver_snapshot_entries"); s2 != snaps || e2 != entries {
			t.Fatalf("50 messages grew snapshots %d->%d, entries %d->%d", snaps, s2, entries, e2)
		}
		// A state change adds one delta row, not a copy of the state.
		mustSend(t, s, room, alice, "m.room.topic", ptr(""), `{"topic":"x"}`)
		if e3 := countRows(t, db, "roomserver_snapshot_entries"); e3 != entries+1 {
			t.Fatalf("one state event added %d snapshot entries", e3-entries)
		}
		// Long chains are cut by full snapshots and still read correctly.
		for i := 0; i < 2*maxSnapshotChain; i++ {
			mustSend(t, s, room, alice, "m.room.topic", ptr(""), `{"topic":"t`+itoa(int64(i))+`"}`)
		}
		if got := stateContent(t, s, alice, room, "m.room.topic", "")["topic"]; got != "t"+itoa(2*maxSnapshotChain-1) {
			t.Fatalf("topic = %v", got)
		}
		state, err := s.CurrentState(context.Background(), alice, room)
		if err != nil {
			t.Fatal(err)
		}
		var maxChain int
		if err := db.Reader().QueryRow(context.Background(), `SELECT MAX(chain_len) FROM roomserver_snapshots`).Scan(&maxChain); err != nil {
			t.Fatal(err)
		}
		if maxChain >= maxSnapshotChain {
			t.Fatalf("snapshot chain reached %d", maxChain)
		}
		full, err := loadSnapshot(context.Background(), db.Reader(), mustRoom(t, db, room).CurrentSnapshot)
		if err != nil {
			t.Fatal(err)
		}
		if len(full) != len(state) {
			t.Fatalf("snapshot has %d entries, current state %d", len(full), len(state))
		}
	})
}

func mustRoom(t testing.TB, db *storage.DB, roomID string) *roomRow {
	t.Helper()
	r, err := loadRoom(context.Background(), db.Reader(), roomID)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Security case 4, federation side: CheckPDUJSON refuses what another
// server could read differently, and nothing an honest server sends.
func TestCheckPDUJSON(t *testing.T) {
	refused := map[string]string{
		"duplicate top-level key":   `{"type":"m.room.message","type":"m.room.member","content":{}}`,
		"duplicate content key":     `{"type":"m.room.message","content":{"body":"a","body":"b"}}`,
		"nested duplicate":          `{"type":"m.room.message","content":{"x":{"k":1,"k":2}}}`,
		"case-variant top key":      `{"type":"m.room.message","Type":"m.room.member","content":{}}`,
		"lone case-variant top key": `{"Sender":"@a:b","type":"m.room.message","content":{}}`,
		"Membership":                `{"type":"m.room.member","content":{"Membership":"join"}}`,
		"membership and Membership": `{"type":"m.room.member","content":{"membership":"leave","Membership":"join"}}`,
		// U+017F folds to 's' in Go's (and encoding/json's) case folding.
		"long s in membership": `{"type":"m.room.member","content":{"member\u017fhip":"join"}}`,
		"JOIN_RULE":            `{"type":"m.room.join_rules","content":{"JOIN_RULE":"public"}}`,
		"Users in levels":      `{"type":"m.room.power_levels","content":{"Users":{"@a:b":100}}}`,
		"lone high surrogate":  `{"type":"m.room.message","content":{"body":"\ud800"}}`,
		"lone low surrogate":   `{"type":"m.room.message","content":{"body":"\udc00x"}}`,
		"invalid UTF-8":        "{\"type\":\"m.room.message\",\"content\":{\"body\":\"\xc3\x28\"}}",
		"trailing data":        `{"type":"m.room.message","content":{}} {}`,
	}
	for name, raw := range refused {
		if err := CheckPDUJSON([]byte(raw)); !mxerr.Is(err, mxerr.BadJSON) {
			t.Errorf("%s: got %v, want M_BAD_JSON", name, err)
		}
	}
	accepted := map[string]string{
		"plain":                       `{"type":"m.room.member","state_key":"@a:b","content":{"membership":"join","displayname":"A"}}`,
		"surrogate pair":              `{"type":"m.room.message","content":{"body":"\ud83d\ude00"}}`,
		"message keys differing case": `{"type":"m.room.message","content":{"a":1,"A":2,"Body":"x"}}`,
		"user IDs in levels":          `{"type":"m.room.power_levels","content":{"users":{"@a:b":1,"@A:b":2}}}`,
		"old-room numbers":            `{"type":"m.room.message","depth":3,"content":{"n":1.5,"m":9007199254740993}}`,
	}
	for name, raw := range accepted {
		if err := CheckPDUJSON([]byte(raw)); err != nil {
			t.Errorf("%s: refused: %v", name, err)
		}
	}
}

// A retried send returns the first event even when the same request
// would now be refused (the sender was banned in between), and stores
// nothing; a new transaction ID from the banned sender is refused.
// Concurrent retries of one transaction store one event and all get its
// ID. Spec: client-server-api, "Transaction identifiers".
func TestTxnRetryAfterBanAndConcurrent(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID
		if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		req := SendEventRequest{RoomID: room, Sender: bob, Type: "m.room.message",
			Content: json.RawMessage(`{"body":"before the ban"}`), TxnID: &TxnID{DeviceID: "BOBDEV", TxnID: "b1"}}
		first, err := s.SendEvent(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Ban(ctx, MembershipRequest{RoomID: room, Sender: alice, Target: bob}); err != nil {
			t.Fatal(err)
		}
		n := countRows(t, db, "roomserver_events")
		retry, err := s.SendEvent(ctx, req)
		if err != nil || retry.EventID != first.EventID || retry.StreamPos != first.StreamPos {
			t.Fatalf("retry after the ban gave %+v, %v; want %s", retry, err, first.EventID)
		}
		fresh := req
		fresh.TxnID = &TxnID{DeviceID: "BOBDEV", TxnID: "b2"}
		_, err = s.SendEvent(ctx, fresh)
		wantCode(t, err, mxerr.Forbidden)
		if got := countRows(t, db, "roomserver_events"); got != n {
			t.Fatalf("the retry or the refused send stored %d events", got-n)
		}

		// Eight concurrent requests with one transaction ID.
		same := SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.message",
			Content: json.RawMessage(`{"body":"once"}`), TxnID: &TxnID{DeviceID: "ADEV", TxnID: "c1"}}
		ids := make([]string, 8)
		errs := make([]error, 8)
		var wg sync.WaitGroup
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := s.SendEvent(ctx, same)
				if err == nil {
					ids[i] = r.EventID
				}
				errs[i] = err
			}()
		}
		wg.Wait()
		for i := range ids {
			if errs[i] != nil || ids[i] != ids[0] {
				t.Fatalf("concurrent retry %d gave %q, %v; want %q", i, ids[i], errs[i], ids[0])
			}
		}
		if got := countRows(t, db, "roomserver_events"); got != n+1 {
			t.Fatalf("8 requests with one transaction ID stored %d events", got-n)
		}
	})
}
