package clientapi_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// TestRoomsTxnIdempotency: a retried send with the same txnId from the
// same device returns the first event; the sender's device sees its
// transaction ID in unsigned, nobody else does.
// Spec: client-server-api, "Transaction identifiers".
func TestRoomsTxnIdempotency(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "create", err)
		_, err = bob.JoinRoomByID(bg, room.RoomID)
		ok(t, "join", err)

		content := map[string]any{"msgtype": "m.text", "body": "once"}
		first, err := alice.SendMessageEvent(bg, room.RoomID, event.EventMessage, content, mautrix.ReqSendEvent{TransactionID: "txn1"})
		ok(t, "send", err)
		again, err := alice.SendMessageEvent(bg, room.RoomID, event.EventMessage, content, mautrix.ReqSendEvent{TransactionID: "txn1"})
		ok(t, "resend", err)
		if again.EventID != first.EventID {
			t.Fatalf("retry made a new event: %s then %s", first.EventID, again.EventID)
		}
		// The same txnId from another user is another transaction.
		other, err := bob.SendMessageEvent(bg, room.RoomID, event.EventMessage, content, mautrix.ReqSendEvent{TransactionID: "txn1"})
		ok(t, "bob send", err)
		if other.EventID == first.EventID {
			t.Fatal("two users' transactions were merged")
		}
		msgs, err := alice.Messages(bg, room.RoomID, "", "", mautrix.DirectionBackward, nil, 10)
		ok(t, "messages", err)
		count := 0
		for _, e := range msgs.Chunk {
			if e.Type == event.EventMessage {
				count++
			}
		}
		if count != 2 {
			t.Fatalf("%d messages in the room, want 2", count)
		}

		mine, err := alice.GetEvent(bg, room.RoomID, first.EventID)
		ok(t, "get own event", err)
		if mine.Unsigned.TransactionID != "txn1" {
			t.Fatalf("own event unsigned = %+v", mine.Unsigned)
		}
		if mine.Unsigned.Age <= 0 && mine.Unsigned.Age != 0 {
			t.Fatalf("age = %d", mine.Unsigned.Age)
		}
		theirs, err := bob.GetEvent(bg, room.RoomID, first.EventID)
		ok(t, "get other's event", err)
		if theirs.Unsigned.TransactionID != "" {
			t.Fatal("another user sees the transaction ID")
		}
		// Federation-only keys are not in the client format.
		status, raw := callRaw(t, srv, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room.RoomID.String())+"/event/"+url.PathEscape(first.EventID.String()), bob.token, "")
		if status != 200 {
			t.Fatalf("GET event: %d %v", status, raw)
		}
		for _, k := range []string{"auth_events", "prev_events", "hashes", "signatures", "depth"} {
			if _, ok := raw[k]; ok {
				t.Fatalf("client event has %s: %v", k, raw)
			}
		}
		if raw["event_id"] != first.EventID.String() || raw["room_id"] != room.RoomID.String() {
			t.Fatalf("client event lacks IDs: %v", raw)
		}
	})
}

