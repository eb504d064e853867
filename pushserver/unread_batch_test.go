package pushserver_test

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/pushserver"
	"github.com/myelin-chat/myelin/storage"
)

// TestUnreadCountsOfUsers: one query for several users answers each of
// them exactly what UnreadCountsAt answers alone — their own counts,
// threads included, past their own receipts, for the rooms they asked
// for only (never a room another user of the batch asked for), and an
// empty answer for a user who asks for no room.
func TestUnreadCountsOfUsers(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob, carol := register(t, srv, "alice"), register(t, srv, "bob"), register(t, srv, "carol")
		first := room(t, alice, bob, carol)
		second := room(t, alice, bob, carol)
		root := alice.text(t, first, "root")
		alice.send(t, first, "m.room.message", map[string]any{"msgtype": "m.text", "body": "bob: in thread",
			"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root},
			"m.mentions":   map[string]any{"user_ids": []string{bob.id}}})
		read := alice.text(t, second, "two")
		alice.text(t, second, "three")
		// Carol has read part of the second room; bob has not.
		carol.must(t, http.MethodPost, "/_matrix/client/v3/rooms/"+esc(second)+"/receipt/m.read/"+esc(read), map[string]any{})
		carol.wantCounts(t, second, 1, 0) // the consumers have caught up
		bob.wantCounts(t, second, 2, 0)

		push := srv.HS.Push
		queries := []pushserver.UnreadQuery{
			{UserID: bob.id, RoomIDs: []string{first, second}},
			{UserID: carol.id, RoomIDs: []string{second}}, // not first: bob's room must not leak in
			{UserID: alice.id, RoomIDs: []string{first}},  // her own messages: nothing
			{UserID: bob.id, RoomIDs: []string{first}},    // a second device of bob's, fewer rooms
			{UserID: carol.id, RoomIDs: nil},
		}
		got, counted, err := push.UnreadCountsOfUsers(ctx, queries, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(queries) {
			t.Fatalf("%d answers for %d queries", len(got), len(queries))
		}
		for i, q := range queries {
			want, wantCounted, err := push.UnreadCountsAt(ctx, q.UserID, q.RoomIDs, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got[i], want) {
				t.Errorf("query %d (%s %v): batched %+v, alone %+v", i, q.UserID, q.RoomIDs, got[i], want)
			}
			if counted != wantCounted {
				t.Errorf("counted %d, alone %d", counted, wantCounted)
			}
		}
		// The answers above are not all empty: the comparison means something.
		if got[0][first].Total.Notifications != 2 || got[0][first].Total.Highlights != 1 || len(got[0][first].Threads) != 1 ||
			got[0][second].Total.Notifications != 2 || got[1][second].Total.Notifications != 1 {
			t.Errorf("counts: bob %+v, carol %+v", got[0], got[1])
		}
		if _, leaked := got[1][first]; leaked {
			t.Errorf("carol got the counts of a room only bob asked for: %+v", got[1])
		}
		if len(got[4]) != 0 {
			t.Errorf("a query for no room got %+v", got[4])
		}
	})
}

// TestUnreadCountsOfUsersLongLists: past the short lists unreadOfUsers
// scans (more than 8 queries, more than 8 rooms in the union and in one
// query), every query still gets exactly UnreadCountsAt's answer.
func TestUnreadCountsOfUsersLongLists(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob, carol := register(t, srv, "alice"), register(t, srv, "bob"), register(t, srv, "carol")
		first := room(t, alice, bob, carol)
		second := room(t, alice, bob)
		alice.text(t, first, "one")
		alice.text(t, second, "two")
		alice.text(t, second, "three")
		bob.wantCounts(t, second, 2, 0)
		carol.wantCounts(t, first, 1, 0)

		var many []string // rooms nobody is in, around the two real ones
		for i := range 12 {
			many = append(many, fmt.Sprintf("!none%d:localhost", i))
		}
		bobRooms := append(append(slices.Clone(many[:6]), second), append(many[6:], first)...)
		var queries []pushserver.UnreadQuery
		for i := range 10 {
			queries = append(queries, pushserver.UnreadQuery{UserID: fmt.Sprintf("@ghost%d:localhost", i), RoomIDs: many[i : i+2]})
		}
		queries = append(queries,
			pushserver.UnreadQuery{UserID: bob.id, RoomIDs: bobRooms},
			pushserver.UnreadQuery{UserID: carol.id, RoomIDs: []string{second, first}}, // second: not carol's
			pushserver.UnreadQuery{UserID: bob.id, RoomIDs: []string{first}},
		)
		got, _, err := srv.HS.Push.UnreadCountsOfUsers(ctx, queries, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i, q := range queries {
			want, _, err := srv.HS.Push.UnreadCountsAt(ctx, q.UserID, q.RoomIDs, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got[i], want) {
				t.Errorf("query %d (%s, %d rooms): batched %+v, alone %+v", i, q.UserID, len(q.RoomIDs), got[i], want)
			}
		}
		if got[10][second].Total.Notifications != 2 || got[10][first].Total.Notifications != 1 ||
			got[11][first].Total.Notifications != 1 || got[12][first].Total.Notifications != 1 {
			t.Errorf("counts: bob %+v, carol %+v, bob's second query %+v", got[10], got[11], got[12])
		}
	})
}

// TestUnreadOfUsersAllocations: the read a woken long poll makes alone
// (one user, one room) allocates for its answer and the database, not
// for indexing two short lists and formatting the query (main: 35).
func TestUnreadOfUsersAllocations(t *testing.T) {
	srv := testserver.Start(t, storage.SQLite, pushConfig)
	ctx := context.Background()
	alice, bob := register(t, srv, "alice"), register(t, srv, "bob")
	r := room(t, alice, bob)
	alice.text(t, r, "one")
	bob.wantCounts(t, r, 1, 0)
	queries := []pushserver.UnreadQuery{{UserID: bob.id, RoomIDs: []string{r}}}
	allocs := testing.AllocsPerRun(50, func() {
		got, _, err := srv.HS.Push.UnreadCountsOfUsers(ctx, queries, 0)
		if err != nil || got[0][r].Total.Notifications != 1 {
			t.Fatalf("%+v %v", got, err)
		}
	})
	t.Logf("%.0f allocations", allocs)
	if allocs > 30 {
		t.Errorf("%.0f allocations per read, want at most 30", allocs)
	}
}
