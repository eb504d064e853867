package federationapi_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/storage"
)

// TestSenderBackoffEndsWhenDestinationAnswers: a destination A backs off
// from (a /send failed) is sent its queue as soon as it answers another
// request of A's with a 2xx, not at the retry time; an error answer
// leaves the backoff as it is. Complement's TestPartialStateJoin ("Leave
// during resync/succeeds, then rejoin succeeds without resync
// completing") failed on this: its server reused the port, hence the
// name, of an earlier one that went away with a transaction in flight,
// and the leave it waited for sat 40 s behind that backoff although
// make_join, send_join and state_ids to the new server had all worked.
// Synapse clears a destination's backoff on any successful request to it.
// Spec: server-server-api, "Transactions" (retrying is the sender's
// choice; the destination is up).
func TestSenderBackoffEndsWhenDestinationAnswers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		// A backoff far longer than the test: only the answer can end it.
		n.editEachConfig = func(cfg *config.Config) {
			cfg.Federation.MinBackoff = config.Duration(10 * time.Minute)
			cfg.Federation.MaxBackoff = config.Duration(10 * time.Minute)
		}
		a, f, alice, roomID := fakeDestination(t, n)
		failures := func() int {
			var n int
			if err := a.HS.DB.Reader().QueryRow(ctx, `SELECT failures FROM federation_destinations WHERE server_name = $1`,
				f.name).Scan(&n); err != nil && !storage.IsNoRows(err) {
				t.Fatal(err)
			}
			return n
		}
		// The first /send fails as if the server were gone; later ones pass.
		refused := false
		f.mu.Lock()
		f.sendGate = func(*http.Request) int {
			f.mu.Lock()
			defer f.mu.Unlock()
			if !refused {
				refused = true
				return http.StatusServiceUnavailable
			}
			return http.StatusOK
		}
		f.mu.Unlock()
		ev := sendText(t, a, roomID, alice, "queued behind a backoff")
		delivered := func() bool {
			for _, txn := range f.attempts() {
				for _, raw := range txn.pdus {
					if string(eventIDOf(t, a, raw)) == ev && txn.status == http.StatusOK {
						return true
					}
				}
			}
			return false
		}
		eventually(t, "A to back off from F", func() bool { return failures() == 1 })

		// An error answer proves nothing of F's health for A's purposes:
		// the backoff stays (F's mux has no profile handler: 404).
		if _, err := a.HS.Federation.QueryProfile(ctx, "@nobody:"+f.name, ""); err == nil {
			t.Fatal("profile query answered 404 by F: want an error")
		}
		time.Sleep(300 * time.Millisecond)
		if delivered() || failures() != 1 {
			t.Fatalf("after a 404 answer: delivered %v, failures %d; want the event still held, failures 1", delivered(), failures())
		}

		// A 2xx answer: F is up, and the queue goes now.
		f.mux.HandleFunc("/_matrix/federation/v1/publicRooms", func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(`{"chunk":[],"total_room_count_estimate":0}`))
		})
		if _, err := a.HS.Federation.RemotePublicRooms(ctx, f.name, 10, "", "", false, ""); err != nil {
			t.Fatalf("public rooms of F: %v", err)
		}
		eventually(t, "the held event to reach F once F answered", delivered)
		eventually(t, "A's backoff for F to be reset", func() bool { return failures() == 0 })
	})
}
