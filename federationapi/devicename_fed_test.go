package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
)

// TestDeviceNameAfterKeyUpload follows Complement's
// TestFederationKeyUploadQuery: bob on B shares a room with alice on A;
// alice uploads device keys, bob sees her in device_lists.changed (B
// resyncs her devices from A), then she renames the device. The next
// device_lists.changed bob sees must be the rename's: his /keys/query
// then shows the new name. Before, B's resync announced a change of its
// own, which bob took for the rename's, and B answered from a cache that
// had no name yet. Spec: client-server-api, "Tracking the device list for
// a user"; server-server-api, "Device Management".
func TestDeviceNameAfterKeyUpload(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		room := alice.publicAliasedRoom("names")
		if _, err := bob.cli.JoinRoom(ctx, "#names:"+a.Name, nil); err != nil {
			t.Fatal(err)
		}
		bob.await("the join", func() bool { _, ok := bob.timeline[room]; return ok })
		user, device := string(alice.id()), string(alice.cli.DeviceID)
		// changed syncs from since until alice is in device_lists.changed
		// and returns the token after that response.
		changed := func(what, since string) string {
			t.Helper()
			for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
				resp, err := bob.cli.SyncRequest(ctx, 1000, since, "", false, event.PresenceOnline)
				if err != nil {
					t.Fatal(err)
				}
				since = resp.NextBatch
				if slices.Contains(resp.DeviceLists.Changed, alice.id()) {
					return since
				}
			}
			t.Fatalf("%s never put alice in bob's device_lists.changed", what)
			return ""
		}

		since := bob.since
		alice.uploadDeviceKeys()
		since = changed("the key upload", since)
		eventually(t, "B to cache alice's device", func() bool { return len(cachedDevices(t, b, user)) == 1 })

		const name = "My new displayname"
		if err := alice.rawCall(http.MethodPut, "/_matrix/client/v3/devices/"+device, map[string]any{"display_name": name}, nil); err != nil {
			t.Fatal(err)
		}
		changed("the rename", since)
		resp := bob.queryKeys(map[string][]string{user: {}}, 10000)
		var keys struct {
			Unsigned struct {
				Name string `json:"device_display_name"`
			} `json:"unsigned"`
		}
		if err := json.Unmarshal(resp.DeviceKeys[user][device], &keys); err != nil || keys.Unsigned.Name != name {
			t.Fatalf("alice's device in bob's keys/query after the rename: %s, want device_display_name %q", resp.DeviceKeys[user][device], name)
		}
	})
}
