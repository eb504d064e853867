package syncapi_test

import (
	"context"
	"maps"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/syncapi"
)

// TestStreamTouchedMatchesRoomsWithEvents: on a real database, every
// window's rooms and state flags built from StreamTouched equal
// RoomsWithEvents' answer, which is what makes the waker's seed exact.
func TestStreamTouchedMatchesRoomsWithEvents(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		r1 := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		r2 := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "public_chat"})
		start, err := srv.HS.Rooms.StreamPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sendText(t, srv, alice, r1, "one")
		membership(t, srv, "join", bob, bob.id, r1)
		sendText(t, srv, bob, r2, "two")
		sendState(t, srv, alice, r1, "m.room.topic", "", `{"topic":"t"}`)
		sendText(t, srv, alice, r1, "three")
		end, err := srv.HS.Rooms.StreamPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for from := int64(0); from < end; from++ {
			for _, to := range []int64{from + 1, start, end} {
				if to <= from {
					continue
				}
				touched, err := srv.HS.Rooms.StreamTouched(ctx, from, to, 1000)
				if err != nil {
					t.Fatal(err)
				}
				want, complete, err := srv.HS.Rooms.RoomsWithEvents(ctx, from, to, 1000)
				if err != nil || !complete {
					t.Fatalf("RoomsWithEvents(%d,%d): %v, complete %v", from, to, err, complete)
				}
				if got := syncapi.NewsOf(touched); !maps.Equal(got, want) {
					t.Fatalf("window (%d,%d]: from StreamTouched %v, RoomsWithEvents %v", from, to, got, want)
				}
				for _, tc := range touched {
					if !tc.Accepted {
						t.Fatalf("event %d of these accepted sends is not accepted", tc.StreamPos)
					}
				}
			}
		}
		// bob's join is a member touch naming bob.
		touched, _ := srv.HS.Rooms.StreamTouched(ctx, start, end, 1000)
		found := false
		for _, tc := range touched {
			found = found || (tc.RoomID == r1 && tc.Member == bob.id && tc.State)
		}
		if !found {
			t.Fatalf("bob's join missing from %+v", touched)
		}
	})
}
