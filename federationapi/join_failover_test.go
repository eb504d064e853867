package federationapi_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
)

// TestJoinTriesCandidateServersInTurn: a remote join asks the candidate
// servers in the order given, going on past one that cannot be reached
// and one that answers make_join with an error, and joins through the
// first that works; with none working, the join fails with nothing
// stored. Issue 7, "make_join from candidate servers in turn".
// Spec: server-server-api, "Joining Rooms".
func TestJoinTriesCandidateServersInTurn(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		roomID := publicRoom(t, a, a.user("alice"))
		var asked atomic.Int32
		failing, _ := n.fakeServer(t, func(_ string, mux *http.ServeMux) {
			mux.HandleFunc("/_matrix/federation/v1/make_join/", func(w http.ResponseWriter, r *http.Request) {
				asked.Add(1)
				http.Error(w, `{"errcode":"M_UNKNOWN","error":"not today"}`, http.StatusInternalServerError)
			})
		})
		bob := b.user("bob")
		if _, err := b.HS.Federation.JoinRemote(ctx, roomID, bob, []string{"localhost:1", failing}); err == nil {
			t.Fatalf("a join with no working server succeeded")
		}
		if m, _ := b.HS.Rooms.Membership(ctx, roomID, bob); m != "" {
			t.Fatalf("after a failed join B has bob as %q", m)
		}
		if asked.Load() != 1 {
			t.Fatalf("the failing server was asked %d times, want once", asked.Load())
		}
		if _, err := b.HS.Federation.JoinRemote(ctx, roomID, bob, []string{"localhost:1", failing, a.Name}); err != nil {
			t.Fatalf("join with a working third candidate: %v", err)
		}
		if asked.Load() != 2 {
			t.Fatalf("the failing server was asked %d times in all, want twice (once per join)", asked.Load())
		}
		eventually(t, "A to see bob join", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, roomID, bob)
			return m == "join"
		})
		if m, _ := b.HS.Rooms.Membership(ctx, roomID, bob); m != "join" {
			t.Fatalf("B has bob as %q after the join", m)
		}
	})
}
