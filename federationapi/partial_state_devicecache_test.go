package federationapi_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
)

// TestPartialStateJoinTracksMembersUpdatedMeanwhile: bob on B joins
// alice's room on A with partial state; while B's resync is held, bob
// queries alice's keys (answered by asking A, since B does not know yet
// that they share a room), alice adds a device, and her device-list
// updates reach B (B cannot apply them to a cache it does not hold).
// Once the resync shows alice in the room, bob is told her devices
// changed (device_lists.changed), and B fetches nothing unasked: bob's
// next /keys/query asks A and returns alice's current devices, the one
// added while the room was partial included, and from then on B tracks
// her list (its cache holds them). Before, the resync made B fetch GET
// /user/devices on its own, which Complement's msc3902 fake servers
// reject (CanReceiveDeviceListUpdateDuringPartialStateJoin).
// Spec: client-server-api, "Tracking the device list for a user";
// server-server-api, "Device Management"; MSC3706 (device lists during
// a partial-state join).
func TestPartialStateJoinTracksMembersUpdatedMeanwhile(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		release := make(chan struct{})
		b.HS.Federation.HoldResyncs(release)
		alice, bob := a.register("alice"), b.register("bob")
		roomID := alice.publicAliasedRoom("pair")
		if _, err := bob.cli.JoinRoom(ctx, "#pair:"+a.Name, nil); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		alice.uploadDeviceKeys()
		aliceID := string(alice.id())
		if resp := bob.queryKeys(map[string][]string{aliceID: {}}, 5000); len(resp.DeviceKeys[aliceID]) != 1 {
			t.Fatalf("bob's query for alice: %+v", resp)
		}
		alice2 := a.login("alice")
		alice2.uploadDeviceKeys()
		eventually(t, "alice's device-list updates to reach B", func() bool { return queueLength(t, a, b.Name) == 0 })
		if got := cachedDevices(t, b, aliceID); len(got) != 0 {
			t.Fatalf("B cached alice's devices %v while the room was partial", got)
		}
		bob.syncOnce()
		since := bob.since

		close(release)
		if err := b.HS.Rooms.AwaitFullState(ctx, string(roomID)); err != nil {
			t.Fatal(err)
		}
		told := false
		for deadline := time.Now().Add(20 * time.Second); !told && time.Now().Before(deadline); {
			resp, err := bob.cli.SyncRequest(ctx, 1000, since, "", false, event.PresenceOnline)
			if err != nil {
				t.Fatal(err)
			}
			since = resp.NextBatch
			told = slices.Contains(resp.DeviceLists.Changed, alice.id())
		}
		if !told {
			t.Fatal("after the resync, bob's device_lists.changed never named alice")
		}
		// Nothing fetches alice's list until bob asks (a fetch between
		// two local servers takes milliseconds).
		for range 10 {
			if got := cachedDevices(t, b, aliceID); len(got) != 0 {
				t.Fatalf("B fetched alice's devices %v unasked after the resync", got)
			}
			time.Sleep(100 * time.Millisecond)
		}
		resp := bob.queryKeys(map[string][]string{aliceID: {}}, 5000)
		for _, d := range []string{string(alice.cli.DeviceID), string(alice2.cli.DeviceID)} {
			if _, ok := resp.DeviceKeys[aliceID][d]; !ok {
				t.Fatalf("bob's query after the resync lacks alice's device %s: %+v", d, resp)
			}
		}
		if got := cachedDevices(t, b, aliceID); len(got) != 2 {
			t.Fatalf("B caches alice's devices %v after bob's query, want both", got)
		}
	})
}
