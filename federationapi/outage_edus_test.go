package federationapi_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestToDeviceAndDeviceListsAcrossOutage: a to-device message and a
// device-list update for a server that is down are kept and delivered
// when it is back (the sender retries them until acknowledged): bob on
// B gets alice's message exactly once, and B's cache of alice's devices
// learns her new device without bob asking. Issue 7, "to-device and
// device-list EDUs retried until acknowledged".
func TestToDeviceAndDeviceListsAcrossOutage(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b, alice, bob, _ := clientPair(t, n)
		alice.uploadDeviceKeys()
		aliceID := string(alice.id())
		// bob queries alice's keys until B caches them. A query B answers
		// while bob's join is still partial (B's resync has not shown it
		// alice in the room yet) asks A and caches nothing, and nothing
		// fetches her list behind bob's back once the resync completes
		// (keyserver MembersRevealed); the first query after it does
		// (Spec: client-server-api, "Tracking the device list for a
		// user").
		eventually(t, "B to cache alice's device", func() bool {
			if resp := bob.queryKeys(map[string][]string{aliceID: {}}, 5000); len(resp.DeviceKeys[aliceID]) != 1 {
				t.Fatalf("bob's query for alice: %+v", resp)
			}
			return len(cachedDevices(t, b, aliceID)) == 1
		})
		bob.syncOnce()

		b.stop()
		req := &mautrix.ReqSendToDevice{Messages: map[id.UserID]map[id.DeviceID]*event.Content{
			bob.id(): {bob.cli.DeviceID: {Raw: map[string]any{"hello": "while you were down"}}},
		}}
		if _, err := alice.cli.SendToDevice(ctx, event.NewEventType("org.example.ping"), req); err != nil {
			t.Fatalf("sendToDevice: %v", err)
		}
		alice2 := a.login("alice")
		alice2.uploadDeviceKeys()
		eventually(t, "A to try B and fail", func() bool { return destinationFailures(t, a, b.Name) > 0 })
		b.restart()

		eventually(t, "the to-device message in bob's inbox on B", func() bool {
			msgs, _, err := b.HS.KeyServer.ToDeviceSince(ctx, string(bob.id()), string(bob.cli.DeviceID), 0)
			if err != nil {
				return false
			}
			count := 0
			for _, m := range msgs {
				if m.Sender == aliceID && m.Type == "org.example.ping" && strings.Contains(string(m.Content), "while you were down") {
					count++
				}
			}
			if count > 1 {
				t.Fatalf("the to-device message arrived %d times", count)
			}
			return count == 1
		})
		eventually(t, "B to cache alice's second device", func() bool { return len(cachedDevices(t, b, aliceID)) == 2 })
		// Nothing more arrives later (a second delivery would).
		time.Sleep(time.Second)
		msgs, _, err := b.HS.KeyServer.ToDeviceSince(ctx, string(bob.id()), string(bob.cli.DeviceID), 0)
		if err != nil {
			t.Fatal(err)
		}
		count := 0
		for _, m := range msgs {
			if m.Sender == aliceID && m.Type == "org.example.ping" {
				count++
			}
		}
		if count != 1 {
			t.Fatalf("bob's inbox holds alice's message %d times, want once: %+v", count, msgs)
		}
	})
}
