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

	"github.com/myelin-chat/myelin/storage"
)

// TestDeviceListsOnRemoteJoin: bob's first room on B is alice's
// encrypted room on A, joined over federation; his next /sync names
// alice and himself in device_lists.changed (B's room stream was empty
// when he took his token). Spec: client-server-api, "Tracking the device
// list for a user". Complement: TestDeviceListsUpdateOverFederation.
func TestDeviceListsOnRemoteJoin(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, storage.SQLite)
	a, b := n.start(), n.start()
	ctx := context.Background()
	alice, bob := a.register("alice"), b.register("bob")
	created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.id()},
		InitialState: []*event.Event{{Type: event.StateEncryption, StateKey: ptr(""),
			Content: event.Content{Raw: map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	bob.await("the invite", func() bool { return bob.invites[created.RoomID] })
	since := bob.since
	if _, err := bob.cli.JoinRoomByID(ctx, created.RoomID); err != nil {
		t.Fatal(err)
	}
	want := []id.UserID{alice.id(), bob.id()}
	var got []id.UserID
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := bob.cli.SyncRequest(ctx, 1000, since, "", false, event.PresenceOnline)
		if err != nil {
			t.Fatal(err)
		}
		since = resp.NextBatch
		got = append(got, resp.DeviceLists.Changed...)
		slices.Sort(got)
		got = slices.Compact(got)
		if slices.Equal(got, want) {
			return
		}
	}
	t.Fatalf("device_lists.changed: %v, want %v", got, want)
}

// TestDevicesAnnouncedOnRemoteJoin: when alice joins a room held by
// another server, that server is sent an m.device_list_update for her
// device, though it shares no other room with her.
// Complement: TestDeviceListsUpdateOverFederationOnRoomJoin.
func TestDevicesAnnouncedOnRemoteJoin(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, storage.SQLite)
	a := n.start()
	f := newFakeRemote(t, n)
	ctx := context.Background()
	alice := a.register("alice")
	charlie := "@charlie:" + f.name
	empty := ""
	r := &fakeRoom{t: t, f: f, roomID: "!devices:" + f.name}
	create := r.add(charlie, "m.room.create", &empty, map[string]string{"creator": charlie, "room_version": "10"})
	join := r.add(charlie, "m.room.member", &charlie, map[string]string{"membership": "join"}, create)
	pl := r.add(charlie, "m.room.power_levels", &empty, map[string]any{"users": map[string]int{charlie: 100}}, create, join)
	jr := r.add(charlie, "m.room.join_rules", &empty, map[string]string{"join_rule": "public"}, create, join, pl)
	r.serveJoins(create, pl, jr)
	if _, err := alice.cli.JoinRoom(ctx, r.roomID, &mautrix.ReqJoinRoom{Via: []string{f.name}}); err != nil {
		t.Fatalf("join: %v", err)
	}
	eventually(t, f.name+" to get alice's device", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, raw := range f.edus {
			var edu struct {
				Type    string `json:"edu_type"`
				Content struct {
					UserID   string `json:"user_id"`
					DeviceID string `json:"device_id"`
				} `json:"content"`
			}
			if json.Unmarshal(raw, &edu) == nil && edu.Type == "m.device_list_update" &&
				edu.Content.UserID == string(alice.id()) && edu.Content.DeviceID == string(alice.cli.DeviceID) {
				return true
			}
		}
		return false
	})
}
