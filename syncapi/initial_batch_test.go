package syncapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// TestInitialSyncBatchedMatchesPerRoom: an initial (or full_state) sync
// reads its joined rooms all at once (initial_batch.go); its response
// must be byte for byte the one the per-room reads give, for users with
// every kind of membership (joined, invited, left, banned, forgotten),
// rooms under each history visibility, events hidden from some of them,
// transaction IDs, state in the timeline (prev_content), bundled
// aggregations, ignored senders, room account data, and the filters
// that shape the rooms section (lazy-loading members, timeline limits
// 0, 3 and default, rooms and not_rooms, types, include_leave, the
// federation format, state_after, full_state). A batched read that leaked
// a room's events into another, dropped a room, or skipped a visibility
// check would show here as a difference.
func TestInitialSyncBatchedMatchesPerRoom(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		rs := srv.HS.Rooms
		send := func(u *user, roomID, body string, txn string) string {
			t.Helper()
			content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": body})
			req := roomserver.SendEventRequest{RoomID: roomID, Sender: u.id, Type: "m.room.message", Content: content}
			if txn != "" {
				req.TxnID = &roomserver.TxnID{DeviceID: string(u.client.DeviceID), TxnID: txn}
			}
			resp, err := rs.SendEvent(ctx, req)
			if err != nil {
				t.Fatalf("sending: %v", err)
			}
			return resp.EventID
		}
		sendJSON := func(u *user, roomID, eventType, content string) string {
			t.Helper()
			resp, err := rs.SendEvent(ctx, roomserver.SendEventRequest{RoomID: roomID, Sender: u.id, Type: eventType, Content: json.RawMessage(content)})
			if err != nil {
				t.Fatalf("sending %s: %v", eventType, err)
			}
			return resp.EventID
		}
		hv := func(u *user, roomID, visibility string) {
			sendState(t, srv, u, roomID, "m.room.history_visibility", "", `{"history_visibility":"`+visibility+`"}`)
		}
		// 1. alice's own room, messages with transaction IDs, room
		// account data, more messages than the default timeline holds.
		own := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat", Name: "own"})
		for i := range 12 {
			send(alice, own, fmt.Sprint("own ", i), fmt.Sprint("txn", i))
		}
		if err := alice.client.SetRoomAccountData(ctx, id.RoomID(own), "org.example.tag", map[string]any{"n": 1}); err != nil {
			t.Fatal(err)
		}
		// 2. bob's room under "joined": what came before alice joined is
		// hidden from her; a name change in the timeline (prev_content).
		joinedOnly := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "public_chat", Name: "joined only"})
		hv(bob, joinedOnly, "joined")
		send(bob, joinedOnly, "before alice", "")
		membership(t, srv, "join", alice, alice.id, joinedOnly)
		send(bob, joinedOnly, "after alice", "")
		sendState(t, srv, bob, joinedOnly, "m.room.name", "", `{"name":"renamed"}`)
		// 3. "invited": alice invited, then joins; carol joins and leaves.
		invited := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "public_chat"})
		hv(bob, invited, "invited")
		send(bob, invited, "before invite", "")
		membership(t, srv, "invite", bob, alice.id, invited)
		send(bob, invited, "while invited", "")
		membership(t, srv, "join", alice, alice.id, invited)
		membership(t, srv, "join", carol, carol.id, invited)
		send(carol, invited, "carol was here", "")
		membership(t, srv, "leave", carol, carol.id, invited)
		// 4. world_readable; alice joins late; a thread and an edit
		// behind a limited timeline (bundled aggregations).
		readable := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "public_chat"})
		hv(bob, readable, "world_readable")
		for i := range 4 {
			send(bob, readable, fmt.Sprint("earlier ", i), "")
		}
		membership(t, srv, "join", carol, carol.id, readable)
		for i := range 4 {
			send(carol, readable, fmt.Sprint("carol ", i), "")
		}
		root := send(bob, readable, "thread root", "")
		edited := send(bob, readable, "typo", "")
		membership(t, srv, "join", alice, alice.id, readable)
		sendJSON(alice, readable, "m.room.message", `{"msgtype":"m.text","body":"in thread","m.relates_to":{"rel_type":"m.thread","event_id":"`+root+`"}}`)
		edit := func(target, body string) string {
			return sendJSON(bob, readable, "m.room.message", `{"msgtype":"m.text","body":"* `+body+`","m.new_content":{"msgtype":"m.text","body":"`+body+`"},"m.relates_to":{"rel_type":"m.replace","event_id":"`+target+`"}}`)
		}
		fixed := edit(edited, "fixed")
		sendJSON(bob, readable, "m.room.message", `{"msgtype":"m.text","body":"see above","m.relates_to":{"rel_type":"m.reference","event_id":"`+edited+`"}}`)
		sendJSON(bob, readable, "m.reaction", `{"m.relates_to":{"rel_type":"m.annotation","event_id":"`+root+`","key":"👍"}}`)
		// An edit of the edit (an edit's own edits are not bundled) and
		// a later edit, redacted (its relation is gone with its content).
		edit(fixed, "fixed again")
		redacted := edit(edited, "redacted later")
		if _, err := rs.SendEvent(ctx, roomserver.SendEventRequest{RoomID: readable, Sender: bob.id, Type: "m.room.redaction",
			Redacts: redacted, Content: json.RawMessage(`{}`)}); err != nil {
			t.Fatalf("redacting: %v", err)
		}
		// 5. alice invited and not answering.
		invite := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "private_chat", Name: "invite"})
		membership(t, srv, "invite", bob, alice.id, invite)
		// 6. alice joined then left; 7. alice banned.
		left := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "public_chat", Name: "left"})
		membership(t, srv, "join", alice, alice.id, left)
		send(alice, left, "bye", "")
		membership(t, srv, "leave", alice, alice.id, left)
		send(bob, left, "after alice left", "")
		banned := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "public_chat", Name: "banned"})
		membership(t, srv, "join", alice, alice.id, banned)
		membership(t, srv, "join", carol, carol.id, banned)
		membership(t, srv, "ban", bob, alice.id, banned)
		send(bob, banned, "after the ban", "")
		// 8. a room with only state and one joined member.
		quiet := createRoom(t, srv, carol, roomserver.CreateRoomRequest{Preset: "private_chat"})
		membership(t, srv, "invite", carol, bob.id, quiet)
		// 9. carol's messages alice ignores, in a room both are in.
		ignoring := createRoom(t, srv, carol, roomserver.CreateRoomRequest{Preset: "public_chat", Name: "ignoring"})
		membership(t, srv, "join", alice, alice.id, ignoring)
		send(carol, ignoring, "ignored", "")
		membership(t, srv, "join", bob, bob.id, ignoring)
		send(bob, ignoring, "bob in the room", "")
		// 10. a crowd: more members than a summary names, some gone.
		crowd := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "public_chat"})
		for i := range 7 {
			u := newUser(t, srv, fmt.Sprint("member", i))
			membership(t, srv, "join", u, u.id, crowd)
			if i%3 == 1 {
				membership(t, srv, "leave", u, u.id, crowd)
			}
		}
		membership(t, srv, "join", alice, alice.id, crowd)
		membership(t, srv, "invite", bob, carol.id, crowd)
		// Enough rooms that the batched reads split into several queries.
		for i := range 105 {
			r := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "public_chat", Name: fmt.Sprint("bulk ", i)})
			membership(t, srv, "join", alice, alice.id, r)
			send(bob, r, fmt.Sprint("bulk message ", i), "")
			if i%10 == 0 {
				membership(t, srv, "join", carol, carol.id, r)
				send(carol, r, "carol in bulk", "")
			}
		}
		// carol's messages before the ignore list are hidden all the same.
		if err := alice.client.SetAccountData(ctx, "m.ignored_user_list", map[string]any{
			"ignored_users": map[string]any{carol.id: map[string]any{}}}); err != nil {
			t.Fatal(err)
		}
		if err := rs.Forget(ctx, carol.id, invited); err != nil {
			t.Fatal(err)
		}
		sync := srv.HS.Sync
		now := time.Now()
		users := []*user{alice, bob, carol}
		// A token for the full_state syncs, with news after it.
		tokens := map[string]string{}
		for _, u := range users {
			body, err := sync.SyncJSON(ctx, u.id, string(u.client.DeviceID), "", now, false)
			if err != nil {
				t.Fatal(err)
			}
			var resp struct {
				NextBatch string `json:"next_batch"`
			}
			if err := json.Unmarshal(body, &resp); err != nil {
				t.Fatal(err)
			}
			tokens[u.id] = resp.NextBatch
		}
		send(bob, readable, "after the tokens", "")
		filters := []string{
			``,
			`{"room":{"timeline":{"limit":3}}}`,
			`{"room":{"timeline":{"limit":0}}}`,
			`{"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true}}}`,
			`{"room":{"state":{"lazy_load_members":true,"include_redundant_members":true}}}`,
			`{"room":{"not_rooms":["` + joinedOnly + `","` + readable + `"]}}`,
			`{"room":{"rooms":["` + own + `","` + invited + `","` + left + `","` + banned + `"],"include_leave":true}}`,
			`{"room":{"include_leave":true,"timeline":{"limit":2}}}`,
			`{"room":{"timeline":{"types":["m.room.message"],"not_senders":["` + bob.id + `"]},"state":{"types":["m.room.name","m.room.member"]}}}`,
			`{"room":{"timeline":{"unread_thread_notifications":true}}}`,
			`{"event_format":"federation","room":{"timeline":{"limit":4}}}`,
			`{"room":{"account_data":{"not_types":["*"]},"ephemeral":{"not_types":["*"]}}}`,
		}
		for _, u := range users {
			for fi, filter := range filters {
				extras := []string{""}
				if fi < 4 {
					extras = append(extras, "use_state_after=true", "org.matrix.msc4222.use_state_after=true",
						"full_state=true&since="+url.QueryEscape(tokens[u.id]))
				}
				for _, extra := range extras {
					q := extra
					if filter != "" {
						q += "&filter=" + url.QueryEscape(filter)
					}
					perRoom, err := sync.SyncJSON(ctx, u.id, string(u.client.DeviceID), q, now, true)
					if err != nil {
						t.Fatal(err)
					}
					batched, err := sync.SyncJSON(ctx, u.id, string(u.client.DeviceID), q, now, false)
					if err != nil {
						t.Fatal(err)
					}
					compareSyncBodies(t, fmt.Sprintf("%s filter %d %q", u.id, fi, extra), perRoom, batched)
					if extra != "" && extra != "use_state_after=true" {
						continue
					}
					// The timelines read in concurrent parts of two
					// rooms: merged, the parts give the same response.
					sync.SplitTimelines(2)
					split, err := sync.SyncJSON(ctx, u.id, string(u.client.DeviceID), q, now, false)
					sync.SplitTimelines(0)
					if err != nil {
						t.Fatal(err)
					}
					compareSyncBodies(t, fmt.Sprintf("%s filter %d %q, timelines split", u.id, fi, extra), perRoom, split)
				}
			}
		}
		// The cases above are not vacuous: alice's initial sync has her
		// joined rooms with their timelines and state.
		body, err := sync.SyncJSON(ctx, alice.id, string(alice.client.DeviceID), "", now, false)
		if err != nil {
			t.Fatal(err)
		}
		var resp struct {
			Rooms struct {
				Join map[string]struct {
					Timeline struct {
						Events []json.RawMessage `json:"events"`
					} `json:"timeline"`
					State struct {
						Events []json.RawMessage `json:"events"`
					} `json:"state"`
				} `json:"join"`
				Invite map[string]any `json:"invite"`
			} `json:"rooms"`
		}
		if err := json.Unmarshal(body, &resp); err != nil {
			t.Fatal(err)
		}
		if len(resp.Rooms.Join) != 6+105 || len(resp.Rooms.Invite) != 1 {
			t.Fatalf("alice's initial sync has %d joined and %d invited rooms, want 111 and 1", len(resp.Rooms.Join), len(resp.Rooms.Invite))
		}
		if !bytes.Contains(body, []byte(`"m.thread"`)) || !bytes.Contains(body, []byte(`"m.replace"`)) || !bytes.Contains(body, []byte(`"m.reference"`)) {
			t.Error("alice's initial sync bundles no thread, edit or reference")
		}
		// The edits: the original bundles the first (the later one is
		// redacted), the edit bundles none of its own.
		replaced := map[string]string{}
		for _, raw := range resp.Rooms.Join[readable].Timeline.Events {
			var ev struct {
				EventID  string `json:"event_id"`
				Unsigned struct {
					Relations struct {
						Replace *struct {
							EventID string `json:"event_id"`
						} `json:"m.replace"`
					} `json:"m.relations"`
				} `json:"unsigned"`
			}
			if err := json.Unmarshal(raw, &ev); err != nil {
				t.Fatal(err)
			}
			if r := ev.Unsigned.Relations.Replace; r != nil {
				replaced[ev.EventID] = r.EventID
			}
		}
		if len(replaced) != 1 || replaced[edited] != fixed {
			t.Errorf("edits bundled in alice's initial sync: %v, want %s replaced by %s only", replaced, edited, fixed)
		}
		for _, r := range []string{own, joinedOnly, invited, readable, ignoring} {
			if jr := resp.Rooms.Join[r]; len(jr.Timeline.Events) == 0 || len(jr.State.Events)+len(jr.Timeline.Events) < 6 {
				t.Errorf("room %s: %d timeline and %d state events", r, len(jr.Timeline.Events), len(jr.State.Events))
			}
		}
	})
}

// ageField is an event's unsigned.age.
var ageField = regexp.MustCompile(`"age":[0-9]+`)

// compareSyncBodies fails the test when two /sync bodies differ in
// anything but presence (its last_active_ago follows the clock) and
// events' ages (a thread's latest event, bundled by clientapi, is aged
// by the clock, not by the sync's fixed time; an age follows from
// origin_server_ts, which is compared).
func compareSyncBodies(t *testing.T, what string, want, got []byte) {
	t.Helper()
	want, got = ageField.ReplaceAll(want, []byte(`"age":0`)), ageField.ReplaceAll(got, []byte(`"age":0`))
	var a, b map[string]json.RawMessage
	if err := json.Unmarshal(want, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(got, &b); err != nil {
		t.Fatal(err)
	}
	delete(a, "presence")
	delete(b, "presence")
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			at := 0
			for at < len(v) && at < len(b[k]) && v[at] == b[k][at] {
				at++
			}
			from := max(at-300, 0)
			t.Errorf("%s: %s differs from byte %d:\nper room: …%s\nbatched:  …%s", what, k, at,
				v[from:min(at+300, len(v))], b[k][from:min(at+300, len(b[k]))])
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			t.Errorf("%s: batched has %s, per room has not", what, k)
		}
	}
}
