package clientapi_test

import (
	"fmt"
	"net/url"
	"sync"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

func annotation(target id.EventID, key string) map[string]any {
	return map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": target, "key": key}}
}

// annotationsOf returns the IDs of the m.annotation relations of target,
// as /relations serves them.
func annotationsOf(t *testing.T, srv *testserver.Server, u *user, roomID id.RoomID, target id.EventID) []string {
	t.Helper()
	status, body := callRaw(t, srv, "GET", "/_matrix/client/v1/rooms/"+url.PathEscape(roomID.String())+
		"/relations/"+url.PathEscape(target.String())+"/m.annotation?limit=50", u.token, "")
	if status != 200 {
		t.Fatalf("/relations: %d %v", status, body)
	}
	var ids []string
	for _, e := range body["chunk"].([]any) {
		ids = append(ids, e.(map[string]any)["event_id"].(string))
	}
	return ids
}

// TestDuplicateAnnotation: a user's second annotation of an event with
// the same event type and key is refused with 400 M_DUPLICATE_ANNOTATION
// and nothing is stored; another key, another type or another user is
// not a duplicate; a retry of the first send's transaction ID still gets
// the first event; once the first is redacted the same annotation is
// accepted; of identical annotations sent at once exactly one is stored;
// annotations stored before the index existed count (the backfill).
// Spec: client-server-api, "Event annotations", "Avoiding duplicate
// annotations".
func TestDuplicateAnnotation(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "create", err)
		_, err = bob.JoinRoomByID(bg, room.RoomID)
		ok(t, "join", err)
		msg, err := alice.SendText(bg, room.RoomID, "react to me")
		ok(t, "send", err)
		target := msg.EventID
		sendPath := func(typ, txn string) string {
			return "/_matrix/client/v3/rooms/" + url.PathEscape(room.RoomID.String()) + "/send/" + typ + "/" + txn
		}
		send := func(u *user, typ, txn string, content map[string]any) (int, map[string]any) {
			t.Helper()
			return call(t, "PUT", srv.URL+sendPath(typ, txn), u.token, content)
		}

		status, first := send(alice, "m.reaction", "t1", annotation(target, "👍"))
		if status != 200 {
			t.Fatalf("first reaction: %d %v", status, first)
		}
		status, body := send(alice, "m.reaction", "t2", annotation(target, "👍"))
		expectError(t, "same reaction again", status, body, 400, "M_DUPLICATE_ANNOTATION")
		status, retry := send(alice, "m.reaction", "t1", annotation(target, "👍"))
		if status != 200 || retry["event_id"] != first["event_id"] {
			t.Fatalf("retry of the first transaction: %d %v, want the first event %v", status, retry, first["event_id"])
		}
		for _, c := range []struct {
			name string
			u    *user
			typ  string
			key  string
		}{
			{"another key", alice, "m.reaction", "👎"},
			{"another event type", alice, "com.example.reaction", "👍"},
			{"another user", bob, "m.reaction", "👍"},
		} {
			if status, body := send(c.u, c.typ, "x-"+c.name, annotation(target, c.key)); status != 200 {
				t.Errorf("%s: %d %v, want 200", c.name, status, body)
			}
		}
		if got := annotationsOf(t, srv, alice, room.RoomID, target); len(got) != 4 {
			t.Fatalf("annotations after the refusal: %v, want 4 (the refused one not stored)", got)
		}
		// A reply to the event is no annotation: sent twice, kept twice.
		for _, txn := range []string{"r1", "r2"} {
			if status, body := send(alice, "m.room.message", txn, map[string]any{"msgtype": "m.text", "body": "same",
				"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": target}}); status != 200 {
				t.Fatalf("reference %s: %d %v", txn, status, body)
			}
		}

		// Redacting the first lets the same annotation through again.
		_, err = alice.RedactEvent(bg, room.RoomID, id.EventID(first["event_id"].(string)))
		ok(t, "redact", err)
		status, again := send(alice, "m.reaction", "t3", annotation(target, "👍"))
		if status != 200 {
			t.Fatalf("reaction after redacting the first: %d %v", status, again)
		}
		status, body = send(alice, "m.reaction", "t4", annotation(target, "👍"))
		expectError(t, "duplicate of the new one", status, body, 400, "M_DUPLICATE_ANNOTATION")

		// Identical sends at once: one wins.
		msg2, err := alice.SendText(bg, room.RoomID, "race")
		ok(t, "send", err)
		const n = 8
		var wg sync.WaitGroup
		statuses := make([]int, n)
		codes := make([]any, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				status, body := send(alice, "m.reaction", fmt.Sprintf("race%d", i), annotation(msg2.EventID, "🎉"))
				statuses[i], codes[i] = status, body["errcode"]
			}()
		}
		wg.Wait()
		wins := 0
		for i := range n {
			switch {
			case statuses[i] == 200:
				wins++
			case statuses[i] != 400 || codes[i] != "M_DUPLICATE_ANNOTATION":
				t.Errorf("concurrent send %d: %d %v", i, statuses[i], codes[i])
			}
		}
		if got := annotationsOf(t, srv, alice, room.RoomID, msg2.EventID); wins != 1 || len(got) != 1 {
			t.Fatalf("concurrent identical annotations: %d accepted, %v stored; want exactly one", wins, got)
		}

		// As if the annotations had been stored before the index existed:
		// the next start indexes them.
		err = srv.HS.DB.Write(bg, func(tx storage.Tx) error {
			if _, err := tx.Exec(bg, `DELETE FROM roomserver_annotations`); err != nil {
				return err
			}
			_, err := tx.Exec(bg, `DELETE FROM roomserver_annotations_backfilled`)
			return err
		})
		ok(t, "clear the index", err)
		srv.Restart(t)
		status, body = send(alice, "m.reaction", "t5", annotation(msg2.EventID, "🎉"))
		expectError(t, "duplicate after the backfill", status, body, 400, "M_DUPLICATE_ANNOTATION")
		status, body = send(alice, "m.reaction", "t6", annotation(target, "👍"))
		expectError(t, "duplicate of the unredacted one after the backfill", status, body, 400, "M_DUPLICATE_ANNOTATION")
	})
}
