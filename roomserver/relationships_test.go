package roomserver

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"slices"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// MSC2836 threading: the relationship index, the children figures and
// when a walk asks other servers. Spec: MSC2836.

func replyContent(body, parent string) string {
	return `{"msgtype":"m.text","body":"` + body + `","m.relationship":{"rel_type":"m.reference","event_id":"` + parent + `"}}`
}

func walkIDs(t *testing.T, s *Server, q RelationshipsQuery) []string {
	t.Helper()
	res, err := s.EventRelationships(context.Background(), q)
	if err != nil {
		t.Fatalf("EventRelationships(%+v): %v", *q.Request, err)
	}
	var ids []string
	for _, e := range res.Events {
		ids = append(ids, e.EventID)
	}
	return ids
}

func hashIDs(ids ...string) string {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	h := sha256.Sum256([]byte(strings.Join(ids, "")))
	return base64.RawStdEncoding.EncodeToString(h[:])
}

// TestRelationshipIndexBackfill: events stored before the relationship
// tables existed are indexed once at start.
func TestRelationshipIndexBackfill(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: "public_chat"}).RoomID
		a := mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"A"}`)
		b := mustSend(t, s, room, alice, "m.room.message", nil, replyContent("B", a))
		c := mustSend(t, s, room, alice, "m.room.message", nil, replyContent("C", b))
		if n := countRows(t, db, "roomserver_relationships"); n != 2 {
			t.Fatalf("%d relationships indexed on insert, want 2", n)
		}
		// As if the events predated the tables.
		err := db.Write(ctx, func(tx storage.Tx) error {
			if _, err := tx.Exec(ctx, `DELETE FROM roomserver_relationships`); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `DELETE FROM roomserver_relationships_backfilled`)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := migrateRelationships(ctx, db); err != nil {
			t.Fatal(err)
		}
		got := walkIDs(t, s, RelationshipsQuery{UserID: alice, Request: &RelationshipsRequest{
			EventID: a, MaxDepth: 3, MaxBreadth: 10, Limit: 10, Direction: "down"}})
		if !slices.Equal(got, []string{a, b, c}) {
			t.Fatalf("walk after the backfill: %v, want [A B C]", got)
		}
		// Once only: a second start does not scan again.
		if err := db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `DELETE FROM roomserver_relationships`)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if err := migrateRelationships(ctx, db); err != nil {
			t.Fatal(err)
		}
		if n := countRows(t, db, "roomserver_relationships"); n != 0 {
			t.Fatalf("the backfill ran twice: %d rows", n)
		}
	})
}

// TestRelationshipFetching: a client walk asks other servers (Fetch)
// about an unknown event once, and about an event whose reported
// children it lacks once per reported figures; a server's walk never
// asks. The children figures shown are the larger of what is known and
// what was reported.
func TestRelationshipFetching(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: "public_chat"}).RoomID
		a := mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"A"}`)
		b := mustSend(t, s, room, alice, "m.room.message", nil, replyContent("B", a))

		var asked []string
		fetch := func(_ context.Context, roomID string, req RelationshipsRequest) error {
			if roomID != room {
				t.Errorf("asked about room %s, want %s", roomID, room)
			}
			asked = append(asked, req.EventID)
			return nil
		}
		walk := func(eventID, roomID string) ([]string, error) {
			res, err := s.EventRelationships(ctx, RelationshipsQuery{UserID: alice, Fetch: fetch, Request: &RelationshipsRequest{
				EventID: eventID, RoomID: roomID, MaxDepth: 3, MaxBreadth: 10, Limit: 10, Direction: "down"}})
			if err != nil {
				return nil, err
			}
			var ids []string
			for _, e := range res.Events {
				ids = append(ids, e.EventID)
			}
			return ids, nil
		}

		// Unknown, without a room to ask in: not asked.
		if _, err := walk("$unknown", ""); !mxerr.Is(err, mxerr.NotFound) {
			t.Fatalf("unknown event without room_id: %v", err)
		}
		if _, err := walk("$unknown", room); !mxerr.Is(err, mxerr.NotFound) {
			t.Fatalf("unknown event with room_id: %v", err)
		}
		if !slices.Equal(asked, []string{"$unknown"}) {
			t.Fatalf("asked %v, want [$unknown]", asked)
		}

		// Known children only: nothing to ask.
		asked = nil
		if got, err := walk(a, ""); err != nil || !slices.Equal(got, []string{a, b}) || len(asked) != 0 {
			t.Fatalf("walk from A: %v %v, asked %v", got, err, asked)
		}

		// Another server reports a child this server lacks: asked once.
		other := "$otherchild"
		reported := ChildrenSummary{Children: map[string]int64{"m.reference": 2}, Hash: hashIDs(b, other)}
		if err := s.RecordRemoteChildren(ctx, a, reported); err != nil {
			t.Fatal(err)
		}
		if err := s.RecordRemoteChildren(ctx, a, ChildrenSummary{Children: map[string]int64{"m.reference": 1}, Hash: hashIDs(b)}); err != nil {
			t.Fatal(err)
		}
		if err := s.RecordRemoteChildren(ctx, "$notstored", reported); !mxerr.Is(err, mxerr.NotFound) {
			t.Fatalf("figures for an unknown event: %v", err)
		}
		for i := 0; i < 2; i++ {
			if _, err := walk(a, ""); err != nil {
				t.Fatal(err)
			}
		}
		if !slices.Equal(asked, []string{a}) {
			t.Fatalf("asked %v, want A once", asked)
		}
		res, err := s.EventRelationships(ctx, RelationshipsQuery{UserID: alice, Request: &RelationshipsRequest{
			EventID: a, Limit: 1, Direction: "down"}})
		if err != nil {
			t.Fatal(err)
		}
		if sum := res.Events[0].Children; sum.Total() != 2 || sum.Hash != reported.Hash {
			t.Fatalf("A's figures %+v, want the reported two children", sum)
		}

		// New figures: asked again.
		reported = ChildrenSummary{Children: map[string]int64{"m.reference": 3}, Hash: hashIDs(b, other, "$third")}
		if err := s.RecordRemoteChildren(ctx, a, reported); err != nil {
			t.Fatal(err)
		}
		if _, err := walk(a, ""); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(asked, []string{a, a}) {
			t.Fatalf("asked %v, want A twice", asked)
		}

		// A server's walk uses what is stored.
		res, err = s.EventRelationships(ctx, RelationshipsQuery{Server: testServer, Request: &RelationshipsRequest{
			EventID: b, Limit: 10, MaxDepth: 3, Direction: "up"}})
		if err != nil || len(res.Events) != 2 {
			t.Fatalf("server walk up from B: %+v %v", res, err)
		}
		if _, err := s.EventRelationships(ctx, RelationshipsQuery{Server: "elsewhere.example", Request: &RelationshipsRequest{
			EventID: b, Limit: 10, Direction: "up"}}); !mxerr.Is(err, mxerr.Forbidden) {
			t.Fatalf("a server not in the room: %v", err)
		}
	})
}

