package syncapi_test

import (
	"encoding/json"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// roomAccountData returns the content of the account data event of type
// typ in a joined room of a /sync response, or nil.
func roomAccountData(body map[string]any, roomID, typ string) map[string]any {
	evs, _ := path(body, "rooms", "join", roomID, "account_data", "events").([]any)
	for _, e := range evs {
		if ev, _ := e.(map[string]any); ev["type"] == typ {
			content, _ := ev["content"].(map[string]any)
			return content
		}
	}
	return nil
}

// TestRoomTagsReachSync: a tag set through the tag endpoints wakes a
// waiting /sync long poll, which gives the room's m.tag in
// rooms.join.<room>.account_data; removing it does the same with the tag
// gone; an initial /sync has the tags too.
// Spec: client-server-api, "Room Tagging", "Events": "The tags on a room
// are received as single m.tag event in the account_data section of a
// room."
func TestRoomTagsReachSync(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
		tagPath := "/_matrix/client/v3/user/" + url.PathEscape(alice.id) + "/rooms/" + url.PathEscape(roomID) + "/tags/"
		_, first := rawSync(t, srv, alice, "")
		since, _ := first["next_batch"].(string)
		if roomAccountData(first, roomID, "m.tag") != nil {
			t.Fatalf("m.tag before any tag: %v", first)
		}

		// longPoll starts a /sync from since, waits until it is waiting,
		// calls act, and returns the woken response and how long it took.
		longPoll := func(act func()) (map[string]any, time.Duration) {
			t.Helper()
			type result struct {
				code int
				body map[string]any
			}
			done := make(chan result, 1)
			waitingBefore := srv.HS.Sync.Waiting()
			go func() {
				code, body := rawSync(t, srv, alice, "timeout=20000&since="+url.QueryEscape(since))
				done <- result{code, body}
			}()
			for deadline := time.Now().Add(20 * time.Second); srv.HS.Sync.Waiting() <= waitingBefore; time.Sleep(time.Millisecond) {
				select {
				case r := <-done:
					t.Fatalf("sync returned before anything happened: %d %v", r.code, r.body)
				default:
				}
				if time.Now().After(deadline) {
					t.Fatal("the long poll never started waiting")
				}
			}
			start := time.Now()
			act()
			r := <-done
			if r.code != 200 {
				t.Fatalf("woken sync: %d %v", r.code, r.body)
			}
			since, _ = r.body["next_batch"].(string)
			return r.body, time.Since(start)
		}

		body, took := longPoll(func() {
			if code, resp := rawRequest(t, srv, alice, "PUT", tagPath+"m.favourite", `{"order": 0.25}`); code != 200 {
				t.Fatalf("PUT tag: %d %v", code, resp)
			}
		})
		tags, _ := json.Marshal(roomAccountData(body, roomID, "m.tag"))
		if string(tags) != `{"tags":{"m.favourite":{"order":0.25}}}` {
			t.Errorf("woken sync m.tag = %s, body %v", tags, body)
		}
		if took > 10*time.Second {
			t.Errorf("the long poll took %v to wake: the tag did not wake it", took)
		}

		body, _ = longPoll(func() {
			if code, resp := rawRequest(t, srv, alice, "PUT", tagPath+"u.work", `{}`); code != 200 {
				t.Fatalf("PUT tag: %d %v", code, resp)
			}
		})
		tags, _ = json.Marshal(roomAccountData(body, roomID, "m.tag"))
		if string(tags) != `{"tags":{"m.favourite":{"order":0.25},"u.work":{}}}` {
			t.Errorf("second woken sync m.tag = %s", tags)
		}

		body, _ = longPoll(func() {
			if code, resp := rawRequest(t, srv, alice, "DELETE", tagPath+"m.favourite", ""); code != 200 {
				t.Fatalf("DELETE tag: %d %v", code, resp)
			}
		})
		tags, _ = json.Marshal(roomAccountData(body, roomID, "m.tag"))
		if string(tags) != `{"tags":{"u.work":{}}}` {
			t.Errorf("woken sync after DELETE m.tag = %s", tags)
		}

		_, initial := rawSync(t, srv, alice, "")
		tags, _ = json.Marshal(roomAccountData(initial, roomID, "m.tag"))
		if string(tags) != `{"tags":{"u.work":{}}}` {
			t.Errorf("initial sync m.tag = %s", tags)
		}
	})
}

// TestSlidingSyncTagFilters: a sliding sync list's tags filter keeps the
// rooms with at least one of the tags, not_tags drops the rooms with any
// of them, and not_tags wins when a room matches both; tags set and
// removed through the tag endpoints change the lists at once.
// Spec: MSC4186, SlidingRoomFilter tags and not_tags.
func TestSlidingSyncTagFilters(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		fav := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
		low := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
		both := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
		plain := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
		tag := func(method, roomID, name string) {
			t.Helper()
			p := "/_matrix/client/v3/user/" + url.PathEscape(alice.id) + "/rooms/" + url.PathEscape(roomID) + "/tags/" + name
			body := ""
			if method == "PUT" {
				body = `{}`
			}
			if code, resp := rawRequest(t, srv, alice, method, p, body); code != 200 {
				t.Fatalf("%s %s: %d %v", method, p, code, resp)
			}
		}
		tag("PUT", fav, "m.favourite")
		tag("PUT", low, "m.lowpriority")
		tag("PUT", both, "m.favourite")
		tag("PUT", both, "u.work")
		tag("PUT", plain, "u.gone")
		tag("DELETE", plain, "u.gone")

		for _, c := range []struct {
			name    string
			filters map[string]any
			want    []string
		}{
			{"no filter", map[string]any{}, sorted(fav, low, both, plain)},
			{"tags favourite", map[string]any{"tags": []string{"m.favourite"}}, sorted(fav, both)},
			{"tags favourite or low", map[string]any{"tags": []string{"m.favourite", "m.lowpriority"}}, sorted(fav, low, both)},
			{"not_tags low", map[string]any{"not_tags": []string{"m.lowpriority"}}, sorted(fav, both, plain)},
			{"not_tags favourite and low", map[string]any{"not_tags": []string{"m.favourite", "m.lowpriority"}}, []string{plain}},
			{"not_tags wins", map[string]any{"tags": []string{"m.favourite"}, "not_tags": []string{"u.work"}}, []string{fav}},
			{"removed tag", map[string]any{"tags": []string{"u.gone"}}, nil},
		} {
			if got := slidingList(t, srv, alice, c.filters); !slices.Equal(got, c.want) {
				t.Errorf("%s: rooms %v, want %v", c.name, got, c.want)
			}
		}

		tag("DELETE", both, "m.favourite")
		if got := slidingList(t, srv, alice, map[string]any{"tags": []string{"m.favourite"}}); !slices.Equal(got, []string{fav}) {
			t.Errorf("tags favourite after untagging: %v, want [%s]", got, fav)
		}
	})
}
