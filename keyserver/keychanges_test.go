package keyserver_test

import (
	"net/http"
	"net/url"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestKeyChangesTakesSyncTokens: GET /keys/changes reads the device-list
// and room positions of two sync tokens. Between them Bob joined Alice's
// room (so he is in Alice's changed though his keys did not change) and
// Carol uploaded keys while sharing no room with Alice (so she is not);
// after Bob leaves, he is in left. Anything but a sync token is 400.
func TestKeyChangesTakesSyncTokens(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := register(t, srv, "alice"), register(t, srv, "bob"), register(t, srv, "carol")
		status, body := alice.do(t, http.MethodPost, "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"})
		if status != http.StatusOK {
			t.Fatalf("createRoom: %d %v", status, body)
		}
		roomID := body["room_id"].(string)
		changes := func(from, to string) (int, map[string]any) {
			return alice.do(t, http.MethodGet, "/_matrix/client/v3/keys/changes?from="+url.QueryEscape(from)+"&to="+url.QueryEscape(to), nil)
		}

		t0 := nextBatch(t, alice)
		if status, body := bob.do(t, http.MethodPost, "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{}); status != http.StatusOK {
			t.Fatalf("bob joins: %d %v", status, body)
		}
		k := newDeviceKeys(t, carol.userID, carol.deviceID)
		if status, body := carol.do(t, http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{"device_keys": k.deviceObject(t)}); status != http.StatusOK {
			t.Fatalf("carol uploads keys: %d %v", status, body)
		}
		t1 := nextBatch(t, alice)
		status, body = changes(t0, t1)
		if status != http.StatusOK || !slices.Equal(toStrings(body["changed"]), []string{bob.userID}) || len(toStrings(body["left"])) != 0 {
			t.Errorf("/keys/changes across bob's join: %d %v; want changed [bob], left []", status, body)
		}

		if status, body := bob.do(t, http.MethodPost, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/leave", map[string]any{}); status != http.StatusOK {
			t.Fatalf("bob leaves: %d %v", status, body)
		}
		t2 := nextBatch(t, alice)
		status, body = changes(t1, t2)
		if status != http.StatusOK || len(toStrings(body["changed"])) != 0 || !slices.Equal(toStrings(body["left"]), []string{bob.userID}) {
			t.Errorf("/keys/changes across bob's leave: %d %v; want changed [], left [bob]", status, body)
		}

		for _, bad := range [][2]string{{"5", t1}, {t0, "s1_x"}, {"", t1}} {
			status, body := changes(bad[0], bad[1])
			if status != http.StatusBadRequest {
				t.Errorf("/keys/changes from=%q to=%q: %d %v, want 400", bad[0], bad[1], status, body)
			}
		}
	})
}
