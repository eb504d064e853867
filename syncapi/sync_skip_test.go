package syncapi_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// TestSyncIncrementalUnreadOnlyWhereMoved: an incremental sync carries
// unread_notifications for a room with new events, and leaves them out
// for a room that is only there for typing (its counts cannot have
// moved); a receipt sends them again.
func TestSyncIncrementalUnreadOnlyWhereMoved(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		busy := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		quiet := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", bob, bob.id, busy)
		membership(t, srv, "join", bob, bob.id, quiet)
		sendText(t, srv, alice, quiet, "earlier")
		first := syncOK(t, srv, bob, "timeout=0")
		if n := dig(first, "rooms", "join", quiet, "unread_notifications", "notification_count"); n != float64(1) {
			t.Fatalf("initial sync: quiet room count %v, want 1", n)
		}

		sendText(t, srv, alice, busy, "hello")
		if _, err := alice.client.UserTyping(ctx, id.RoomID(quiet), true, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		inc := syncOK(t, srv, bob, "timeout=0&since="+url.QueryEscape(first["next_batch"].(string)))
		if n := dig(inc, "rooms", "join", busy, "unread_notifications", "notification_count"); n != float64(1) {
			t.Errorf("busy room count %v, want 1", n)
		}
		if dig(inc, "rooms", "join", quiet) == nil {
			t.Fatalf("quiet room missing although alice typed in it: %v", inc)
		}
		if u := dig(inc, "rooms", "join", quiet, "unread_notifications"); u != nil {
			t.Errorf("quiet room carries unread_notifications %v, though nothing moved its counts", u)
		}

		// Bob reads the quiet room: the receipt moves its count to 0.
		evs := dig(first, "rooms", "join", quiet, "timeline", "events").([]any)
		last := evs[len(evs)-1].(map[string]any)["event_id"].(string)
		if err := bob.client.MarkRead(ctx, id.RoomID(quiet), id.EventID(last)); err != nil {
			t.Fatal(err)
		}
		read := syncOK(t, srv, bob, "timeout=0&since="+url.QueryEscape(inc["next_batch"].(string)))
		if n := dig(read, "rooms", "join", quiet, "unread_notifications", "notification_count"); n != float64(0) {
			t.Errorf("after the receipt: quiet room count %v, want 0 (%v)", n, dig(read, "rooms", "join", quiet))
		}
	})
}

// TestSyncToDeviceBacklogWithoutNewMessages: more to-device messages
// than one response carries keep coming in later responses although the
// to-device head does not move between them, and the last token still
// acknowledges them all.
func TestSyncToDeviceBacklogWithoutNewMessages(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		for i := 1; i <= 105; i++ {
			sendToDevice(t, srv, alice, bob, fmt.Sprint("t", i), i)
		}
		first := syncOK(t, srv, bob, "timeout=0")
		if got := toDeviceNs(t, dig(first, "to_device", "events"), alice.id); len(got) != 100 || got[99] != 100 {
			t.Fatalf("first response: %d messages, want 1..100", len(got))
		}
		second := syncOK(t, srv, bob, "timeout=0&since="+url.QueryEscape(first["next_batch"].(string)))
		if got := toDeviceNs(t, dig(second, "to_device", "events"), alice.id); len(got) != 5 || got[0] != 101 {
			t.Fatalf("second response: %v, want 101..105", got)
		}
		third := syncOK(t, srv, bob, "timeout=0&since="+url.QueryEscape(second["next_batch"].(string)))
		if got := toDeviceNs(t, dig(third, "to_device", "events"), alice.id); len(got) != 0 {
			t.Fatalf("third response: %v, want none", got)
		}
		if left, _, err := srv.HS.KeyServer.ToDeviceSince(ctx, bob.id, deviceOf(bob), 0); err != nil || len(left) != 0 {
			t.Errorf("%d messages still stored (%v) after a token past all of them", len(left), err)
		}
	})
}