// TestRoomsState covers state reads and writes: format=event, the
// empty state key with and without the trailing slash, unchanged state
// not re-sent, and power levels.
func TestRoomsState(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "create", err)
		_, err = bob.JoinRoomByID(bg, room.RoomID)
		ok(t, "join", err)
		r := "/_matrix/client/v3/rooms/" + url.PathEscape(room.RoomID.String())

		first, err := alice.SendStateEvent(bg, room.RoomID, event.StateTopic, "", map[string]any{"topic": "one"})
		ok(t, "set topic", err)
		same, err := alice.SendStateEvent(bg, room.RoomID, event.StateTopic, "", map[string]any{"topic": "one"})
		ok(t, "set same topic", err)
		if same.EventID != first.EventID {
			t.Fatal("unchanged state made a new event")
		}
		runSteps(t, srv, []step{
			{name: "no trailing slash", method: "PUT", path: r + "/state/m.room.name", token: alice.token, body: `{"name": "N1"}`, wantStatus: 200},
			{name: "trailing slash", method: "GET", path: r + "/state/m.room.name/", token: bob.token, wantStatus: 200, wantBody: `{"name": "N1"}`},
			{name: "custom state key with slash", method: "PUT", path: r + "/state/com.example.s/a%2Fb", token: alice.token, body: `{"v": 1}`, wantStatus: 200},
			{name: "read it back", method: "GET", path: r + "/state/com.example.s/a%2Fb", token: bob.token, wantStatus: 200, wantBody: `{"v": 1}`},
			{name: "missing state", method: "GET", path: r + "/state/com.example.none/", token: bob.token, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "bad format", method: "GET", path: r + "/state/m.room.name?format=xml", token: bob.token, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "bob lacks power for the name", method: "PUT", path: r + "/state/m.room.name", token: bob.token, body: `{"name": "mine"}`, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "bob lacks power for power levels", method: "PUT", path: r + "/state/m.room.power_levels", token: bob.token, body: `{"users": {"@bob:localhost": 100}}`, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "state body not an object", method: "PUT", path: r + "/state/m.room.name", token: alice.token, body: `["x"]`, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
		})
		ev, err := bob.FullStateEvent(bg, room.RoomID, event.StateRoomName, "")
		ok(t, "format=event", err)
		if ev.Sender != alice.id || ev.ID == "" || ev.Content.Raw["name"] != "N1" {
			t.Fatalf("format=event = %+v", ev)
		}
		state, err := bob.State(bg, room.RoomID)
		ok(t, "state", err)
		if state[event.StateTopic][""] == nil || state[event.StateCreate][""] == nil || len(state[event.StateMember]) != 2 {
			t.Fatalf("state = %v", state)
		}
	})
}

// TestRoomsRedaction: a redacted event loses its content and carries the
// redaction in unsigned.redacted_because; only the sender or a moderator
// may redact.
func TestRoomsRedaction(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "create", err)
		_, err = bob.JoinRoomByID(bg, room.RoomID)
		ok(t, "join", err)
		msg, err := alice.SendText(bg, room.RoomID, "oops")
		ok(t, "send", err)
		_, err = bob.RedactEvent(bg, room.RoomID, msg.EventID)
		// Bob's redaction of alice's message is allowed into the room
		// only with redact power; the auth rules refuse it.
		wantErrcode(t, "bob redacts alice", err, 403, "M_FORBIDDEN")

		red, err := alice.RedactEvent(bg, room.RoomID, msg.EventID, mautrix.ReqRedact{Reason: "typo", TxnID: "r1"})
		ok(t, "redact", err)
		again, err := alice.RedactEvent(bg, room.RoomID, msg.EventID, mautrix.ReqRedact{Reason: "typo", TxnID: "r1"})
		ok(t, "redact retry", err)
		if again.EventID != red.EventID {
			t.Fatal("redaction retry made a new event")
		}
		got, err := bob.GetEvent(bg, room.RoomID, msg.EventID)
		ok(t, "get redacted", err)
		if len(got.Content.Raw) != 0 {
			t.Fatalf("redacted content = %v", got.Content.Raw)
		}
		rb := got.Unsigned.RedactedBecause
		if rb == nil || rb.ID != red.EventID || rb.Sender != alice.id || rb.Content.Raw["reason"] != "typo" {
			t.Fatalf("redacted_because = %+v", rb)
		}
	})
}

