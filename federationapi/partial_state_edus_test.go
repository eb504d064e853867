package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/storage"
)

// What a server that joined a room with partial state (MSC3706) does
// with the other servers' EDUs, its own device lists, the user directory
// and the room directory, before and after the resync. Complement:
// msc3902 TestPartialStateJoin.

// partialJoin has bob (on b) join roomID through a with b's resync held
// until the returned release is called; the room is then partial on b.
func partialJoin(t *testing.T, a, b *fedServer, bob *syncer, roomID id.RoomID) (release func()) {
	t.Helper()
	ctx := context.Background()
	hold := make(chan struct{})
	b.HS.Federation.HoldResyncs(hold)
	if _, err := bob.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joining: %v", err)
	}
	if partial, err := b.HS.Rooms.IsPartialState(ctx, string(roomID)); err != nil || !partial {
		t.Fatalf("B's room partial = %v, %v; want partial", partial, err)
	}
	var once bool
	release = func() {
		if !once {
			once = true
			close(hold)
		}
		if err := b.HS.Rooms.AwaitFullState(ctx, string(roomID)); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if !once {
			once = true
			close(hold)
		}
	})
	return release
}

// namedPublicRoom creates a public room with a name: a room with a name
// has no heroes, so a partial-state send_join answer names no member but
// the joiner.
func namedPublicRoom(t *testing.T, u *syncer) id.RoomID {
	t.Helper()
	resp, err := u.cli.CreateRoom(context.Background(), &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "partial state"})
	if err != nil {
		t.Fatal(err)
	}
	return resp.RoomID
}

// lazySync is one /sync of u from since with lazy-loaded members (a
// partial-state room is only in such syncs before its resync).
func lazySync(t *testing.T, u *syncer, since string) *mautrix.RespSync {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := u.cli.SyncRequest(ctx, 200, since, `{"room":{"state":{"lazy_load_members":true}}}`, false, event.PresenceOnline)
	if err != nil {
		t.Fatalf("sync for %s: %v", u.id(), err)
	}
	return resp
}

// searchUsers runs a user directory search as u and returns the IDs found.
func searchUsers(t *testing.T, u *syncer, term string) []string {
	t.Helper()
	var resp struct {
		Results []struct {
			UserID string `json:"user_id"`
		} `json:"results"`
	}
	if err := u.rawCall(http.MethodPost, "/_matrix/client/v3/user_directory/search", map[string]any{"search_term": term}, &resp); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range resp.Results {
		out = append(out, r.UserID)
	}
	return out
}

// TestPartialStateJoinReceipt: during the resync, a receipt from a
// server send_join named is delivered to local members, also when it
// names an event ID that is no '$' ID (the receiving server may not hold
// the event, and keeps the ID as an opaque key); one longer than the
// spec's 255 bytes is dropped. Complement: msc3902
// CanReceiveReceiptDuringPartialStateJoin.
func TestPartialStateJoinReceipt(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		roomID := namedPublicRoom(t, alice)
		partialJoin(t, a, b, bob, roomID)

		send := func(txn, eventID string) {
			t.Helper()
			receipt := map[string]any{string(roomID): map[string]any{"m.read": map[string]any{
				string(alice.id()): map[string]any{"event_ids": []string{eventID}, "data": map[string]any{"ts": 1436451550453}}}}}
			body := map[string]any{"origin": a.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []any{},
				"edus": []any{map[string]any{"edu_type": "m.receipt", "content": receipt}}}
			status, resp := n.request(b, a.Name, a.HS.Key, b.Name, http.MethodPut, "/_matrix/federation/v1/send/"+txn, body)
			if status != http.StatusOK {
				t.Fatalf("send %s: %d %s", txn, status, resp)
			}
		}
		tooLong := "$" + strings.Repeat("x", 255)
		send("long", tooLong)
		send("opaque", "mytesteventid")

		since := ""
		var receipts []string
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) && !slices.Contains(receipts, "mytesteventid") {
			resp := lazySync(t, bob, since)
			since = resp.NextBatch
			for _, e := range resp.Rooms.Join[roomID].Ephemeral.Events {
				if e.Type != event.EphemeralEventReceipt {
					continue
				}
				var c map[string]map[string]map[string]struct {
					TS int64 `json:"ts"`
				}
				if err := json.Unmarshal(e.Content.VeryRaw, &c); err != nil {
					t.Fatal(err)
				}
				for eventID, byType := range c {
					if r, ok := byType["m.read"][string(alice.id())]; ok && r.TS == 1436451550453 {
						receipts = append(receipts, eventID)
					}
				}
			}
		}
		if !slices.Contains(receipts, "mytesteventid") {
			t.Fatalf("bob never saw alice's receipt during the resync (saw %v)", receipts)
		}
		if slices.Contains(receipts, tooLong) {
			t.Fatal("a receipt naming an event ID over 255 bytes was delivered")
		}
	})
}

