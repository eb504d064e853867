package syncapi_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// A gap of 50 messages with a topic change inside: the next sync is
// limited, carries the latest events, and the state section carries the
// topic (which is not in the timeline).
func TestLimitedSyncCarriesStateDelta(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice := newUser(t, srv, "alice")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
		first, err := alice.client.SyncRequest(ctx, 0, "", "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 50; i++ {
			if i == 20 {
				sendState(t, srv, alice, roomID, "m.room.topic", "", `{"topic": "changed in the gap"}`)
			}
			sendText(t, srv, alice, roomID, fmt.Sprintf("msg %d", i))
		}
		resp, err := alice.client.SyncRequest(ctx, 0, first.NextBatch, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		jr := resp.Rooms.Join[id.RoomID(roomID)]
		if jr == nil || !jr.Timeline.Limited {
			t.Fatalf("expected a limited timeline: %+v", jr)
		}
		got := bodies(jr.Timeline.Events)
		if len(got) != 10 || got[9] != "msg 49" || got[0] != "msg 40" {
			t.Fatalf("timeline = %v", got)
		}
		topic := findState(jr.State.Events, "m.room.topic", "")
		if topic == nil || topic.Content.Raw["topic"] != "changed in the gap" {
			t.Fatalf("state delta lacks the topic: %d events", len(jr.State.Events))
		}
		if findState(jr.State.Events, "m.room.create", "") != nil {
			t.Error("state delta includes unchanged state (m.room.create)")
		}
		// prev_batch pages back into the gap through the roomserver.
		page, err := srv.HS.Rooms.Messages(ctx, roomserver.MessagesRequest{UserID: alice.id, RoomID: roomID,
			From: jr.Timeline.PrevBatch, Dir: roomserver.Backward, Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Events) != 1 || !strings.Contains(string(page.Events[0].Content), "msg 39") {
			t.Fatalf("paging back from prev_batch gave %+v", page.Events)
		}
	})
}

