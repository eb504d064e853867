package clientapi_test

import (
	"net/url"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

func relatesTo(relType, target string, body string) map[string]any {
	return map[string]any{
		"msgtype": "m.text", "body": body,
		"m.relates_to": map[string]any{"rel_type": relType, "event_id": target},
	}
}

// TestRoomsRelations: threads, edits and references, served through
// /relations, /threads and bundled aggregations.
// Spec: client-server-api, "Forming relationships between events",
// "Threading", "Event replacements", "Reference relations".
func TestRoomsRelations(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "create", err)
		for _, u := range []*user{bob, carol} {
			_, err = u.JoinRoomByID(bg, room.RoomID)
			ok(t, "join", err)
		}
		send := func(u *user, content map[string]any) id.EventID {
			t.Helper()
			resp, err := u.SendMessageEvent(bg, room.RoomID, event.EventMessage, content)
			ok(t, "send", err)
			return resp.EventID
		}
		root := send(alice, map[string]any{"msgtype": "m.text", "body": "root"})
		var replies []id.EventID
		for _, body := range []string{"r1", "r2", "r3"} {
			replies = append(replies, send(bob, relatesTo("m.thread", root.String(), body)))
		}
		send(alice, relatesTo("m.replace", root.String(), "* edit 1"))
		// The most recent edit is the one with the later origin_server_ts
		// (ties go to the larger event ID), so the second edit must not
		// share the first one's millisecond for it to be the latest.
		time.Sleep(2 * time.Millisecond)
		edit2 := send(alice, relatesTo("m.replace", root.String(), "* edit 2"))
		send(bob, relatesTo("m.replace", root.String(), "* not alice")) // invalid: another sender
		ref := send(carol, relatesTo("m.reference", root.String(), "see"))

		// Bundled aggregations on the root.
		got, err := alice.GetEvent(bg, room.RoomID, root)
		ok(t, "get root", err)
		rel := got.Unsigned.Relations
		if rel == nil || rel.Thread == nil || rel.Thread.Count != 3 || rel.Thread.LatestEvent == nil ||
			rel.Thread.LatestEvent.ID != replies[2] || !rel.Thread.CurrentUserParticipated {
			t.Fatalf("m.thread = %+v", rel)
		}
		if rel.LatestEdit == nil || rel.LatestEdit.ID != edit2 {
			t.Fatalf("m.replace = %+v", rel.LatestEdit)
		}
		if ids := rel.References.GetEventIDs(); len(ids) != 1 || ids[0] != ref {
			t.Fatalf("m.reference = %v", ids)
		}
		asCarol, err := carol.GetEvent(bg, room.RoomID, root)
		ok(t, "carol gets root", err)
		if asCarol.Unsigned.Relations.GetThread().GetCurrentUserParticipated() {
			t.Fatal("carol is said to take part in a thread she never wrote in")
		}

		// /relations, paged newest first.
		page1, err := alice.GetRelations(bg, room.RoomID, root, &mautrix.ReqGetRelations{RelationType: event.RelThread, Limit: 2})
		ok(t, "relations page 1", err)
		if len(page1.Chunk) != 2 || page1.Chunk[0].ID != replies[2] || page1.Chunk[1].ID != replies[1] || page1.NextBatch == "" {
			t.Fatalf("page 1 = %+v", page1)
		}
		page2, err := alice.GetRelations(bg, room.RoomID, root, &mautrix.ReqGetRelations{RelationType: event.RelThread, Limit: 2, From: page1.NextBatch})
		ok(t, "relations page 2", err)
		if len(page2.Chunk) != 1 || page2.Chunk[0].ID != replies[0] || page2.NextBatch != "" || page2.PrevBatch != page1.NextBatch {
			t.Fatalf("page 2 = %+v", page2)
		}
		fwd, err := alice.GetRelations(bg, room.RoomID, root, &mautrix.ReqGetRelations{Dir: mautrix.DirectionForward})
		ok(t, "relations forward", err)
		if len(fwd.Chunk) != 7 || fwd.Chunk[0].ID != replies[0] || fwd.Chunk[6].ID != ref {
			t.Fatalf("all relations forward: %d", len(fwd.Chunk))
		}
		typed, err := alice.GetRelations(bg, room.RoomID, root, &mautrix.ReqGetRelations{RelationType: event.RelReference, EventType: event.EventMessage})
		ok(t, "relations by type", err)
		if len(typed.Chunk) != 1 || typed.Chunk[0].ID != ref {
			t.Fatalf("references = %+v", typed.Chunk)
		}
		_, err = alice.GetRelations(bg, room.RoomID, "$unknown", &mautrix.ReqGetRelations{})
		wantErrcode(t, "relations of an unknown event", err, 404, "M_NOT_FOUND")

		// /threads lists the thread; carol did not take part.
		r := "/_matrix/client/v1/rooms/" + url.PathEscape(room.RoomID.String())
		status, body := callRaw(t, srv, "GET", r+"/threads", carol.token, "")
		chunk, _ := body["chunk"].([]any)
		if status != 200 || len(chunk) != 1 || chunk[0].(map[string]any)["event_id"] != root.String() {
			t.Fatalf("threads = %d %v", status, body)
		}
		status, body = callRaw(t, srv, "GET", r+"/threads?include=participated", carol.token, "")
		if chunk, _ := body["chunk"].([]any); status != 200 || len(chunk) != 0 {
			t.Fatalf("participated threads for carol = %d %v", status, body)
		}
		status, body = callRaw(t, srv, "GET", r+"/threads?include=participated", bob.token, "")
		if chunk, _ := body["chunk"].([]any); status != 200 || len(chunk) != 1 {
			t.Fatalf("participated threads for bob = %d %v", status, body)
		}

		// A redacted reply leaves the thread.
		_, err = bob.RedactEvent(bg, room.RoomID, replies[2])
		ok(t, "redact reply", err)
		got, err = alice.GetEvent(bg, room.RoomID, root)
		ok(t, "get root after redaction", err)
		if th := got.Unsigned.Relations.GetThread(); th.GetCount() != 2 || th.GetLatestEvent().ID != replies[1] {
			t.Fatalf("thread after redaction = %+v", th)
		}
	})
}
