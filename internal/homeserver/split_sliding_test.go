package homeserver_test

import (
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestSplitSlidingSyncAcrossProcesses: a sliding sync connection started
// on one sync process continues on another (the connection states are in
// Redis), with incremental answers: a message sent in between shows once,
// and the room is not sent again in full.
func TestSplitSlidingSyncAcrossProcesses(t *testing.T) {
	a, b := testserver.StartSplitWith(t, nil, func(c *config.Config) { c.Global.Components = []string{"syncapi"} })
	servers := map[string]string{"A": a.URL, "B": b.URL}
	st, body := splitCall(t, "POST", a.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "alice's long password", "auth": map[string]any{"type": "m.login.dummy"}})
	if st != 200 {
		t.Fatalf("register: %d %v", st, body)
	}
	alice := body["access_token"].(string)
	st, body = splitCall(t, "POST", a.URL+"/_matrix/client/v3/createRoom", alice, map[string]any{"preset": "private_chat", "name": "split room"})
	if st != 200 {
		t.Fatalf("createRoom: %d %v", st, body)
	}
	roomID := body["room_id"].(string)
	send := func(txn string) string {
		t.Helper()
		st, body := splitCall(t, "PUT", a.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+txn, alice, map[string]any{"msgtype": "m.text", "body": txn})
		if st != 200 {
			t.Fatalf("send %s: %d %v", txn, st, body)
		}
		return body["event_id"].(string)
	}
	first := send("first")
	const path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
	pos := ""
	// slideFrom makes one sliding sync request on a process from *pos
	// (long-polling timeoutMS when it has one), sets *pos to the
	// answer's, and returns the room's result (nil: not in the answer).
	slideFrom := func(on string, pos *string, timeoutMS int) map[string]any {
		t.Helper()
		req := map[string]any{"conn_id": "main", "lists": map[string]any{"all": map[string]any{
			"ranges": [][]int{{0, 10}}, "timeline_limit": 5, "required_state": [][]string{{"m.room.create", ""}, {"m.room.name", ""}},
		}}}
		if *pos != "" {
			req["pos"], req["timeout"] = *pos, timeoutMS
		}
		st, body := splitCall(t, "POST", servers[on]+path, alice, req)
		if st != 200 {
			t.Fatalf("sliding sync on %s with pos %q: %d %v", on, *pos, st, body)
		}
		*pos = body["pos"].(string)
		rooms, _ := body["rooms"].(map[string]any)
		room, _ := rooms[roomID].(map[string]any)
		return room
	}
	// slide continues the connection on a process; the room must show.
	slide := func(on string) map[string]any {
		t.Helper()
		room := slideFrom(on, &pos, 10000)
		if room == nil {
			t.Fatalf("sliding sync on %s: the room is missing", on)
		}
		return room
	}
	timeline := func(room map[string]any) (ids []string) {
		tl, _ := room["timeline"].([]any)
		for _, e := range tl {
			ids = append(ids, e.(map[string]any)["event_id"].(string))
		}
		return ids
	}
	count := func(ids []string, id string) (n int) {
		for _, x := range ids {
			if x == id {
				n++
			}
		}
		return n
	}
	room := slide("A")
	if room["initial"] != true || room["name"] != "split room" || count(timeline(room), first) != 1 {
		t.Fatalf("first response on A: want the room in full with the first message: %v", room)
	}
	// incremental checks an answer carries only the new message.
	incremental := func(step string, room map[string]any, want, old string) {
		t.Helper()
		ids := timeline(room)
		if room["initial"] == true || room["required_state"] != nil {
			t.Fatalf("%s: the room was sent again in full: %v", step, room)
		}
		if count(ids, want) != 1 || count(ids, old) != 0 || len(ids) != 1 {
			t.Fatalf("%s: timeline %v, want only %s", step, ids, want)
		}
	}
	second := send("second")
	incremental("next pos on B", slide("B"), second, first)
	third := send("third")
	incremental("back on A", slide("A"), third, second)
	fourth := send("fourth")
	incremental("on B again", slide("B"), fourth, third)
	// Two requests from one pos at once, one on each process: each
	// answer's pos continues the connection.
	posA, posB := pos, pos
	var wg sync.WaitGroup
	var roomA, roomB map[string]any
	wg.Add(2)
	go func() { defer wg.Done(); roomA = slideFrom("A", &posA, 0) }()
	go func() { defer wg.Done(); roomB = slideFrom("B", &posB, 0) }()
	wg.Wait()
	if roomA != nil || roomB != nil || posA == posB {
		t.Fatalf("concurrent requests with nothing new: rooms %v, %v, pos %q and %q (want no room and two positions)", roomA, roomB, posA, posB)
	}
	// Continuing from the earlier of the two keeps the later one (as in
	// one process, states older than a request's start are dropped).
	seqOf := func(p string) int {
		n, _ := strconv.Atoi(p[strings.LastIndexByte(p, '.')+1:])
		return n
	}
	if seqOf(posA) > seqOf(posB) {
		posA, posB = posB, posA
	}
	fifth := send("fifth")
	pos = posA
	incremental("from the earlier concurrent answer, on B", slide("B"), fifth, fourth)
	pos = posB
	incremental("from the later concurrent answer, on A", slide("A"), fifth, fourth)
}
