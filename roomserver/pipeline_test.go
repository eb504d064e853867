package roomserver

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// roomChain returns the room's accepted events in stream order with
// their prev_events and depth.
func roomChain(t *testing.T, db *storage.DB, roomID string) (ids []string, prevs [][]string, depths []int64) {
	t.Helper()
	rows, err := queryEventRows(context.Background(), db.Reader(), `SELECT `+eventColumns+` FROM roomserver_events
		WHERE room_id = $1 AND NOT rejected AND NOT soft_failed ORDER BY event_nid`, roomID)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		var ev struct {
			PrevEvents []string `json:"prev_events"`
		}
		if err := json.Unmarshal([]byte(r.JSON), &ev); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.EventID)
		prevs = append(prevs, ev.PrevEvents)
		depths = append(depths, r.Depth)
	}
	return ids, prevs, depths
}

// checkLinear requires every event after the first n to name exactly the
// event stored before it as its prev event, one level deeper, and the
// room's extremities to be the last event: what sends one at a time
// would have produced.
func checkLinear(t *testing.T, s *Server, db *storage.DB, roomID string, from int) []string {
	t.Helper()
	ids, prevs, depths := roomChain(t, db, roomID)
	for i := max(from, 1); i < len(ids); i++ {
		if !slices.Equal(prevs[i], []string{ids[i-1]}) || depths[i] != depths[i-1]+1 {
			t.Fatalf("event %d (%s): prev_events %v depth %d; want [%s] depth %d", i, ids[i], prevs[i], depths[i], ids[i-1], depths[i-1]+1)
		}
	}
	room, err := loadRoom(context.Background(), db.Reader(), roomID)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(room.Extremities, []string{ids[len(ids)-1]}) || room.MaxDepth != depths[len(depths)-1] {
		t.Fatalf("room extremities %v max depth %d; want [%s] %d", room.Extremities, room.MaxDepth, ids[len(ids)-1], depths[len(depths)-1])
	}
	return ids
}

// TestPipelinedSendsOneRoom: concurrent senders in one room get one
// linear chain, every acknowledged event is stored, and on SQLite the
// sends share commits (before pipelining each commit held at most one
// event of a room: the room lock was held across it).
func TestPipelinedSendsOneRoom(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID
		for _, u := range []string{bob, charlie} {
			if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: u}); err != nil {
				t.Fatal(err)
			}
		}
		before, _, _ := roomChain(t, db, room)
		commits := db.CommitCount() - db.WALRestarts()
		const senders, each = 8, 30
		acked := make([][]string, senders)
		var wg sync.WaitGroup
		for g := range senders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sender := []string{alice, bob, charlie}[g%3]
				for i := range each {
					req := SendEventRequest{RoomID: room, Sender: sender, Type: "m.room.message",
						Content: json.RawMessage(fmt.Sprintf(`{"body":"%d-%d"}`, g, i)),
						TxnID:   &TxnID{DeviceID: fmt.Sprintf("D%d", g), TxnID: fmt.Sprint(i)}}
					if g == 0 && i%10 == 5 {
						// A state event in the stream: nothing builds on it
						// before it commits.
						req.Type, req.StateKey, req.Content = "m.room.topic", ptr(""), json.RawMessage(fmt.Sprintf(`{"topic":"t%d"}`, i))
					}
					resp, err := s.SendEvent(ctx, req)
					if err != nil {
						t.Errorf("send %d-%d: %v", g, i, err)
						return
					}
					acked[g] = append(acked[g], resp.EventID)
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		ids := checkLinear(t, s, db, room, len(before))
		if got := len(ids) - len(before); got != senders*each {
			t.Fatalf("%d events stored, want %d", got, senders*each)
		}
		for _, list := range acked {
			for _, id := range list {
				if !slices.Contains(ids, id) {
					t.Fatalf("acknowledged event %s is not stored", id)
				}
			}
		}
		if got := stateContent(t, s, alice, room, "m.room.topic", "")["topic"]; got != "t25" {
			t.Fatalf("topic %v, want t25", got)
		}
		if db.Engine() == storage.SQLite {
			if n := db.CommitCount() - db.WALRestarts() - commits; n >= senders*each {
				t.Fatalf("%d commits for %d sends to one room: none shared", n, senders*each)
			}
		}
	})
}

// holdWriter occupies the SQLite writer until the returned function is
// called, so that the writes queued meanwhile are still in flight.
func holdWriter(t *testing.T, db *storage.DB) func() {
	t.Helper()
	running, release := make(chan struct{}), make(chan struct{})
	go func() {
		_ = db.Write(context.Background(), func(storage.Tx) error {
			close(running)
			<-release
			return nil
		})
	}()
	<-running
	return func() { close(release) }
}

