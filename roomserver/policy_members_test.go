package roomserver

import (
	"context"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestServerJoined: whether a server has a joined member in a room is
// decided on the whole server name after the user ID's first colon
// (ports included, case kept, no suffix or LIKE wildcard match), only
// for joined members of that room; on SQLite the query is answered from
// the index on server names, not by scanning the room's members.
func TestServerJoined(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		rows := []struct{ room, user, membership string }{
			{"!a:x", "@mod:policy.example", "join"},
			{"!a:x", "@p:host.example:8448", "join"},
			{"!a:x", "@left:gone.example", "leave"},
			{"!a:x", "@inv:invited.example", "invite"},
			{"!a:x", "nocolon.example", "join"},
			{"!a:x", "@u:we_ird%.example", "join"},
			{"!b:x", "@other:elsewhere.example", "join"},
		}
		if err := db.Write(ctx, func(tx storage.Tx) error {
			for i, r := range rows {
				if _, err := tx.Exec(ctx, `INSERT INTO roomserver_current_state (room_id, type, state_key, event_nid, event_id, membership)
					VALUES ($1, 'm.room.member', $2, $3, $4, $5)`, r.room, r.user, 1000+i, "$e"+r.user, r.membership); err != nil {
					return err
				}
			}
			_, err := tx.Exec(ctx, `INSERT INTO roomserver_current_state (room_id, type, state_key, event_nid, event_id, membership)
				VALUES ('!a:x', 'm.room.name', 'x:topic.example', 2000, '$name', 'join')`)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		for server, want := range map[string]bool{
			"policy.example":    true,
			"host.example:8448": true,
			"host.example":      false,
			"example":           false,
			"Policy.example":    false,
			"gone.example":      false,
			"invited.example":   false,
			"nocolon.example":   false,
			"elsewhere.example": false,
			"topic.example":     false,
			"we_ird%.example":   true,
			"weXird%.example":   false,
			"":                  false,
		} {
			got, err := s.serverJoined(ctx, db.Reader(), "!a:x", server)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("serverJoined(%q) = %v, want %v", server, got, want)
			}
		}
		if db.Engine() != storage.SQLite {
			return
		}
		details := sqlitePlan(t, db, serverJoinedSQLite, "!a:x", "policy.example")
		if all := strings.Join(details, "; "); !strings.Contains(all, "USING INDEX roomserver_current_state_member_server (room_id=? AND <expr>=?)") {
			t.Fatalf("query plan %q does not probe the server-name index", all)
		}
	})
}
