package clientapi_test

import (
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// TestSyncPresenceWrites: set_presence from sync marks the user online
// or idle, leaves presence alone for offline, keeps the status message,
// and writes only when something changed.
// Spec: client-server-api, "GET /_matrix/client/v3/sync" set_presence,
// "Presence", "Last active ago".
func TestSyncPresenceWrites(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		api := srv.HS.ClientAPI
		alice := newUser(t, srv, "alice")
		uid := alice.id.String()
		state := func() (presence string, status *string, lastActive, head int64) {
			t.Helper()
			err := srv.HS.DB.Reader().QueryRow(bg, `SELECT presence, status_msg, last_active_ts FROM presence WHERE user_id = $1`, uid).
				Scan(&presence, &status, &lastActive)
			if err != nil && !storage.IsNoRows(err) {
				t.Fatal(err)
			}
			_, head, err = api.PresenceSince(bg, 0)
			ok(t, "presence head", err)
			return
		}
		setLastActive := func(ago time.Duration) {
			t.Helper()
			err := srv.HS.DB.Write(bg, func(tx storage.Tx) error {
				_, err := tx.Exec(bg, `UPDATE presence SET last_active_ts = $1 WHERE user_id = $2`, time.Now().Add(-ago).UnixMilli(), uid)
				return err
			})
			ok(t, "backdating last_active_ts", err)
			api.ForgetSyncedPresence()
		}

		ok(t, "sync offline", api.SyncPresence(bg, uid, "offline"))
		if p, _, _, _ := state(); p != "" {
			t.Fatalf("set_presence=offline stored presence %q", p)
		}
		ok(t, "sync online", api.SyncPresence(bg, uid, "online"))
		p, _, active1, head1 := state()
		if p != "online" || head1 == 0 {
			t.Fatalf("after sync: presence %q head %d", p, head1)
		}
		ok(t, "sync online again", api.SyncPresence(bg, uid, "online"))
		if _, _, active, head := state(); head != head1 || active != active1 {
			t.Fatalf("an unchanged presence was written: head %d -> %d, last active %d -> %d", head1, head, active1, active)
		}

		// Still currently active: last_active_ts refreshes in place.
		setLastActive(2 * time.Minute)
		ok(t, "sync online, refresh", api.SyncPresence(bg, uid, "online"))
		if _, _, active, head := state(); head != head1 || time.Now().UnixMilli()-active > 10000 {
			t.Fatalf("refresh: head %d -> %d (want unchanged), last active %dms ago", head1, head, time.Now().UnixMilli()-active)
		}
		// No longer currently active: becoming active again is news.
		setLastActive(10 * time.Minute)
		ok(t, "sync online, reactivate", api.SyncPresence(bg, uid, "online"))
		_, _, _, head2 := state()
		if head2 <= head1 {
			t.Fatalf("becoming currently active again did not move the stream (%d -> %d)", head1, head2)
		}

		// A status message set by PUT survives sync's changes.
		ok(t, "put presence", alice.SetPresence(bg, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "busy"}))
		ok(t, "sync unavailable", api.SyncPresence(bg, uid, "unavailable"))
		p, status, _, head3 := state()
		if p != "unavailable" || status == nil || *status != "busy" || head3 <= head2 {
			t.Fatalf("after set_presence=unavailable: %q status %v head %d (was %d)", p, status, head3, head2)
		}
		ok(t, "sync offline", api.SyncPresence(bg, uid, "offline"))
		if p, _, _, head := state(); p != "unavailable" || head != head3 {
			t.Fatalf("set_presence=offline changed presence to %q (head %d -> %d)", p, head3, head)
		}
	})
}
