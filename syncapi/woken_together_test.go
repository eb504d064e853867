package syncapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/syncapi"
)

// TestWokenTogetherSameAsAlone: long polls woken together by one
// message share reads (the lazy-loaded members, the key counts), yet
// each gets what its user would get alone: the sender its
// transaction_id, a user who ignores the sender nothing of the message,
// a user with another filter that filter's view, and a user who joined
// late (history visibility "joined") the same as the others. Each woken
// response's room and key-count sections are compared with the same
// sync computed alone afterwards (unsigned.age aside, which follows the
// clock).
func TestWokenTogetherSameAsAlone(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		sender := newUser(t, srv, "sender")
		plain := newUser(t, srv, "plain")
		ignorer := newUser(t, srv, "ignorer")
		filtered := newUser(t, srv, "filtered")
		late := newUser(t, srv, "late")
		leaver := newUser(t, srv, "leaver")
		joinsLater := newUser(t, srv, "joinslater")
		invitedLater := newUser(t, srv, "invitedlater")
		room := createRoom(t, srv, sender, roomserver.CreateRoomRequest{Preset: "public_chat"})
		sendState(t, srv, sender, room, "m.room.history_visibility", "", `{"history_visibility":"joined"}`)
		for _, u := range []*user{plain, ignorer, filtered, leaver} {
			membership(t, srv, "join", u, u.id, room)
		}
		sendText(t, srv, sender, room, "before the late join")
		membership(t, srv, "join", late, late.id, room)
		if err := ignorer.client.SetAccountData(ctx, "m.ignored_user_list", map[string]any{
			"ignored_users": map[string]any{sender.id: map[string]any{}}}); err != nil {
			t.Fatal(err)
		}
		lazy := `{"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]},"room":{"rooms":["` + room +
			`"],"timeline":{"limit":100,"types":["m.room.message"]},"state":{"lazy_load_members":true,"include_redundant_members":true},` +
			`"ephemeral":{"not_types":["*"]},"account_data":{"not_types":["*"]}}}`
		filters := map[*user]string{
			sender: lazy, plain: lazy, ignorer: lazy, late: lazy, leaver: lazy, joinsLater: lazy, invitedLater: lazy,
			filtered: `{"presence":{"not_types":["*"]},"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true,"include_redundant_members":true}}}`,
		}
		users := []*user{sender, plain, ignorer, filtered, late}
		// The push consumer counts the events so far, and the waker
		// dispatches those counts, before the tokens are taken and the
		// long polls wait: no count of them wakes the long polls below
		// (however long a loaded machine makes either take).
		countsCaughtUp(t, srv)
		since := map[*user]string{}
		for _, u := range users {
			status, body := rawSync(t, srv, u, "filter="+url.QueryEscape(filters[u]))
			if status != http.StatusOK {
				t.Fatalf("initial sync of %s: %d %v", u.id, status, body)
			}
			since[u] = body["next_batch"].(string)
		}
		woken := make([]map[string]any, len(users))
		// The long polls read their memberships to register in one
		// grouped read (not from the memo, which the initial syncs
		// filled: the woken responses then take them from it).
		srv.HS.Sync.DropMembershipsMemo()
		queued, releaseMemberships := srv.HS.Sync.HoldMemberships()
		var wg sync.WaitGroup
		for i, u := range users {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A timeout far beyond the test's steps: a long poll that
				// timed out before the send (3 s may, on a loaded machine)
				// computes without the message.
				_, woken[i] = rawSync(t, srv, u, "timeout=30000&since="+url.QueryEscape(since[u])+"&filter="+url.QueryEscape(filters[u]))
			}()
		}
		holdUntil(t, "memberships", queued, len(users))
		releaseMemberships()
		// Every request waits for a wake-up: none is still computing an
		// answer (a request whose token trails some head computes once
		// before it waits), which would queue in the held reads below
		// before the message is in. A fixed 300 ms sleep left that to
		// the scheduler.
		for deadline := time.Now().Add(20 * time.Second); srv.HS.Sync.Parked() < len(users) || !srv.HS.Sync.WakerCaughtUp(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d long polls waiting", srv.HS.Sync.Parked(), len(users))
			}
		}
		// The woken requests' member and key counts reads wait for one
		// grouped read each (every user's own member key; every device).
		waiting, releaseTimelines, release := srv.HS.Sync.HoldSharedReads(room)
		if status, body := rawRequest(t, srv, sender, http.MethodPut, "/_matrix/client/v3/rooms/"+url.PathEscape(room)+
			"/send/m.room.message/txn-together", `{"msgtype":"m.text","body":"together"}`); status != http.StatusOK {
			t.Fatalf("send: %d %v", status, body)
		}
		deadline := time.Now().Add(20 * time.Second)
		for _, k, tl := waiting(); k < len(users) || tl < len(users); _, k, tl = waiting() {
			if time.Now().After(deadline) {
				t.Fatalf("%d devices and %d timelines queued, want %d each", k, tl, len(users))
			}
			time.Sleep(time.Millisecond)
		}
		// The lazy-loaded members are read once the timeline is.
		releaseTimelines()
		for m, _, _ := waiting(); m < len(users); m, _, _ = waiting() {
			if time.Now().After(deadline) {
				t.Fatalf("%d member keys queued, want %d", m, len(users))
			}
			time.Sleep(time.Millisecond)
		}
		release()
		wg.Wait()
		for i, u := range users {
			got := woken[i]
			next, _ := got["next_batch"].(string)
			sameAsAlone(t, srv, u, since[u], filters[u], room, got)
			since[u] = next
			// The key counts are the device's own, as the key server
			// gives them for it alone.
			otk, fallback, err := srv.HS.KeyServer.KeyCounts(ctx, u.id, string(u.client.DeviceID))
			if err != nil {
				t.Fatal(err)
			}
			wantKeys, _ := json.Marshal(map[string]any{"otk": otk, "fallback": fallback})
			gotKeys, _ := json.Marshal(map[string]any{"otk": got["device_one_time_keys_count"], "fallback": got["device_unused_fallback_key_types"]})
			if string(gotKeys) != string(wantKeys) {
				t.Errorf("%s woken got the key counts %s, want %s", u.id, gotKeys, wantKeys)
			}
			// And the per-user parts are there at all.
			evs, _ := dig(got, "rooms", "join", room, "timeline", "events").([]any)
			switch u {
			case ignorer:
				if len(evs) != 0 {
					t.Errorf("the ignorer got %v", evs)
				}
			case sender:
				if len(evs) != 1 || dig(evs[0].(map[string]any), "unsigned", "transaction_id") != "txn-together" {
					t.Errorf("the sender got %v, want the message with its transaction_id", evs)
				}
			default:
				if len(evs) != 1 || dig(evs[0].(map[string]any), "unsigned", "transaction_id") != nil {
					t.Errorf("%s got %v, want the message without a transaction_id", u.id, evs)
				}
			}
			if u != ignorer {
				members := map[string]bool{}
				state, _ := dig(got, "rooms", "join", room, "state", "events").([]any)
				for _, e := range state {
					members[e.(map[string]any)["state_key"].(string)] = true
				}
				if len(members) != len(map[string]bool{u.id: true, sender.id: true}) || !members[u.id] || !members[sender.id] {
					t.Errorf("%s got the lazy-loaded members %v, want its own and the sender's", u.id, members)
				}
			}
		}
		groupedTimelines(t, srv, room, since, filters, sender, plain, ignorer, filtered, late, leaver, joinsLater, invitedLater)
	})
}