// TestRoomsPagination sends 500 messages and pages through them in both
// directions with the returned tokens.
// Spec: client-server-api, "GET /_matrix/client/v3/rooms/{roomId}/messages".
func TestRoomsPagination(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		ok(t, "create", err)
		const n = 500
		sent := make([]id.EventID, n)
		for i := range n {
			resp, err := alice.SendText(bg, room.RoomID, fmt.Sprint(i))
			ok(t, "send", err)
			sent[i] = resp.EventID
		}
		onlyMessages := &mautrix.FilterPart{Types: []event.Type{event.EventMessage}}

		// Backward from the end, 60 at a time.
		var back []id.EventID
		from, pages := "", 0
		for {
			page, err := alice.Messages(bg, room.RoomID, from, "", mautrix.DirectionBackward, onlyMessages, 60)
			ok(t, "messages b", err)
			pages++
			for _, e := range page.Chunk {
				back = append(back, e.ID)
			}
			if from != "" && page.Start != from {
				t.Fatalf("start %q is not from %q", page.Start, from)
			}
			if page.End == "" {
				break
			}
			from = page.End
			if pages > 20 {
				t.Fatal("pagination does not end")
			}
		}
		if len(back) != n {
			t.Fatalf("paged back through %d messages, want %d", len(back), n)
		}
		for i, e := range back {
			if e != sent[n-1-i] {
				t.Fatalf("backward[%d] = %s, want %s", i, e, sent[n-1-i])
			}
		}

		// Forward from the start, 100 at a time, without a filter: the
		// room's creation events come first.
		var fwd []*event.Event
		from = ""
		for pages = 0; ; pages++ {
			page, err := alice.Messages(bg, room.RoomID, from, "", mautrix.DirectionForward, nil, 100)
			ok(t, "messages f", err)
			fwd = append(fwd, page.Chunk...)
			if page.End == "" {
				break
			}
			from = page.End
			if pages > 20 {
				t.Fatal("pagination does not end")
			}
		}
		if fwd[0].Type != event.StateCreate {
			t.Fatalf("first event forward is %s", fwd[0].Type)
		}
		var msgs []id.EventID
		for _, e := range fwd {
			if e.Type == event.EventMessage {
				msgs = append(msgs, e.ID)
			}
		}
		if len(msgs) != n || msgs[0] != sent[0] || msgs[n-1] != sent[n-1] {
			t.Fatalf("forward: %d messages, first %s last %s", len(msgs), msgs[0], msgs[len(msgs)-1])
		}

		// `to` stops a page: from before the 99th message back to the 90th
		// (the context of the 90th starts before the 89th).
		ctx, err := alice.Context(bg, room.RoomID, sent[100], nil, 2)
		ok(t, "context", err)
		if ctx.Event.ID != sent[100] || len(ctx.EventsBefore) != 1 || ctx.EventsBefore[0].ID != sent[99] ||
			len(ctx.EventsAfter) != 1 || ctx.EventsAfter[0].ID != sent[101] || len(ctx.State) == 0 {
			t.Fatalf("context = before %v, after %v", ctx.EventsBefore, ctx.EventsAfter)
		}
		stop, err := alice.Context(bg, room.RoomID, sent[90], nil, 2)
		ok(t, "context at 90", err)
		page, err := alice.Messages(bg, room.RoomID, ctx.Start, stop.Start, mautrix.DirectionBackward, nil, 50)
		ok(t, "messages with to", err)
		if len(page.Chunk) != 9 || page.Chunk[0].ID != sent[98] || page.Chunk[8].ID != sent[90] {
			t.Fatalf("page to 90: %d events", len(page.Chunk))
		}

		// timestamp_to_event finds the first message from the time just
		// before it was sent, and the last before now.
		first, err := alice.GetEvent(bg, room.RoomID, sent[0])
		ok(t, "get first", err)
		ts, err := alice.TimestampToEvent(bg, room.RoomID, time.UnixMilli(first.Timestamp), mautrix.DirectionForward)
		ok(t, "timestamp_to_event f", err)
		if ts.Timestamp.UnixMilli() < first.Timestamp {
			t.Fatalf("forward lookup went back in time")
		}
		ts, err = alice.TimestampToEvent(bg, room.RoomID, time.Now().Add(time.Hour), mautrix.DirectionBackward)
		ok(t, "timestamp_to_event b", err)
		if ts.EventID != sent[n-1] {
			t.Fatalf("latest event by timestamp = %s, want %s", ts.EventID, sent[n-1])
		}
		_, err = alice.TimestampToEvent(bg, room.RoomID, time.Now().Add(time.Hour), mautrix.DirectionForward)
		wantErrcode(t, "nothing after the future", err, 404, "M_NOT_FOUND")
	})
}