func TestMembershipMovesRoomsBetweenSections(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat", Name: "Secret"})
		sendText(t, srv, alice, roomID, "before bob")
		s0, err := bob.client.SyncRequest(ctx, 0, "", "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(s0.Rooms.Join)+len(s0.Rooms.Invite) != 0 {
			t.Fatalf("bob sees rooms before the invite: %+v", s0.Rooms)
		}

		membership(t, srv, "invite", alice, bob.id, roomID)
		s1, err := bob.client.SyncRequest(ctx, 0, s0.NextBatch, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		inv := s1.Rooms.Invite[id.RoomID(roomID)]
		if inv == nil {
			t.Fatalf("invite missing: %+v", s1.Rooms)
		}
		var sawName, sawInvite bool
		for _, e := range inv.State.Events {
			sawName = sawName || (e.Type == event.StateRoomName && e.Content.Raw["name"] == "Secret")
			sawInvite = sawInvite || (e.Type == event.StateMember && *e.StateKey == bob.id && e.Content.Raw["membership"] == "invite")
		}
		if !sawName || !sawInvite {
			t.Fatalf("stripped state lacks name (%v) or the invite (%v)", sawName, sawInvite)
		}

		membership(t, srv, "join", bob, bob.id, roomID)
		s2, err := bob.client.SyncRequest(ctx, 0, s1.NextBatch, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		jr := s2.Rooms.Join[id.RoomID(roomID)]
		if jr == nil || len(s2.Rooms.Invite) != 0 {
			t.Fatalf("after join: join=%v invite=%v", s2.Rooms.Join, s2.Rooms.Invite)
		}
		all := append(append([]*event.Event{}, jr.State.Events...), jr.Timeline.Events...)
		if findState(all, "m.room.create", "") == nil || findState(all, "m.room.power_levels", "") == nil {
			t.Fatal("newly joined room lacks full state")
		}

		membership(t, srv, "kick", alice, bob.id, roomID)
		sendText(t, srv, alice, roomID, "after bob")
		s3, err := bob.client.SyncRequest(ctx, 0, s2.NextBatch, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		lr := s3.Rooms.Leave[id.RoomID(roomID)]
		if lr == nil || len(s3.Rooms.Join) != 0 {
			t.Fatalf("after kick: leave=%v join=%v", s3.Rooms.Leave, s3.Rooms.Join)
		}
		if b := bodies(lr.Timeline.Events); len(b) != 0 {
			t.Fatalf("left room timeline leaks messages after the kick: %v", b)
		}
		if m := findState(lr.Timeline.Events, "m.room.member", bob.id); m == nil || m.Content.Raw["membership"] != "leave" {
			t.Fatal("left room timeline lacks the kick")
		}
		// Once delivered, the left room is not sent again without include_leave...
		s4, err := bob.client.SyncRequest(ctx, 0, "", "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(s4.Rooms.Leave) != 0 {
			t.Fatalf("initial sync without include_leave has left rooms: %v", s4.Rooms.Leave)
		}
		// ...and is with it.
		code, body := rawSync(t, srv, bob, "filter="+url.QueryEscape(`{"room":{"include_leave":true}}`))
		leave, _ := body["rooms"].(map[string]any)["leave"].(map[string]any)
		if code != 200 || leave[roomID] == nil {
			t.Fatalf("include_leave: %d %v", code, body["rooms"])
		}
	})
}

func TestSyncFilters(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		carol := newUser(t, srv, "carol")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		other := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", bob, bob.id, roomID)
		membership(t, srv, "join", carol, carol.id, roomID)
		for i := 0; i < 5; i++ {
			sendText(t, srv, bob, roomID, fmt.Sprintf("bob %d", i))
		}
		sendState(t, srv, alice, roomID, "com.example.custom", "", `{"x": 1}`)

		timelineOf := func(body map[string]any, room string) []any {
			jr, _ := body["rooms"].(map[string]any)["join"].(map[string]any)[room].(map[string]any)
			if jr == nil {
				return nil
			}
			return jr["timeline"].(map[string]any)["events"].([]any)
		}
		stateOf := func(body map[string]any, room string) []any {
			jr := body["rooms"].(map[string]any)["join"].(map[string]any)[room].(map[string]any)
			return jr["state"].(map[string]any)["events"].([]any)
		}
		sync := func(filter string) map[string]any {
			code, body := rawSync(t, srv, alice, "filter="+url.QueryEscape(filter))
			if code != 200 {
				t.Fatalf("filter %s: %d %v", filter, code, body)
			}
			return body
		}

		body := sync(`{"room":{"timeline":{"limit":2}}}`)
		if tl := timelineOf(body, roomID); len(tl) != 2 {
			t.Errorf("timeline.limit 2 gave %d events", len(tl))
		}
		body = sync(`{"room":{"timeline":{"limit":20,"types":["m.room.message"]}}}`)
		for _, e := range timelineOf(body, roomID) {
			if e.(map[string]any)["type"] != "m.room.message" {
				t.Errorf("types filter let through %v", e.(map[string]any)["type"])
			}
		}
		if len(timelineOf(body, roomID)) != 5 {
			t.Errorf("types filter: %d messages, want 5", len(timelineOf(body, roomID)))
		}
		body = sync(`{"room":{"timeline":{"limit":20,"not_types":["m.room.*"]}}}`)
		if tl := timelineOf(body, roomID); len(tl) != 1 || tl[0].(map[string]any)["type"] != "com.example.custom" {
			t.Errorf("not_types m.room.* gave %v", tl)
		}
		body = sync(`{"room":{"timeline":{"limit":20,"senders":["@alice:localhost"],"types":["m.room.message"]}}}`)
		if tl := timelineOf(body, roomID); len(tl) != 0 {
			t.Errorf("senders filter let through %d events", len(tl))
		}
		body = sync(`{"room":{"rooms":["` + other + `"]}}`)
		if timelineOf(body, roomID) != nil || timelineOf(body, other) == nil {
			t.Error("room.rooms did not restrict the rooms")
		}
		body = sync(`{"room":{"not_rooms":["` + other + `"]}}`)
		if timelineOf(body, other) != nil || timelineOf(body, roomID) == nil {
			t.Error("room.not_rooms did not exclude the room")
		}

		// Lazy loading with a 3-event timeline of bob's messages: the
		// state carries bob's and alice's membership but not carol's.
		body = sync(`{"room":{"timeline":{"limit":3},"state":{"lazy_load_members":true}}}`)
		members := map[string]bool{}
		for _, e := range stateOf(body, roomID) {
			ev := e.(map[string]any)
			if ev["type"] == "m.room.member" {
				members[ev["state_key"].(string)] = true
			}
		}
		if !members[bob.id] || !members[alice.id] || members[carol.id] {
			t.Errorf("lazy-loaded members = %v", members)
		}
		// Stored filter IDs work too.
		fid, err := alice.client.CreateFilter(context.Background(), mustFilter(`{"room":{"timeline":{"limit":1}}}`))
		if err != nil {
			t.Fatal(err)
		}
		code, body := rawSync(t, srv, alice, "filter="+fid.FilterID)
		if code != 200 || len(timelineOf(body, roomID)) != 1 {
			t.Errorf("stored filter: %d, %d events", code, len(timelineOf(body, roomID)))
		}
	})
}

