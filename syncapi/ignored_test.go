package syncapi_test

import (
	"net/http"
	"net/url"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// timelineBodies lists the body (or, for state, the type) of each
// timeline event of roomID in a sync response.
func timelineBodies(body map[string]any, roomID string) []string {
	evs, _ := dig(body, "rooms", "join", roomID, "timeline", "events").([]any)
	var out []string
	for _, e := range evs {
		ev := e.(map[string]any)
		if b, ok := dig(ev, "content", "body").(string); ok {
			out = append(out, b)
		} else {
			out = append(out, ev["type"].(string))
		}
	}
	return out
}

func setIgnored(t *testing.T, srv *testserver.Server, u *user, content string) {
	t.Helper()
	status, resp := rawRequest(t, srv, u, http.MethodPut,
		"/_matrix/client/v3/user/"+url.PathEscape(u.id)+"/account_data/m.ignored_user_list", content)
	if status != http.StatusOK {
		t.Fatalf("set m.ignored_user_list: %d %v", status, resp)
	}
}

// TestSyncIgnoredUsers: once Bob ignores Alice, /sync leaves out her
// messages and her invites but keeps her state events; un-ignoring
// brings her later messages back. Spec: client-server-api, "Ignoring
// Users".
func TestSyncIgnoredUsers(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", carol, carol.id, roomID)
		membership(t, srv, "join", bob, bob.id, roomID)
		since := syncOK(t, srv, bob, "timeout=0")["next_batch"].(string)

		setIgnored(t, srv, bob, `{"ignored_users":{"`+alice.id+`":{}}}`)
		sendText(t, srv, alice, roomID, "hidden")
		sendState(t, srv, alice, roomID, "m.room.topic", "", `{"topic":"by alice"}`)
		sendText(t, srv, carol, roomID, "visible")
		other := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
		membership(t, srv, "invite", alice, bob.id, other)

		inc := syncOK(t, srv, bob, "timeout=0&since="+url.QueryEscape(since))
		if got := timelineBodies(inc, roomID); !slices.Equal(got, []string{"m.room.topic", "visible"}) {
			t.Errorf("incremental timeline %v, want [m.room.topic visible]", got)
		}
		if dig(inc, "rooms", "invite", other) != nil {
			t.Errorf("invite from ignored alice delivered: %v", dig(inc, "rooms", "invite", other))
		}
		initial := syncOK(t, srv, bob, "timeout=0")
		if got := timelineBodies(initial, roomID); slices.Contains(got, "hidden") || !slices.Contains(got, "visible") {
			t.Errorf("initial sync timeline %v: want visible without hidden", got)
		}
		if dig(initial, "rooms", "invite", other) != nil {
			t.Errorf("initial sync carries alice's invite")
		}

		// After a restart the list is read again, not remembered.
		srv.Restart(t)
		since = inc["next_batch"].(string)
		sendText(t, srv, alice, roomID, "hidden 2")
		sendText(t, srv, carol, roomID, "visible 2")
		again := syncOK(t, srv, bob, "timeout=0&since="+url.QueryEscape(since))
		if got := timelineBodies(again, roomID); !slices.Equal(got, []string{"visible 2"}) {
			t.Errorf("after a restart: timeline %v, want [visible 2]", got)
		}

		setIgnored(t, srv, bob, `{"ignored_users":{}}`)
		sendText(t, srv, alice, roomID, "back")
		back := syncOK(t, srv, bob, "timeout=0&since="+url.QueryEscape(again["next_batch"].(string)))
		if got := timelineBodies(back, roomID); !slices.Equal(got, []string{"back"}) {
			t.Errorf("after un-ignoring: timeline %v, want [back]", got)
		}
	})
}
