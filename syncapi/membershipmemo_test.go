package syncapi_test

import (
	"context"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// memoEngines is SQLite, and PostgreSQL when it is available.
func memoEngines() []storage.Engine {
	engines := []storage.Engine{storage.SQLite}
	if postgresAvailable() {
		engines = append(engines, storage.Postgres)
	}
	return engines
}

// syncBody is an incremental (or, with since "", initial) sync's
// body; it fails the test on any status but 200.
func syncBody(t *testing.T, srv *testserver.Server, u *user, since string, timeoutMS int) map[string]any {
	t.Helper()
	q := "timeout=" + strconv.Itoa(timeoutMS)
	if since != "" {
		q += "&since=" + url.QueryEscape(since)
	}
	code, body := rawSync(t, srv, u, q)
	if code != 200 {
		t.Fatalf("sync: %d %v", code, body)
	}
	return body
}

// roomsIn is the room IDs of one section (join, invite, leave, knock)
// of a sync body.
func roomsIn(body map[string]any, section string) map[string]any {
	rooms, _ := body["rooms"].(map[string]any)
	s, _ := rooms[section].(map[string]any)
	return s
}

// parkedAndCaughtUp waits until n long polls wait and the waker has
// dispatched every room stream position.
func parkedAndCaughtUp(t *testing.T, srv *testserver.Server, n int) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); srv.HS.Sync.Parked() < n || !srv.HS.Sync.WakerCaughtUp(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("parked %d (want %d), waker caught up %v", srv.HS.Sync.Parked(), n, srv.HS.Sync.WakerCaughtUp())
		}
	}
}

// A long poll's registration and its woken responses take the user's
// memberships from the memo (membershipmemo.go). A membership change of
// the user while it waits — through any of the membership operations —
// must drop the memo's entry, so that the woken response reads them
// again and shows the change. Without the drop the woken response is
// computed from the memberships the long poll started with: the invite
// and the join are not seen (it waits to its timeout), the kick and the
// ban come as a timeline event of a room still joined.
func TestMembershipMemoDroppedOnMembershipChange(t *testing.T) {
	cases := []struct {
		op      string // what happens to bob in a room while he long-polls
		section string // where the room must then be in his response
	}{
		{"invite", "invite"},
		{"join", "join"},
		{"kick", "leave"},
		{"ban", "leave"},
		{"leave", "leave"},
	}
	for _, engine := range memoEngines() {
		t.Run(string(engine), func(t *testing.T) {
			srv := testserver.Start(t, engine, nil)
			alice := newUser(t, srv, "alice")
			bob := newUser(t, srv, "bob")
			home := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
			membership(t, srv, "join", bob, bob.id, home)
			for _, c := range cases {
				t.Run(c.op, func(t *testing.T) {
					room := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
					if c.op == "kick" || c.op == "ban" || c.op == "leave" {
						membership(t, srv, "join", bob, bob.id, room)
					}
					since := syncBody(t, srv, bob, "", 0)["next_batch"].(string)
					// A second, incremental read: the memo now surely
					// holds bob's memberships (the initial sync put them).
					since = syncBody(t, srv, bob, since, 0)["next_batch"].(string)
					got := make(chan map[string]any, 1)
					go func() {
						_, body := rawSync(t, srv, bob, "timeout=8000&since="+url.QueryEscape(since))
						got <- body
					}()
					parkedAndCaughtUp(t, srv, 1)
					switch c.op {
					case "join", "leave":
						membership(t, srv, c.op, bob, bob.id, room)
					default:
						membership(t, srv, c.op, alice, bob.id, room)
					}
					var body map[string]any
					select {
					case body = <-got:
					case <-time.After(15 * time.Second):
						t.Fatal("the long poll did not answer")
					}
					if _, ok := roomsIn(body, c.section)[room]; !ok {
						t.Fatalf("after %s the woken response has no %s section for the room: %v", c.op, c.section, body["rooms"])
					}
					if c.section == "leave" {
						if _, ok := roomsIn(body, "join")[room]; ok {
							t.Fatalf("after %s the room is still joined in the response: %v", c.op, body["rooms"])
						}
					}
				})
			}
		})
	}
}