func TestBadTokens(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
		_, body := rawSync(t, srv, alice, "")
		next := body["next_batch"].(string)
		for _, tok := range []string{"garbage", "s", "s1", "s-1_0", "s1_2_3_4_5_6_7_8_9", "s01_0", "t5_6", "s99999999_0", "s1_99999"} {
			code, body := rawSync(t, srv, alice, "since="+url.QueryEscape(tok))
			if code != 400 || body["errcode"] != "M_INVALID_PARAM" {
				t.Errorf("since=%q: %d %v", tok, code, body)
			}
		}
		for _, q := range []string{"timeout=-1", "timeout=abc", "full_state=yes", "set_presence=busy", "filter=" + url.QueryEscape("{not json")} {
			if code, _ := rawSync(t, srv, alice, q); code != 400 {
				t.Errorf("%s: status %d", q, code)
			}
		}
		if code, _ := rawSync(t, srv, alice, "since="+next+"&set_presence=offline"); code != 200 {
			t.Errorf("valid token refused: %d", code)
		}
	})
}

// A token survives a restart on the same data directory.
func TestTokenValidAfterRestart(t *testing.T) {
	for _, engine := range []storage.Engine{storage.SQLite, storage.Postgres} {
		t.Run(string(engine), func(t *testing.T) {
			if engine == storage.Postgres && !postgresAvailable() {
				t.Skip("MYELIN_TEST_POSTGRES not set")
			}
			dir := t.TempDir()
			var pgURL string
			if engine == storage.Postgres {
				pgURL = storagetest.PostgresOptions(t).PostgresURL // lives as long as this test
			}
			edit := func(cfg *config.Config) {
				cfg.Global.DataDir = dir
				cfg.Global.SigningKeyPath = filepath.Join(dir, "signing.key")
				if engine == storage.SQLite {
					cfg.Database.SQLitePath = filepath.Join(dir, "myelin.db")
				} else {
					cfg.Database.PostgresURL = pgURL
				}
			}
			ctx := context.Background()
			srv1, stop1 := startStoppable(t, engine, edit)
			alice := newUser(t, srv1, "alice")
			roomID := createRoom(t, srv1, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
			first, err := alice.client.SyncRequest(ctx, 0, "", "", false, "")
			if err != nil {
				t.Fatal(err)
			}
			stop1()

			// Stopped at the end, or its subtest (and the cleanup of its
			// temporary directory) would never finish.
			srv2, stop2 := startStoppable(t, engine, edit)
			defer stop2()
			alice.client.HomeserverURL, _ = url.Parse(srv2.URL)
			sendText(t, srv2, alice, roomID, "after restart")
			resp, err := alice.client.SyncRequest(ctx, 0, first.NextBatch, "", false, "")
			if err != nil {
				t.Fatalf("token from before the restart: %v", err)
			}
			if got := bodies(resp.Rooms.Join[id.RoomID(roomID)].Timeline.Events); len(got) != 1 || got[0] != "after restart" {
				t.Fatalf("timeline after restart = %v", got)
			}
		})
	}
}

func TestStateAfter(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat", Name: "Before"})
		_, first := rawSync(t, srv, alice, "use_state_after=true")
		jr := first["rooms"].(map[string]any)["join"].(map[string]any)[roomID].(map[string]any)
		if _, has := jr["state"]; has {
			t.Error("state present with use_state_after")
		}
		after := jr["state_after"].(map[string]any)["events"].([]any)
		if !hasStateEvent(after, "m.room.create") || !hasStateEvent(after, "m.room.name") {
			t.Error("initial state_after lacks create or name")
		}
		sendState(t, srv, alice, roomID, "m.room.name", "", `{"name": "After"}`)
		_, second := rawSync(t, srv, alice, "org.matrix.msc4222.use_state_after=true&since="+first["next_batch"].(string))
		jr = second["rooms"].(map[string]any)["join"].(map[string]any)[roomID].(map[string]any)
		after = jr["org.matrix.msc4222.state_after"].(map[string]any)["events"].([]any)
		// MSC4222: the new state event is in both the timeline and state_after.
		if len(after) != 1 || after[0].(map[string]any)["content"].(map[string]any)["name"] != "After" {
			t.Fatalf("incremental state_after = %v", after)
		}
		if tl := jr["timeline"].(map[string]any)["events"].([]any); len(tl) != 1 {
			t.Fatalf("timeline = %v", tl)
		}
	})
}