// TestRoomsFailures: the error answers the spec gives.
func TestRoomsFailures(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomAliasName: "taken"})
		ok(t, "create", err)
		r := "/_matrix/client/v3/rooms/" + url.PathEscape(room.RoomID.String())
		big := strings.Repeat("x", 70000)

		_, err = bob.SendText(bg, room.RoomID, "let me in")
		wantErrcode(t, "send when not in room", err, 403, "M_FORBIDDEN")
		_, err = alice.SendText(bg, "!nowhere:localhost", "hello?")
		wantErrcode(t, "send to unknown room", err, 404, "M_NOT_FOUND")
		_, err = alice.JoinRoomByID(bg, "!nowhere:elsewhere.example")
		wantErrcode(t, "join a room this server is not in", err, 404, "M_NOT_FOUND")
		_, err = alice.JoinRoom(bg, "#nothing:localhost", nil)
		wantErrcode(t, "join an unknown alias", err, 404, "M_NOT_FOUND")
		_, err = alice.CreateRoom(bg, &mautrix.ReqCreateRoom{RoomAliasName: "taken"})
		wantErrcode(t, "alias in use", err, 400, "M_ROOM_IN_USE")
		_, err = alice.CreateRoom(bg, &mautrix.ReqCreateRoom{RoomVersion: "999"})
		wantErrcode(t, "unsupported version", err, 400, "M_UNSUPPORTED_ROOM_VERSION")
		_, err = bob.Messages(bg, room.RoomID, "", "", mautrix.DirectionBackward, nil, 10)
		wantErrcode(t, "messages of a room never joined", err, 403, "M_FORBIDDEN")
		_, err = bob.GetEvent(bg, room.RoomID, "$nope")
		wantErrcode(t, "unknown event", err, 404, "M_NOT_FOUND")

		runSteps(t, srv, []step{
			{name: "bad JSON", method: "PUT", path: r + "/send/m.room.message/t1", token: alice.token, body: `{"body": `, wantStatus: 400, wantErrcode: "M_NOT_JSON"},
			{name: "float in content", method: "PUT", path: r + "/send/m.room.message/t2", token: alice.token, body: `{"n": 1.5}`, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
			{name: "oversized event", method: "PUT", path: r + "/send/m.room.message/t3", token: alice.token, body: `{"body": "` + big + `"}`, wantStatus: 413, wantErrcode: "M_TOO_LARGE"},
			{name: "createRoom bad JSON", method: "POST", path: "/_matrix/client/v3/createRoom", token: alice.token, body: `{"name": 5}`, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
			{name: "initial state auth failure", method: "POST", path: "/_matrix/client/v3/createRoom", token: alice.token,
				body:       `{"power_level_content_override": {"users": {"@alice:localhost": 0}, "state_default": 50, "events": {}}, "initial_state": [{"type": "m.room.name", "content": {"name": "x"}}]}`,
				wantStatus: 400, wantErrcode: "M_INVALID_ROOM_STATE"},
			{name: "invite without user_id", method: "POST", path: r + "/invite", token: alice.token, body: `{}`, wantStatus: 400, wantErrcode: "M_MISSING_PARAM"},
			{name: "messages without dir", method: "GET", path: r + "/messages", token: alice.token, wantStatus: 400, wantErrcode: "M_MISSING_PARAM"},
			{name: "messages bad token", method: "GET", path: r + "/messages?dir=b&from=garbage", token: alice.token, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "messages bad filter", method: "GET", path: r + "/messages?dir=b&filter=" + url.QueryEscape(`{"limit": 0}`), token: alice.token, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
			{name: "bad room ID", method: "GET", path: "/_matrix/client/v3/rooms/nope/state", token: alice.token, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "joined_members not joined", method: "GET", path: r + "/joined_members", token: bob.token, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "no token", method: "POST", path: "/_matrix/client/v3/createRoom", body: `{}`, wantStatus: 401, wantErrcode: "M_MISSING_TOKEN"},
		})
		_ = http.StatusOK
	})
}

// TestRoomsMessageRateLimit: sends beyond the message bucket get 429.
func TestRoomsMessageRateLimit(t *testing.T) {
	limited := func(c *config.Config) {
		c.ClientAPI.RateLimits.Enabled = true
		c.ClientAPI.RateLimits.Message = config.RateLimit{PerSecond: 0.01, Burst: 3}
	}
	srv := testserver.Start(t, "sqlite", limited)
	alice := newUser(t, srv, "alice")
	room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	ok(t, "create", err)
	for i := range 3 {
		_, err := alice.SendText(bg, room.RoomID, fmt.Sprint(i))
		ok(t, "send within burst", err)
	}
	_, err = alice.SendText(bg, room.RoomID, "one too many")
	wantErrcode(t, "over the limit", err, 429, "M_LIMIT_EXCEEDED")
}