// countsCaughtUp waits until the push consumer has counted every event
// of the room stream so far (UnreadCountsStream at the stream's head)
// and the waker has dispatched both streams: from then on, until the
// next event, nothing wakes a long poll of the room.
func countsCaughtUp(t *testing.T, srv *testserver.Server) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		pos := srv.HS.Notifier.Positions()
		if pos[syncapi.UnreadCountsStream] >= pos[roomserver.Stream] && srv.HS.Sync.WakerCaughtUp() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the push consumer counted up to %d, the room stream is at %d", pos[syncapi.UnreadCountsStream], pos[roomserver.Stream])
		}
		time.Sleep(time.Millisecond)
	}
}

// holdUntil waits until queued reports n requests, at most 20 s.
func holdUntil(t *testing.T, what string, queued func() int, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for got := queued(); got < n; got = queued() {
		if time.Now().After(deadline) {
			t.Fatalf("%d %s reads queued, want %d", got, what, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// sameAsAlone checks that got, the response u received to an
// incremental sync from since with filter, is what the same sync
// computed alone now gives (next_batch, unsigned.age and the joined
// room's unread counts aside: they follow the clock and the push
// consumer).
func sameAsAlone(t *testing.T, srv *testserver.Server, u *user, since, filter, room string, got map[string]any) {
	t.Helper()
	alone, err := srv.HS.Sync.SyncJSON(context.Background(), u.id, string(u.client.DeviceID),
		"timeout=3000&since="+url.QueryEscape(since)+"&filter="+url.QueryEscape(filter), time.Now(), false)
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	if err := json.Unmarshal(alone, &want); err != nil {
		t.Fatal(err)
	}
	for _, m := range []map[string]any{got, want} {
		delete(m, "next_batch")
		if j, _ := dig(m, "rooms", "join", room).(map[string]any); j != nil {
			delete(j, "unread_notifications") // the counts consumer commits on its own time
		}
		dropAges(m)
	}
	if !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Errorf("%s together with the others:\n%s\nalone:\n%s", u.id, g, w)
	}
}

// groupedTimelines is the second part of TestWokenTogetherSameAsAlone:
// incremental syncs computed at the same room head read the room's
// timeline in one grouped read (timelineBatcher), each from its own
// token, yet each gets its own user's view: a user who joined within
// the window under "joined" history visibility and one invited and
// joined within it under "invited" visibility see only the events
// their visibility allows, with their own unsigned.membership; the
// ignorer nothing of the sender; the sender its own messages; a user
// who left within the window its timeline up to the leave.
func groupedTimelines(t *testing.T, srv *testserver.Server, room string, since, filters map[*user]string,
	sender, plain, ignorer, filtered, late, leaver, joinsLater, invitedLater *user) {
	for _, u := range []*user{leaver, joinsLater, invitedLater} {
		status, body := rawSync(t, srv, u, "filter="+url.QueryEscape(filters[u]))
		if status != http.StatusOK {
			t.Fatalf("initial sync of %s: %d %v", u.id, status, body)
		}
		since[u] = body["next_batch"].(string)
	}
	// The window every sync below reads: history visibility "joined",
	// then "invited".
	sendText(t, srv, sender, room, "p2 before")
	membership(t, srv, "join", joinsLater, joinsLater.id, room)
	sendText(t, srv, sender, room, "p2 after the join")
	sendState(t, srv, sender, room, "m.room.history_visibility", "", `{"history_visibility":"invited"}`)
	membership(t, srv, "invite", sender, invitedLater.id, room)
	sendText(t, srv, sender, room, "p2 after the invite")
	membership(t, srv, "join", invitedLater, invitedLater.id, room)
	membership(t, srv, "leave", leaver, leaver.id, room)
	sendText(t, srv, sender, room, "p2 last")

	joined := []*user{sender, plain, ignorer, filtered, late, joinsLater, invitedLater}
	users := append(slices.Clone(joined), leaver)
	got := make([]map[string]any, len(users))
	// Not from the memo: one grouped read of every user's memberships.
	srv.HS.Sync.DropMembershipsMemo()
	queued, releaseMemberships := srv.HS.Sync.HoldMemberships()
	waiting, releaseTimelines, release := srv.HS.Sync.HoldSharedReads(room)
	var wg sync.WaitGroup
	for i, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var status int
			status, got[i] = rawSync(t, srv, u, "timeout=0&since="+url.QueryEscape(since[u])+"&filter="+url.QueryEscape(filters[u]))
			if status != http.StatusOK {
				t.Errorf("sync of %s: %d %v", u.id, status, got[i])
			}
		}()
	}
	// Every user's memberships read queues for one grouped read, then
	// every joined user's timeline read (the leaver's ends at its
	// leave: it reads alone).
	holdUntil(t, "memberships", queued, len(users))
	releaseMemberships()
	deadline := time.Now().Add(20 * time.Second)
	for _, _, tl := waiting(); tl < len(joined); _, _, tl = waiting() {
		if time.Now().After(deadline) {
			t.Fatalf("%d timelines queued, want %d", tl, len(joined))
		}
		time.Sleep(time.Millisecond)
	}
	releaseTimelines()
	release()
	wg.Wait()
	if t.Failed() {
		return
	}
	bodies := func(u *user, section string) (out []string, member map[string]string) {
		member = map[string]string{}
		evs, _ := dig(got[slices.Index(users, u)], "rooms", section, room, "timeline", "events").([]any)
		for _, e := range evs {
			b, _ := dig(e, "content", "body").(string)
			out = append(out, b)
			m, _ := dig(e, "unsigned", "membership").(string)
			member[b] = m
		}
		return out, member
	}
	all := []string{"p2 before", "p2 after the join", "p2 after the invite", "p2 last"}
	for _, c := range []struct {
		u       *user
		section string
		want    []string
		member  map[string]string
	}{
		{plain, "join", all, map[string]string{"p2 before": "join", "p2 last": "join"}},
		{sender, "join", all, map[string]string{"p2 before": "join"}},
		{ignorer, "join", nil, nil},
		// A full room (joined since the token), from the room's start:
		// only what its visibility shows.
		{joinsLater, "join", all[1:], map[string]string{"p2 after the join": "join", "p2 last": "join"}},
		{invitedLater, "join", all[2:], map[string]string{"p2 after the invite": "invite", "p2 last": "join"}},
		{leaver, "leave", all[:3], map[string]string{"p2 before": "join"}},
	} {
		gotBodies, gotMember := bodies(c.u, c.section)
		if !slices.Equal(gotBodies, c.want) {
			t.Errorf("%s: timeline %q, want %q", c.u.id, gotBodies, c.want)
		}
		for b, m := range c.member {
			if gotMember[b] != m {
				t.Errorf("%s: unsigned.membership of %q is %q, want %q", c.u.id, b, gotMember[b], m)
			}
		}
	}
	for i, u := range users {
		sameAsAlone(t, srv, u, since[u], filters[u], room, got[i])
	}
}

// dropAges removes every unsigned.age below v.
func dropAges(v any) {
	switch x := v.(type) {
	case map[string]any:
		if u, ok := x["unsigned"].(map[string]any); ok {
			delete(u, "age")
		}
		for _, c := range x {
			dropAges(c)
		}
	case []any:
		for _, c := range x {
			dropAges(c)
		}
	}
}
