package federationapi_test

import (
	"context"
	"testing"
)

// TestPartialStateJoinTracksMembersUpdatedMeanwhile: bob on B joins
// alice's room on A with partial state; while B's resync is held, bob
// queries alice's keys (answered by asking A, since B does not know yet
// that they share a room) and alice's device-list update reaches B (B
// cannot apply it to a cache it does not hold). Once the resync shows
// alice in the room, B tracks her device list: it fetches it and caches
// it without bob asking again, as it does for a member known from the
// start. Before, nothing fetched it, which made
// TestToDeviceAndDeviceListsAcrossOutage's setup time out whenever the
// update beat the resync (PostgreSQL on a loaded machine).
// Spec: client-server-api, "Tracking the device list for a user";
// MSC3706 (device lists during a partial-state join).
func TestPartialStateJoinTracksMembersUpdatedMeanwhile(t *testing.T) {
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
		eventually(t, "alice's device-list update to reach B", func() bool { return queueLength(t, a, b.Name) == 0 })
		if got := cachedDevices(t, b, aliceID); len(got) != 0 {
			t.Fatalf("B cached alice's devices %v while the room was partial", got)
		}
		close(release)
		if err := b.HS.Rooms.AwaitFullState(ctx, string(roomID)); err != nil {
			t.Fatal(err)
		}
		eventually(t, "B to cache alice's device", func() bool { return len(cachedDevices(t, b, aliceID)) == 1 })
	})
}