// TestEventSendsAnnounceTheirWrite: a message, a state event and a
// redaction each announce their write to the SQLite writer before they
// build it (storage.DB.ExpectWrite), so that a commit about to happen can
// wait for it; a read announces nothing.
func TestEventSendsAnnounceTheirWrite(t *testing.T) {
	srv := testserver.Start(t, storage.SQLite, nil)
	alice := newUser(t, srv, "alice")
	room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	ok(t, "create", err)
	db := srv.HS.DB
	step := func(what string, want int64, fn func() error) {
		t.Helper()
		before := db.AnnouncedWrites()
		ok(t, what, fn())
		if got := db.AnnouncedWrites() - before; got != want {
			t.Fatalf("%s announced %d writes, want %d", what, got, want)
		}
	}
	var sent *mautrix.RespSendEvent
	step("send", 1, func() (err error) {
		sent, err = alice.SendMessageEvent(bg, room.RoomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "hi"})
		return err
	})
	step("state", 1, func() error {
		_, err := alice.SendStateEvent(bg, room.RoomID, event.StateTopic, "", map[string]any{"topic": "t"})
		return err
	})
	step("redact", 1, func() error {
		_, err := alice.RedactEvent(bg, room.RoomID, sent.EventID)
		return err
	})
	step("read", 0, func() error {
		_, err := alice.Messages(bg, room.RoomID, "", "", mautrix.DirectionBackward, nil, 10)
		return err
	})
}

// liveAtAnswer records how many announced writes a held commit would
// wait for (storage.DB.LiveAnnouncements) when the handler starts its
// answer.
type liveAtAnswer struct {
	*httptest.ResponseRecorder
	db       *storage.DB
	live     int
	answered bool
}

func (w *liveAtAnswer) WriteHeader(code int) {
	if !w.answered {
		w.answered, w.live = true, w.db.LiveAnnouncements()
	}
	w.ResponseRecorder.WriteHeader(code)
}

func (w *liveAtAnswer) Write(b []byte) (int, error) {
	if !w.answered {
		w.answered, w.live = true, w.db.LiveAnnouncements()
	}
	return w.ResponseRecorder.Write(b)
}

// TestSendsWritingNoEventEndAnnouncement: a request that learns it will
// write no room event ends its announcement (storage.DB.ExpectWrite)
// before it answers, so that no commit is held for it meanwhile: a
// re-sent state event equal to the current one (answered with the
// existing event), and a send or state event with a delay (MSC4140: it
// writes a delayed event, not a room event).
func TestSendsWritingNoEventEndAnnouncement(t *testing.T) {
	srv := testserver.Start(t, storage.SQLite, nil)
	alice := newUser(t, srv, "alice")
	room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	ok(t, "create", err)
	sent, err := alice.SendStateEvent(bg, room.RoomID, event.StateTopic, "", map[string]any{"topic": "same"})
	ok(t, "topic", err)
	db := srv.HS.DB
	r := "/_matrix/client/v3/rooms/" + url.PathEscape(room.RoomID.String())
	for _, c := range []struct{ name, path, body, want string }{
		{"same state again", r + "/state/m.room.topic/", `{"topic": "same"}`, `"event_id":"` + sent.EventID.String() + `"`},
		{"delayed send", r + "/send/m.room.message/d1?org.matrix.msc4140.delay=60000", `{"msgtype": "m.text", "body": "later"}`, `"delay_id"`},
		{"delayed state", r + "/state/m.room.topic/?org.matrix.msc4140.delay=60000", `{"topic": "later"}`, `"delay_id"`},
	} {
		req := httptest.NewRequest(http.MethodPut, c.path, strings.NewReader(c.body))
		req.Header.Set("Authorization", "Bearer "+alice.token)
		req.Header.Set("Content-Type", "application/json")
		announced := db.AnnouncedWrites()
		w := &liveAtAnswer{ResponseRecorder: httptest.NewRecorder(), db: db}
		srv.HS.Handler().ServeHTTP(w, req)
		if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), c.want) {
			t.Fatalf("%s: %d %s, want 200 with %s", c.name, w.Code, w.Body, c.want)
		}
		if n := db.AnnouncedWrites() - announced; n != 1 {
			t.Fatalf("%s announced %d writes, want 1", c.name, n)
		}
		if w.live != 0 {
			t.Errorf("%s: %d live announcements when it answered, want 0", c.name, w.live)
		}
		if n := db.LiveAnnouncements(); n != 0 {
			t.Errorf("%s: %d live announcements after it ended, want 0", c.name, n)
		}
	}
}
