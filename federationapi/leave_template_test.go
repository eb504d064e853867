package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tidwall/sjson"
)

// TestTamperedLeaveTemplateAborts: a make_leave template that changes
// anything but what we asked for (security case 14, which
// TestTamperedTemplateAbortsJoin drives for make_join) aborts the leave
// with nothing signed for send_leave; an untampered template from the
// same fake server is signed and sent, so the refusals come from the
// tampering alone.
// Spec: server-server-api, "Leaving Rooms (Rejecting Invites)".
func TestTamperedLeaveTemplateAborts(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		for _, tamper := range []struct{ name, path, value string }{
			{"sender", "sender", "@mallory:evil.example"},
			{"state_key", "state_key", "@mallory:evil.example"},
			{"membership", "content.membership", "join"},
			{"type", "type", "m.room.power_levels"},
			{"extra content", "content.displayname", "owned"},
			{"room", "room_id", "!other:evil.example"},
			{"none", "", ""},
		} {
			t.Run(tamper.name, func(t *testing.T) {
				var sendLeaves atomic.Int32
				evil, _ := n.fakeServer(t, func(name string, mux *http.ServeMux) {
					mux.HandleFunc("/_matrix/federation/v1/make_leave/", func(w http.ResponseWriter, r *http.Request) {
						parts := strings.Split(r.URL.EscapedPath(), "/")
						roomID, _ := unescape(parts[5])
						userID, _ := unescape(parts[6])
						tmpl := mustJSON(map[string]any{"type": "m.room.member", "sender": userID, "state_key": userID, "room_id": roomID,
							"content": map[string]string{"membership": "leave"}, "prev_events": []string{"$prev"}, "auth_events": []string{"$create"},
							"depth": 5, "origin": name, "origin_server_ts": 1})
						if tamper.path != "" {
							tmpl, _ = sjson.SetBytes(tmpl, tamper.path, tamper.value)
						}
						_, _ = w.Write(mustJSON(map[string]any{"room_version": "10", "event": json.RawMessage(tmpl)}))
					})
					mux.HandleFunc("/_matrix/federation/v2/send_leave/", func(w http.ResponseWriter, r *http.Request) {
						sendLeaves.Add(1)
						_, _ = w.Write([]byte(`{}`))
					})
				})
				err := a.HS.Federation.LeaveRemote(context.Background(), "!room:"+evil, a.user("alice"), []string{evil})
				if tamper.path == "" {
					if err != nil || sendLeaves.Load() != 1 {
						t.Fatalf("leave through an honest template: %v, %d send_leave calls", err, sendLeaves.Load())
					}
					return
				}
				if err == nil || !strings.Contains(err.Error(), "aborted") {
					t.Fatalf("leave through a tampering server: %v", err)
				}
				if sendLeaves.Load() != 0 {
					t.Fatalf("send_leave was called")
				}
			})
		}
	})
}