// A room stream window that the waker skips (nobody waits, so it is not
// read) may hold membership changes the memo cannot learn of: it must
// drop every entry. Here bob's invite commits while nobody waits; then
// carol's long poll is woken by a later message, so the waker has
// dispatched past the invite; bob's incremental sync must still see it.
func TestMembershipMemoDroppedOnSkippedWindow(t *testing.T) {
	for _, engine := range memoEngines() {
		t.Run(string(engine), func(t *testing.T) {
			srv := testserver.Start(t, engine, nil)
			alice := newUser(t, srv, "alice")
			bob := newUser(t, srv, "bob")
			carol := newUser(t, srv, "carol")
			home := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
			membership(t, srv, "join", bob, bob.id, home)
			membership(t, srv, "join", carol, carol.id, home)
			other := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
			bobSince := syncBody(t, srv, bob, "", 0)["next_batch"].(string)
			bobSince = syncBody(t, srv, bob, bobSince, 0)["next_batch"].(string)
			carolSince := syncBody(t, srv, carol, "", 0)["next_batch"].(string)
			parkedAndCaughtUp(t, srv, 0)

			membership(t, srv, "invite", alice, bob.id, other) // nobody waits
			parkedAndCaughtUp(t, srv, 0)
			got := make(chan map[string]any, 1)
			go func() {
				_, body := rawSync(t, srv, carol, "timeout=8000&since="+url.QueryEscape(carolSince))
				got <- body
			}()
			parkedAndCaughtUp(t, srv, 1)
			sendText(t, srv, alice, home, "wake carol")
			select {
			case <-got:
			case <-time.After(15 * time.Second):
				t.Fatal("carol's long poll did not answer")
			}
			parkedAndCaughtUp(t, srv, 0)

			body := syncBody(t, srv, bob, bobSince, 0)
			if _, ok := roomsIn(body, "invite")[other]; !ok {
				t.Fatalf("bob's incremental sync has no invite: %v", body["rooms"])
			}
		})
	}
}

// In a split deployment the memo of the process serving /sync must drop
// a user's memberships when another process commits a change of them:
// the waker reads every window from the database, whichever process
// wrote it, after the notification came through Redis. Bob long-polls
// on B; alice invites him through A.
func TestSplitModeMembershipMemoDroppedByOtherProcess(t *testing.T) {
	a, b := testserver.StartSplit(t)
	alice := newUser(t, a, "alice")
	bob := newUser(t, a, "bob") // one database: his token works on B too
	home := createRoom(t, a, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
	membership(t, a, "join", bob, bob.id, home)
	other := createRoom(t, a, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
	for round := range 3 {
		since := syncBody(t, b, bob, "", 0)["next_batch"].(string)
		since = syncBody(t, b, bob, since, 0)["next_batch"].(string)
		got := make(chan map[string]any, 1)
		go func() {
			_, body := rawSync(t, b, bob, "timeout=8000&since="+url.QueryEscape(since))
			got <- body
		}()
		parkedAndCaughtUp(t, b, 1)
		want := "invite"
		switch round {
		case 0:
			membership(t, a, "invite", alice, bob.id, other)
		case 1:
			membership(t, a, "join", bob, bob.id, other)
			want = "join"
		case 2:
			membership(t, a, "kick", alice, bob.id, other)
			want = "leave"
		}
		var body map[string]any
		select {
		case body = <-got:
		case <-time.After(15 * time.Second):
			t.Fatal("the long poll on B did not answer")
		}
		if _, ok := roomsIn(body, want)[other]; !ok {
			t.Fatalf("round %d: B's woken response has no %s section for the room: %v", round, want, body["rooms"])
		}
	}
}

// Forgetting a room has no stream position, so it cannot drop the memo's
// entry: an incremental sync then sees the room's Forgotten flag as it
// was before the forget. That must not change the response (the reason
// only incremental syncs without full_state use the memo): the leave
// still shows to a client whose token predates it, and not to one whose
// token follows it; an initial sync, which reads afresh, leaves the
// forgotten room out.
func TestMembershipMemoForgetNeedsNoDrop(t *testing.T) {
	for _, engine := range memoEngines() {
		t.Run(string(engine), func(t *testing.T) {
			srv := testserver.Start(t, engine, nil)
			alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
			room := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
			membership(t, srv, "join", bob, bob.id, room)
			sendText(t, srv, alice, room, "hello")
			before := syncBody(t, srv, alice, "", 0)["next_batch"].(string)
			membership(t, srv, "leave", alice, alice.id, room)
			parkedAndCaughtUp(t, srv, 0)
			afterLeave := syncBody(t, srv, alice, before, 0)["next_batch"].(string)
			if err := srv.HS.Rooms.Forget(context.Background(), alice.id, room); err != nil {
				t.Fatalf("forget: %v", err)
			}
			if !srv.HS.Sync.MembershipsMemoized(alice.id) {
				t.Fatal("the memo does not hold alice's memberships from before the forget: the test would not exercise it")
			}
			includeLeave := "&filter=" + url.QueryEscape(`{"room":{"include_leave":true}}`)
			sections := func(query string) (leave, join bool) {
				t.Helper()
				code, body := rawSync(t, srv, alice, "timeout=0"+includeLeave+query)
				if code != 200 {
					t.Fatalf("sync %s: %d %v", query, code, body)
				}
				_, leave = roomsIn(body, "leave")[room]
				_, join = roomsIn(body, "join")[room]
				return leave, join
			}
			if leave, join := sections("&since=" + url.QueryEscape(before)); !leave || join {
				t.Fatalf("from before the leave: leave %v join %v, want the leave only", leave, join)
			}
			if leave, join := sections("&since=" + url.QueryEscape(afterLeave)); leave || join {
				t.Fatalf("from after the leave: leave %v join %v, want neither", leave, join)
			}
			if leave, join := sections(""); leave || join {
				t.Fatalf("initial sync: leave %v join %v, want neither", leave, join)
			}
		})
	}
}
