//go:build goolm

package federationapi_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestDeviceRenameReachesOtherServer: alice (on A, with device keys)
// shares a room with bob (on B). Renaming her device sends B an
// m.device_list_update, so bob sees alice in device_lists.changed, and
// his /keys/query shows the new name. Spec: client-server-api, "Tracking
// the device list for a user"; server-server-api, "Device Management".
func TestDeviceRenameReachesOtherServer(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice := a.olmClient(t, "alice") // uploads device keys
		bob := b.register("bob")
		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.id()}})
		if err != nil {
			t.Fatal(err)
		}
		bob.await("the invite", func() bool { return bob.invites[created.RoomID] })
		if _, err := bob.cli.JoinRoomByID(ctx, created.RoomID); err != nil {
			t.Fatal(err)
		}
		aliceDevice := func() (mautrix.DeviceKeys, bool) {
			keys, err := bob.cli.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.cli.UserID: nil}})
			if err != nil {
				t.Fatal(err)
			}
			dk, ok := keys.DeviceKeys[alice.cli.UserID][alice.cli.DeviceID]
			return dk, ok
		}
		eventually(t, "bob to see alice's device", func() bool { _, ok := aliceDevice(); return ok })
		// Drain what the join itself put in bob's device lists.
		bob.syncOnce()
		since := bob.since

		const name = "Alice's renamed laptop"
		if err := alice.cli.SetDeviceInfo(ctx, alice.cli.DeviceID, &mautrix.ReqDeviceInfo{DisplayName: name}); err != nil {
			t.Fatal(err)
		}
		seen := false
		deadline := time.Now().Add(20 * time.Second)
		for !seen && time.Now().Before(deadline) {
			resp, err := bob.cli.SyncRequest(ctx, 1000, since, "", false, event.PresenceOnline)
			if err != nil {
				t.Fatal(err)
			}
			since = resp.NextBatch
			seen = slices.Contains(resp.DeviceLists.Changed, alice.cli.UserID)
		}
		if !seen {
			t.Fatalf("bob's device_lists.changed never named %s after the rename", alice.cli.UserID)
		}
		eventually(t, "the new name in bob's keys/query", func() bool {
			dk, ok := aliceDevice()
			return ok && dk.Unsigned["device_display_name"] == name
		})
	})
}

// TestDeviceRenameEDU: each rename of alice's device sends a server
// sharing a room an m.device_list_update with the new
// device_display_name, the next stream_id and prev_id naming the update
// before it; renaming to the current name sends nothing (the update after
// it still names the previous one). A device without keys is not
// "deleted". Spec: server-server-api, "Device Management".
func TestDeviceRenameEDU(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		f := newFakeRemote(t, n)
		ctx := context.Background()
		alice := a.register("alice")
		charlie := "@charlie:" + f.name
		empty := ""
		r := &fakeRoom{t: t, f: f, roomID: "!rename:" + f.name}
		create := r.add(charlie, "m.room.create", &empty, map[string]string{"creator": charlie, "room_version": "10"})
		join := r.add(charlie, "m.room.member", &charlie, map[string]string{"membership": "join"}, create)
		pl := r.add(charlie, "m.room.power_levels", &empty, map[string]any{"users": map[string]int{charlie: 100}}, create, join)
		jr := r.add(charlie, "m.room.join_rules", &empty, map[string]string{"join_rule": "public"}, create, join, pl)
		r.serveJoins(create, pl, jr)
		if _, err := alice.cli.JoinRoom(ctx, r.roomID, &mautrix.ReqJoinRoom{Via: []string{f.name}}); err != nil {
			t.Fatalf("join: %v", err)
		}
		type update struct {
			UserID   string  `json:"user_id"`
			DeviceID string  `json:"device_id"`
			Name     *string `json:"device_display_name"`
			StreamID int64   `json:"stream_id"`
			PrevID   []int64 `json:"prev_id"`
			Deleted  bool    `json:"deleted"`
		}
		updates := func() []update {
			f.mu.Lock()
			defer f.mu.Unlock()
			var out []update
			for _, raw := range f.edus {
				var edu struct {
					Type    string `json:"edu_type"`
					Content update `json:"content"`
				}
				if json.Unmarshal(raw, &edu) == nil && edu.Type == "m.device_list_update" &&
					edu.Content.UserID == string(alice.id()) && edu.Content.DeviceID == string(alice.cli.DeviceID) {
					out = append(out, edu.Content)
				}
			}
			return out
		}
		eventually(t, "the update for alice's join", func() bool { return len(updates()) == 1 })

		rename := func(name string) {
			t.Helper()
			if err := alice.cli.SetDeviceInfo(ctx, alice.cli.DeviceID, &mautrix.ReqDeviceInfo{DisplayName: name}); err != nil {
				t.Fatalf("rename to %q: %v", name, err)
			}
		}
		rename("first")
		eventually(t, "the first rename's update", func() bool { return len(updates()) == 2 })
		rename("first") // same name: nothing
		rename("second")
		eventually(t, "the second rename's update", func() bool { return len(updates()) >= 3 })
		time.Sleep(300 * time.Millisecond) // let a wrongly sent extra update arrive
		got := updates()
		if len(got) != 3 {
			t.Fatalf("updates %+v, want 3 (join, first, second)", got)
		}
		first, second := got[1], got[2]
		for i, u := range []update{first, second} {
			want := []string{"first", "second"}[i]
			if u.Name == nil || *u.Name != want || u.Deleted {
				t.Errorf("update %d: %+v, want device_display_name %q, not deleted", i+1, u, want)
			}
		}
		// The join's update carries the stream head as it was (no change
		// yet); each rename's update follows the one before it.
		if first.StreamID <= got[0].StreamID {
			t.Errorf("first rename: stream_id %d, want > %d", first.StreamID, got[0].StreamID)
		}
		if second.StreamID <= first.StreamID || !slices.Equal(second.PrevID, []int64{first.StreamID}) {
			t.Errorf("second rename: stream_id %d prev_id %v, want stream_id > %d and prev_id [%d]",
				second.StreamID, second.PrevID, first.StreamID, first.StreamID)
		}
		if got[0].Deleted {
			t.Errorf("the join's update for a device without keys says deleted: %+v", got[0])
		}
	})
}