func TestParseUnsignedChildren(t *testing.T) {
	hash := hashIDs("$a", "$b")
	for _, c := range []struct {
		json  string
		ok    bool
		total int64
	}{
		{`{"unsigned":{"children":{"m.reference":2},"children_hash":"` + hash + `"}}`, true, 2},
		{`{"unsigned":{"children":{"m.reference":1,"custom":1},"children_hash":"` + hash + `"}}`, true, 2},
		{`{}`, false, 0},
		{`{"unsigned":{"children":{},"children_hash":"` + hash + `"}}`, false, 0},
		{`{"unsigned":{"children":{"m.reference":-1},"children_hash":"` + hash + `"}}`, false, 0},
		{`{"unsigned":{"children":{"m.reference":1.5},"children_hash":"` + hash + `"}}`, false, 0},
		{`{"unsigned":{"children":{"m.reference":"2"},"children_hash":"` + hash + `"}}`, false, 0},
		{`{"unsigned":{"children":{"m.reference":1e300},"children_hash":"` + hash + `"}}`, false, 0},
		{`{"unsigned":{"children":{"m.reference":2},"children_hash":"not base64!"}}`, false, 0},
		{`{"unsigned":{"children":{"m.reference":2},"children_hash":"` + hash + `="}}`, false, 0},
		{`{"unsigned":{"children":[2],"children_hash":"` + hash + `"}}`, false, 0},
	} {
		sum, ok := ParseUnsignedChildren([]byte(c.json))
		if ok != c.ok || sum.Total() != c.total {
			t.Errorf("ParseUnsignedChildren(%s) = %+v, %v; want ok %v total %d", c.json, sum, ok, c.ok, c.total)
		}
	}
}

func TestRelationshipOf(t *testing.T) {
	for _, c := range []struct {
		json, parent string
	}{
		{`{"content":{"m.relationship":{"rel_type":"m.reference","event_id":"$p"}}}`, "$p"},
		{`{"content":{"m.relationship":{"rel_type":"m.reference","event_id":"$self"}}}`, ""},
		{`{"content":{"m.relationship":{"rel_type":"","event_id":"$p"}}}`, ""},
		{`{"content":{"m.relationship":{"rel_type":5,"event_id":"$p"}}}`, ""},
		{`{"content":{"m.relationship":{"rel_type":"m.reference","event_id":"p"}}}`, ""},
		{`{"content":{"m.relationship":{"rel_type":"m.reference"}}}`, ""},
		{`{"content":{"m.relationship":"$p"}}`, ""},
		{`{"content":{"m.relates_to":{"rel_type":"m.thread","event_id":"$p"}}}`, ""},
		{`{"content":{"m.relationship":{"rel_type":"` + strings.Repeat("x", 256) + `","event_id":"$p"}}}`, ""},
	} {
		parent, _, ok := relationshipOf("$self", c.json)
		if parent != c.parent || ok != (c.parent != "") {
			t.Errorf("relationshipOf(%s) = %q %v, want %q", c.json, parent, ok, c.parent)
		}
	}
}

// FuzzParseRelationshipsRequest: any body either fails with a Matrix
// error or yields a request within the bounds.
func FuzzParseRelationshipsRequest(f *testing.F) {
	for _, seed := range []string{
		`{"event_id":"$a"}`,
		`{"event_id":"$a","room_id":"!r:x","max_depth":-1,"max_breadth":1000,"limit":5,"direction":"up","batch":"r5"}`,
		`{"event_id":"$a","limit":0}`, `[]`, `{`, `{"event_id":5}`, `{"event_id":"$a","batch":"r0"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := ParseRelationshipsRequest(body)
		if err != nil {
			if _, ok := err.(*mxerr.Error); !ok {
				t.Fatalf("error %v is not a Matrix error", err)
			}
			return
		}
		if !validEventID(req.EventID) || req.MaxDepth < 0 || req.MaxDepth > maxRelDepth ||
			req.MaxBreadth < 0 || req.MaxBreadth > maxRelBreadth || req.Limit < 1 || req.Limit > maxRelLimit ||
			(req.Direction != "up" && req.Direction != "down") {
			t.Fatalf("out of bounds: %+v", req)
		}
		if _, err := parseRelBatch(req.Batch); err != nil {
			t.Fatalf("accepted batch %q: %v", req.Batch, err)
		}
	})
}
