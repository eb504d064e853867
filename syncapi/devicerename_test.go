package syncapi_test

import (
	"context"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// TestSyncDeviceRenameIsDeviceListChange: renaming a device changes its
// owner's device list, so a user sharing a room sees the owner in /sync
// device_lists.changed, and /keys/query shows the new name; renaming to
// the name it already has announces nothing. Spec: client-server-api,
// "Tracking the device list for a user".
func TestSyncDeviceRenameIsDeviceListChange(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		room := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", bob, bob.id, room)
		uploadDeviceKeys(t, srv, alice)
		since := syncOK(t, srv, bob, "timeout=0")["next_batch"].(string)
		changed := func() []string {
			t.Helper()
			body := syncOK(t, srv, bob, "timeout=0&since="+url.QueryEscape(since))
			since = body["next_batch"].(string)
			return toStringList(dig(body, "device_lists", "changed"))
		}
		if got := changed(); len(got) != 0 {
			t.Fatalf("before the rename: changed %v", got)
		}

		rename := func(name string) {
			t.Helper()
			if err := alice.client.SetDeviceInfo(ctx, id.DeviceID(deviceOf(alice)), &mautrix.ReqDeviceInfo{DisplayName: name}); err != nil {
				t.Fatalf("rename to %q: %v", name, err)
			}
		}
		rename("Alice's phone")
		if got := changed(); !slices.Equal(got, []string{alice.id}) {
			t.Errorf("after the rename: changed %v, want [%s]", got, alice.id)
		}
		keys, err := bob.client.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{id.UserID(alice.id): nil}})
		if err != nil {
			t.Fatal(err)
		}
		if dk, ok := keys.DeviceKeys[id.UserID(alice.id)][id.DeviceID(deviceOf(alice))]; !ok || dk.Unsigned["device_display_name"] != "Alice's phone" {
			t.Errorf("keys/query after the rename: %+v", keys.DeviceKeys)
		}

		rename("Alice's phone")
		if got := changed(); len(got) != 0 {
			t.Errorf("after renaming to the same name: changed %v, want none", got)
		}
	})
}