// TestPartialStateJoinDirectories: while the room is partial, the user
// directory finds the joiner (the room's join rule is in the partial
// state) but not the members the partial state lacks, and the public
// room directory counts only the members it holds; once the resync
// completes, both know every member. A server administrator may publish
// a room they have no power in. An alias resolves to this server and the
// servers send_join named. Complement: msc3902 "User directory is
// correctly updated once state re-sync completes", "Room stats are
// correctly updated once state re-sync completes", "Room aliases can be
// added and queried during a resync".
func TestPartialStateJoinDirectories(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, rod, bob, terry := a.register("alice"), a.register("rod"), b.register("bob"), b.register("terry")
		roomID := namedPublicRoom(t, alice)
		if _, err := rod.cli.JoinRoomByID(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		release := partialJoin(t, a, b, bob, roomID)

		// terry may not publish the room until made an administrator.
		publish := func() error {
			return terry.rawCall(http.MethodPut, "/_matrix/client/v3/directory/list/room/"+string(roomID),
				map[string]string{"visibility": "public"}, nil)
		}
		if err := publish(); err == nil {
			t.Fatal("terry, no administrator and not in the room, published it")
		}
		if err := b.HS.DB.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE accounts SET is_admin = TRUE WHERE localpart = $1`, "terry")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if err := publish(); err != nil {
			t.Fatalf("administrator publishing the room: %v", err)
		}
		joinedCount := func() int64 {
			var resp struct {
				Chunk []struct {
					RoomID           string `json:"room_id"`
					NumJoinedMembers int64  `json:"num_joined_members"`
				} `json:"chunk"`
			}
			if err := terry.rawCall(http.MethodGet, "/_matrix/client/v3/publicRooms", nil, &resp); err != nil {
				t.Fatal(err)
			}
			for _, r := range resp.Chunk {
				if r.RoomID == string(roomID) {
					return r.NumJoinedMembers
				}
			}
			t.Fatalf("the room is not in B's public room directory: %+v", resp.Chunk)
			return 0
		}

		if got := searchUsers(t, bob, "bob"); !slices.Equal(got, []string{string(bob.id())}) {
			t.Errorf("search for bob during the resync: %v", got)
		}
		if got := searchUsers(t, bob, "rod"); len(got) != 0 {
			t.Errorf("search for rod during the resync: %v, want none (the partial state lacks him)", got)
		}
		if got := joinedCount(); got != 1 {
			t.Errorf("num_joined_members during the resync: %d, want 1", got)
		}
		// An alias made during the resync names the servers send_join
		// named too, this one first.
		alias := "/_matrix/client/v3/directory/room/" + url.PathEscape("#partial:"+b.Name)
		if err := bob.rawCall(http.MethodPut, alias, map[string]string{"room_id": string(roomID)}, nil); err != nil {
			t.Fatalf("creating an alias during the resync: %v", err)
		}
		var resolved struct {
			RoomID  string   `json:"room_id"`
			Servers []string `json:"servers"`
		}
		if err := bob.rawCall(http.MethodGet, alias, nil, &resolved); err != nil {
			t.Fatal(err)
		}
		if resolved.RoomID != string(roomID) || !slices.Equal(resolved.Servers, []string{b.Name, a.Name}) {
			t.Errorf("alias resolved to %+v, want %s via [%s %s]", resolved, roomID, b.Name, a.Name)
		}

		release()
		if got := searchUsers(t, bob, "rod"); !slices.Equal(got, []string{string(rod.id())}) {
			t.Errorf("search for rod after the resync: %v, want %s", got, rod.id())
		}
		if got := searchUsers(t, bob, "alice"); !slices.Equal(got, []string{string(alice.id())}) {
			t.Errorf("search for alice after the resync: %v, want %s", got, alice.id())
		}
		if got := joinedCount(); got != 3 {
			t.Errorf("num_joined_members after the resync: %d, want 3", got)
		}
	})
}

// TestPartialStateJoinDevicesReachMissedServers: a server in the room
// that send_join's servers_in_room left out gets none of the joiner's
// device-list updates during the resync; once the resync shows it in
// the room, it is sent the joiner's devices, so its users see the
// joiner in device_lists.changed. Spec: server-server-api, "Device
// Management". Complement: msc3902 "Device list updates reach
// incorrectly absent servers once partial state join completes".
func TestPartialStateJoinDevicesReachMissedServers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, c := n.start(), n.start(), n.start()
		ctx := context.Background()
		alice, bob, carol := a.register("alice"), b.register("bob"), c.register("carol")
		bob.uploadDeviceKeys()
		roomID := namedPublicRoom(t, alice)
		if _, err := carol.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "A to see carol's join", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(carol.id()))
			return m == "join"
		})
		release := partialJoin(t, a, b, bob, roomID)
		// As if A's send_join answer had left C out of servers_in_room
		// (the resync, resumed by a restart below, reads it too).
		if err := b.HS.DB.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE roomserver_partial_state_rooms SET servers = $1 WHERE room_id = $2`,
				string(mustJSON([]string{a.Name})), string(roomID))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		carol.await("bob's join", func() bool {
			return slices.ContainsFunc(carol.timeline[roomID], func(e *event.Event) bool {
				return e.Type == event.StateMember && e.GetStateKey() == string(bob.id())
			})
		})
		carol.syncOnce() // past what the join itself put in carol's device lists
		since := carol.since
		changedSince := func(wait time.Duration) bool {
			deadline := time.Now().Add(wait)
			next := since
			for {
				resp, err := carol.cli.SyncRequest(ctx, 300, next, "", false, event.PresenceOnline)
				if err != nil {
					t.Fatal(err)
				}
				next = resp.NextBatch
				if slices.Contains(resp.DeviceLists.Changed, bob.id()) {
					return true
				}
				if time.Now().After(deadline) {
					return false
				}
			}
		}

		if err := bob.cli.SetDeviceInfo(ctx, bob.cli.DeviceID, &mautrix.ReqDeviceInfo{DisplayName: "renamed while partial"}); err != nil {
			t.Fatal(err)
		}
		if changedSince(time.Second) {
			t.Fatal("C, left out of servers_in_room, got bob's device-list update during the resync")
		}
		// The resync resumes after a restart from the stored server list,
		// which lacks C.
		b.restart()
		release()
		if !changedSince(20 * time.Second) {
			t.Fatal("carol never saw bob in device_lists.changed after the resync")
		}
	})
}