// waitQueued waits until the room's last queued write is a new one (not
// old) still in flight.
func waitQueued(t *testing.T, s *Server, roomID string, old *roomTail) *roomTail {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if tail := s.tails.get(roomID); tail != nil && tail != old {
			select {
			case <-tail.write.Done():
			default:
				return tail
			}
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no send was queued")
	return nil
}

// TestPipelinedSendAfterFailedSend: a send built on a queued event whose
// write then fails (here a retried transaction ID, refused by its key) is
// not stored on top of it: it is rebuilt on the committed room, and the
// event that failed is stored nowhere.
func TestPipelinedSendAfterFailedSend(t *testing.T) {
	db := storagetest.OpenSQLite(t)
	ctx := context.Background()
	s := newTestServer(t, db)
	room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID
	first := SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.message",
		Content: json.RawMessage(`{"body":"one"}`), TxnID: &TxnID{DeviceID: "ADEV", TxnID: "t1"}}
	a, err := s.SendEvent(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	n := countRows(t, db, "roomserver_events")

	release := holdWriter(t, db)
	type result struct {
		resp *SendEventResponse
		err  error
	}
	retried, next := make(chan result, 1), make(chan result, 1)
	old := s.tails.get(room) // before the retry can replace it
	go func() {
		r, err := s.SendEvent(ctx, first) // a retry: builds a new event, its write is refused
		retried <- result{r, err}
	}()
	tail := waitQueued(t, s, room, old)
	if tail.room == nil {
		t.Fatal("a message's send left nothing to build on")
	}
	go func() {
		r, err := s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.message",
			Content: json.RawMessage(`{"body":"two"}`), TxnID: &TxnID{DeviceID: "ADEV", TxnID: "t2"}})
		next <- result{r, err}
	}()
	waitQueued(t, s, room, tail) // built on the retry's event
	release()

	r := <-retried
	if r.err != nil || r.resp.EventID != a.EventID {
		t.Fatalf("retry gave %+v, %v; want %s", r.resp, r.err, a.EventID)
	}
	b := <-next
	if b.err != nil {
		t.Fatalf("send after the failed one: %v", b.err)
	}
	ids := checkLinear(t, s, db, room, 0)
	if got := ids[len(ids)-2:]; !slices.Equal(got, []string{a.EventID, b.resp.EventID}) {
		t.Fatalf("last events %v, want [%s %s]", got, a.EventID, b.resp.EventID)
	}
	if got := countRows(t, db, "roomserver_events"); got != n+1 {
		t.Fatalf("%d events stored, want 1", got-n)
	}
}

// TestRoomAfterMatchesCommit: for events a send may build on before they
// commit, the room row roomAfter predicts is the one commit writes; for
// the others (state events, redactions) it predicts nothing.
func TestRoomAfterMatchesCommit(t *testing.T) {
	db := storagetest.OpenSQLite(t)
	ctx := context.Background()
	s := newTestServer(t, db)
	room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID
	msg := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"hi"}`)
	cases := []struct {
		typ, content string
		stateKey     *string
		redacts      string
		pipelined    bool
	}{
		{"m.room.message", `{"body":"x"}`, nil, "", true},
		{"m.reaction", `{"m.relates_to":{"rel_type":"m.annotation","event_id":"` + msg + `","key":"+"}}`, nil, "", true},
		{"m.room.encrypted", `{"algorithm":"m.megolm.v1.aes-sha2","ciphertext":"x"}`, nil, "", true},
		{"m.room.topic", `{"topic":"x"}`, ptr(""), "", false},
		{"m.room.redaction", `{}`, nil, msg, false},
	}
	for _, c := range cases {
		loaded, err := loadRoom(ctx, db.Reader(), room)
		if err != nil {
			t.Fatal(err)
		}
		proto := &gomatrixserverlib.ProtoEvent{SenderID: alice, RoomID: room, Type: c.typ, StateKey: c.stateKey, Content: []byte(c.content)}
		p, err := s.buildAndPrepare(ctx, loaded, proto, c.redacts)
		if err != nil {
			t.Fatal(err)
		}
		next := s.roomAfter(p)
		if (next != nil) != c.pipelined {
			t.Fatalf("%s: roomAfter %+v, want pipelined=%v", c.typ, next, c.pipelined)
		}
		if err := db.Write(ctx, func(tx storage.Tx) error { return s.commit(ctx, tx, p) }); err != nil {
			t.Fatal(err)
		}
		stored, err := loadRoom(ctx, db.Reader(), room)
		if err != nil {
			t.Fatal(err)
		}
		if next != nil && (!sameRoomRow(next, stored) || !sameRoomRow(next, p.room)) {
			t.Fatalf("%s: predicted %+v, stored %+v", c.typ, next, stored)
		}
	}
}

// TestSendOnKeptRoomRowSeesOtherWriters: a send builds on the room row
// its room's previous send left, without reading the room; when another
// writer (here a second Server on the same database, as another process
// would be) has changed the room since, the send's write refuses that
// row and the send is built again on the stored room.
func TestSendOnKeptRoomRowSeesOtherWriters(t *testing.T) {
	db := storagetest.OpenSQLite(t)
	s := newTestServer(t, db)
	other := newTestServer(t, db)
	room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID
	mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"one"}`)
	if tail := s.tails.get(room); tail == nil || tail.room == nil || !tail.write.Committed() {
		t.Fatalf("no kept room row after a message: %+v", tail)
	}
	mustSend(t, other, room, alice, "m.room.message", nil, `{"body":"from elsewhere"}`)
	mustSend(t, other, room, alice, "m.room.topic", ptr(""), `{"topic":"elsewhere"}`)
	mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"two"}`)
	ids := checkLinear(t, s, db, room, 0)
	if len(ids) < 3 {
		t.Fatalf("%d events", len(ids))
	}
	if got := stateContent(t, s, alice, room, "m.room.topic", "")["topic"]; got != "elsewhere" {
		t.Fatalf("topic %v, want elsewhere", got)
	}
}
