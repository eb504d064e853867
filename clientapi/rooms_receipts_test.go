package clientapi_test

import (
	"net/url"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestReceiptForEventOfAnotherRoom: a receipt or read marker naming an
// event that is not in the room of the path (an event of another room
// the user can see, or an unknown one) is refused with 404 M_NOT_FOUND,
// and nothing of the request is written: no receipt, no m.fully_read,
// no change of the unread counts, even when the request's other markers
// were valid. Spec: client-server-api, "Receipts" (the event to
// acknowledge up to, in {roomId}), "Fully read markers", "POST
// /_matrix/client/v3/rooms/{roomId}/read_markers".
func TestReceiptForEventOfAnotherRoom(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		roomA, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "create A", err)
		roomB, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "create B", err)
		for _, r := range []id.RoomID{roomA.RoomID, roomB.RoomID} {
			_, err = bob.JoinRoomByID(bg, r)
			ok(t, "join", err)
		}
		msgA, err := alice.SendText(bg, roomA.RoomID, "in A")
		ok(t, "send A", err)
		// B's message comes later: a receipt in A naming it would mark
		// all of A read.
		msgB, err := alice.SendText(bg, roomB.RoomID, "in B")
		ok(t, "send B", err)
		a, b := roomA.RoomID.String(), roomB.RoomID.String()
		api := srv.HS.ClientAPI
		_, before, err := api.ReceiptsSince(bg, bob.id.String(), []string{a, b}, 0)
		ok(t, "receipts head", err)
		if n := unread(t, bob, roomA.RoomID); n != 1 {
			t.Fatalf("bob's unread count in A = %d before any receipt, want 1", n)
		}

		ra := "/_matrix/client/v3/rooms/" + url.PathEscape(a)
		evA, evB := msgA.EventID.String(), msgB.EventID.String()
		var steps []step
		for _, typ := range []string{"m.read", "m.read.private", "m.fully_read"} {
			steps = append(steps,
				step{name: typ + " of another room", method: "POST", path: ra + "/receipt/" + typ + "/" + url.PathEscape(evB),
					token: bob.token, body: `{}`, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
				step{name: typ + " of an unknown event", method: "POST", path: ra + "/receipt/" + typ + "/%24nope",
					token: bob.token, body: `{}`, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			)
		}
		steps = append(steps,
			step{name: "read_markers: m.read of another room", method: "POST", path: ra + "/read_markers", token: bob.token,
				body: `{"m.read": "` + evB + `"}`, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			step{name: "read_markers: valid m.fully_read, m.read of another room", method: "POST", path: ra + "/read_markers", token: bob.token,
				body: `{"m.fully_read": "` + evA + `", "m.read": "` + evB + `"}`, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			step{name: "read_markers: valid m.read, m.read.private of another room", method: "POST", path: ra + "/read_markers", token: bob.token,
				body: `{"m.read": "` + evA + `", "m.read.private": "` + evB + `"}`, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			step{name: "read_markers: valid m.fully_read, unknown m.read.private", method: "POST", path: ra + "/read_markers", token: bob.token,
				body: `{"m.fully_read": "` + evA + `", "m.read.private": "$nope"}`, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			step{name: "read_markers: m.fully_read of another room", method: "POST", path: ra + "/read_markers", token: bob.token,
				body: `{"m.fully_read": "` + evB + `"}`, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			step{name: "no m.fully_read was stored", method: "GET", path: "/_matrix/client/v3/user/@bob:localhost/rooms/" + url.PathEscape(a) + "/account_data/m.fully_read",
				token: bob.token, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
		)
		runSteps(t, srv, steps)

		got, head, err := api.ReceiptsSince(bg, bob.id.String(), []string{a, b}, before)
		ok(t, "receipts after", err)
		if len(got) != 0 || head != before {
			t.Fatalf("refused requests wrote receipts: %+v (head %d, was %d)", got, head, before)
		}
		// A valid receipt in B moves the receipt stream: once B reads as
		// read, the push consumer has passed every refused request too,
		// and A must still count its message.
		ok(t, "m.read in B", bob.SetReadMarkers(bg, roomB.RoomID, map[string]any{"m.read": msgB.EventID}))
		if n := unread(t, bob, roomB.RoomID); n != 0 {
			t.Fatalf("bob's unread count in B = %d after reading it, want 0", n)
		}
		if n := unread(t, bob, roomA.RoomID); n != 1 {
			t.Fatalf("bob's unread count in A = %d after refused receipts, want 1", n)
		}
	})
}

// unread is u's notification count in roomID, from an initial /sync.
func unread(t *testing.T, u *user, roomID id.RoomID) int {
	t.Helper()
	resp, err := u.FullSyncRequest(bg, mautrix.ReqSync{Timeout: 0})
	ok(t, "sync", err)
	r := resp.Rooms.Join[roomID]
	if r == nil {
		t.Fatalf("%s not in %s's /sync", roomID, u.id)
	}
	if r.UnreadNotifications == nil {
		return 0
	}
	return r.UnreadNotifications.NotificationCount
}

// TestThreadedReceiptMustMatchThread: a threaded receipt whose event is
// not related to its thread_id is refused with 400 M_INVALID_PARAM and
// writes nothing: "main" for an event in a thread (by m.thread, or by a
// relation to such an event), a thread root for an event of the main
// timeline or of another thread. The thread root itself takes either its
// own ID or "main" (roots are in the main timeline), and so does an event
// related to the root by a non-thread relation ("main" only). Spec:
// client-server-api, "Threaded read receipts"; receipts.yaml, 400 ("The
// event_id is not related to the thread_id").
func TestThreadedReceiptMustMatchThread(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "create", err)
		_, err = bob.JoinRoomByID(bg, room.RoomID)
		ok(t, "join", err)
		send := func(evType string, content map[string]any) string {
			t.Helper()
			resp, err := alice.SendMessageEvent(bg, room.RoomID, event.NewEventType(evType), content)
			ok(t, "send "+evType, err)
			return resp.EventID.String()
		}
		rel := func(relType, to string) map[string]any {
			r := map[string]any{"rel_type": relType, "event_id": to}
			if relType == "m.annotation" {
				r["key"] = "👍"
			}
			return r
		}
		root := send("m.room.message", map[string]any{"msgtype": "m.text", "body": "root"})
		root2 := send("m.room.message", map[string]any{"msgtype": "m.text", "body": "root 2"})
		inThread := send("m.room.message", map[string]any{"msgtype": "m.text", "body": "in thread",
			"m.relates_to": rel("m.thread", root)})
		inThread2 := send("m.room.message", map[string]any{"msgtype": "m.text", "body": "in thread 2",
			"m.relates_to": rel("m.thread", root2)})
		reactionInThread := send("m.reaction", map[string]any{"m.relates_to": rel("m.annotation", inThread)})
		reactionToRoot := send("m.reaction", map[string]any{"m.relates_to": rel("m.annotation", root)})
		plain := send("m.room.message", map[string]any{"msgtype": "m.text", "body": "main"})

		rid := room.RoomID.String()
		_, before, err := srv.HS.ClientAPI.ReceiptsSince(bg, bob.id.String(), []string{rid}, 0)
		ok(t, "receipts head", err)
		rp := "/_matrix/client/v3/rooms/" + url.PathEscape(rid) + "/receipt/"
		receipt := func(name, typ, eventID, threadID string, status int) step {
			st := step{name: name, method: "POST", path: rp + typ + "/" + url.PathEscape(eventID), token: bob.token,
				body: `{"thread_id": "` + threadID + `"}`, wantStatus: status}
			if status == 400 {
				st.wantErrcode = "M_INVALID_PARAM"
			}
			return st
		}
		runSteps(t, srv, []step{
			receipt("main for an event in a thread", "m.read", inThread, "main", 400),
			receipt("main for a reaction to an event in a thread", "m.read", reactionInThread, "main", 400),
			receipt("main for an event in a thread (private)", "m.read.private", inThread2, "main", 400),
			receipt("a root for a main-timeline event", "m.read", plain, root, 400),
			receipt("a root for an event of another thread", "m.read", inThread2, root, 400),
			receipt("a root for a reaction to the root", "m.read.private", reactionToRoot, root, 400),
			receipt("a root for another root", "m.read", root2, root, 400),
			receipt("a non-event for an event", "m.read", inThread, "$nope", 400),
		})
		_, head, err := srv.HS.ClientAPI.ReceiptsSince(bg, bob.id.String(), []string{rid}, before)
		ok(t, "receipts after refusals", err)
		if head != before {
			t.Fatalf("refused receipts moved the receipt stream from %d to %d", before, head)
		}
		runSteps(t, srv, []step{
			receipt("an event in its thread", "m.read", inThread, root, 200),
			receipt("a reaction in its thread", "m.read", reactionInThread, root, 200),
			receipt("an event in its thread (private)", "m.read.private", inThread2, root2, 200),
			receipt("a root in its own thread", "m.read", root, root, 200),
			receipt("a root in main", "m.read", root2, "main", 200),
			receipt("a reaction to a root in main", "m.read", reactionToRoot, "main", 200),
			receipt("a main-timeline event in main", "m.read", plain, "main", 200),
			{name: "unthreaded", method: "POST", path: rp + "m.read/" + url.PathEscape(inThread), token: bob.token,
				body: `{}`, wantStatus: 200},
		})
	})
}