func hasStateEvent(evs []any, typ string) bool {
	for _, e := range evs {
		if e.(map[string]any)["type"] == typ {
			return true
		}
	}
	return false
}

// TestSyncTokenAheadOfSharedHeads: a token past the shared heads cache
// (issued from a fresher read in the same notification generation) is
// accepted — compute reads the heads afresh before refusing it — while
// one past the database's heads is still M_INVALID_PARAM.
// Spec: client-server-api, "GET /_matrix/client/v3/sync" (since).
func TestSyncTokenAheadOfSharedHeads(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
		sendText(t, srv, alice, roomID, "hello")
		status, body := rawSync(t, srv, alice, "")
		if status != http.StatusOK {
			t.Fatalf("initial sync: %d %v", status, body)
		}
		since := nextBatch(t, body)
		srv.HS.Sync.ZeroSharedHeads()
		status, body = rawSync(t, srv, alice, "timeout=0&since="+url.QueryEscape(since))
		if status != http.StatusOK {
			t.Fatalf("sync with a token ahead of the cached heads: %d %v", status, body)
		}
		srv.HS.Sync.ZeroSharedHeads()
		sendText(t, srv, alice, roomID, "after")
		status, body = rawSync(t, srv, alice, "timeout=0&since="+url.QueryEscape(since))
		if status != http.StatusOK || !slices.Contains(timelineBodies(body, roomID), "after") {
			t.Fatalf("sync after a send: %d, timeline %v", status, timelineBodies(body, roomID))
		}
		future := "s999999_0_0_0_0_0_0_0"
		if status, body = rawSync(t, srv, alice, "timeout=0&since="+future); status != http.StatusBadRequest || body["errcode"] != "M_INVALID_PARAM" {
			t.Fatalf("future token: %d %v, want 400 M_INVALID_PARAM", status, body)
		}
	})
}

// TestInitialSyncShowsBans: an initial sync without include_leave shows
// the rooms the user was banned from (with the ban in the timeline), not
// those the user left; with include_leave it shows both.
func TestInitialSyncShowsBans(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		banned := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat", Name: "Banned"})
		left := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat", Name: "Left"})
		for _, roomID := range []string{banned, left} {
			membership(t, srv, "join", bob, bob.id, roomID)
		}
		membership(t, srv, "ban", alice, bob.id, banned)
		membership(t, srv, "leave", bob, bob.id, left)
		s, err := bob.client.SyncRequest(ctx, 0, "", "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		lr := s.Rooms.Leave[id.RoomID(banned)]
		if lr == nil || len(s.Rooms.Leave) != 1 || len(s.Rooms.Join) != 0 {
			t.Fatalf("initial sync: leave=%v join=%v, want only the room bob was banned from", s.Rooms.Leave, s.Rooms.Join)
		}
		tl := lr.Timeline.Events
		if len(tl) == 0 || tl[len(tl)-1].Type != event.StateMember || tl[len(tl)-1].StateKey == nil ||
			*tl[len(tl)-1].StateKey != bob.id || tl[len(tl)-1].Content.Raw["membership"] != "ban" {
			t.Fatalf("the banned room's timeline does not end with the ban: %d events", len(tl))
		}
		code, body := rawSync(t, srv, bob, "filter="+url.QueryEscape(`{"room":{"include_leave":true}}`))
		leave, _ := body["rooms"].(map[string]any)["leave"].(map[string]any)
		if code != 200 || leave[banned] == nil || leave[left] == nil || len(leave) != 2 {
			t.Fatalf("include_leave: %d %v", code, body["rooms"])
		}
	})
}