// TestPartialStateJoinDeviceListUpdateOfUnseenMember: a device-list
// update from a member the partial state lacks, received during the
// resync, reaches the local members once the resync shows they share
// the room — even if they synced past it meanwhile (while they shared
// no room with the member). Members who sent no update are not named.
// Complement: msc3902 CanReceiveDeviceListUpdateDuringPartialStateJoin.
func TestPartialStateJoinDeviceListUpdateOfUnseenMember(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, rod, bob := a.register("alice"), a.register("rod"), b.register("bob")
		roomID := namedPublicRoom(t, alice)
		if _, err := rod.cli.JoinRoomByID(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		release := partialJoin(t, a, b, bob, roomID)
		since := lazySync(t, bob, "").NextBatch

		update := map[string]any{"user_id": string(rod.id()), "device_id": "RODDEVICE", "stream_id": 1}
		body := map[string]any{"origin": a.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []any{},
			"edus": []any{map[string]any{"edu_type": "m.device_list_update", "content": update}}}
		if status, resp := n.request(b, a.Name, a.HS.Key, b.Name, http.MethodPut, "/_matrix/federation/v1/send/devices", body); status != http.StatusOK {
			t.Fatalf("send: %d %s", status, resp)
		}
		var changed []id.UserID
		// A sync during the resync: rod shares no room with bob yet.
		resp := lazySync(t, bob, since)
		changed = append(changed, resp.DeviceLists.Changed...)
		since = resp.NextBatch
		release()
		deadline := time.Now().Add(20 * time.Second)
		for !slices.Contains(changed, rod.id()) && time.Now().Before(deadline) {
			resp := lazySync(t, bob, since)
			changed = append(changed, resp.DeviceLists.Changed...)
			since = resp.NextBatch
		}
		if !slices.Contains(changed, rod.id()) {
			t.Fatalf("bob never saw rod in device_lists.changed (saw %v)", changed)
		}
		if slices.Contains(changed, alice.id()) {
			t.Errorf("device_lists.changed named alice, who sent no update: %v", changed)
		}
	})
}
