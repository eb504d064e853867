//go:build goolm

package federationapi_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/cryptohelper"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestPresenceAndSigningKeysAcrossServers: alice on A and bob on B share
// a room. Alice's presence (with a status message) reaches B as an
// m.presence EDU: bob reads it from B. Alice then creates her
// cross-signing keys (mautrix-go's OlmMachine): B learns of the change
// (m.signing_key_update, with the device-list update of her re-signed
// device) and lists alice in bob's /sync device_lists.changed, and B's
// keys/query answers alice's new master key.
func TestPresenceAndSigningKeysAcrossServers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice := a.olmClient(t, "alice")
		bob := b.register("bob")
		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "edus"})
		if err != nil {
			t.Fatalf("createRoom: %v", err)
		}
		if _, err := bob.cli.JoinRoom(ctx, "#edus:"+a.Name, nil); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		eventually(t, "A to see bob's join", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, string(created.RoomID), string(bob.id()))
			return m == "join"
		})

		// Presence.
		const status = "reading the spec"
		if err := alice.cli.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: status}); err != nil {
			t.Fatalf("alice setting presence: %v", err)
		}
		eventuallyErr(t, "alice's presence on B", func() error {
			p, err := bob.cli.GetPresence(ctx, alice.cli.UserID)
			if err != nil {
				return err
			}
			if p.Presence != event.PresenceOnline || p.StatusMsg != status {
				return errPresence(p)
			}
			return nil
		})

		// Cross-signing keys. First let B settle on alice's device keys
		// (uploaded when her client started), then take a token.
		changedSince := func(since string) (bool, string) {
			resp, err := bob.cli.SyncRequest(ctx, 0, since, "", false, event.PresenceOnline)
			if err != nil {
				t.Fatalf("bob's sync: %v", err)
			}
			return slices.Contains(resp.DeviceLists.Changed, alice.cli.UserID), resp.NextBatch
		}
		masterOnB := func() id.Ed25519 {
			resp, err := bob.cli.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.cli.UserID: {}}})
			if err != nil {
				t.Fatalf("bob's keys/query: %v", err)
			}
			for _, k := range resp.MasterKeys[alice.cli.UserID].Keys {
				return id.Ed25519(k)
			}
			return ""
		}
		eventuallyErr(t, "alice's device on B", func() error {
			resp, err := bob.cli.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.cli.UserID: {}}})
			if err != nil {
				return err
			}
			if len(resp.DeviceKeys[alice.cli.UserID]) == 0 {
				return errNoDevice
			}
			return nil
		})
		if k := masterOnB(); k != "" {
			t.Fatalf("alice has a master key before creating one: %s", k)
		}
		_, since := changedSince("")
		time.Sleep(300 * time.Millisecond)
		_, since = changedSince(since)

		mach := alice.cli.Crypto.(*cryptohelper.CryptoHelper).Machine()
		_, keys, err := mach.GenerateAndUploadCrossSigningKeysWithPassword(ctx, e2ePassword, "")
		if err != nil {
			t.Fatalf("alice creating cross-signing keys: %v", err)
		}
		// A change about alice from before (her device's update, late on
		// a loaded machine despite the settle above) is not the one
		// looked for: that one comes with her master key on B.
		want := keys.MasterKey.PublicKey()
		deadline := time.Now().Add(20 * time.Second)
		for {
			changed, next := changedSince(since)
			since = next
			if changed && masterOnB() == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("alice's cross-signing keys never showed in bob's device_lists.changed on B (master key on B: %q, want %q)", masterOnB(), want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

type presenceError struct{ p *mautrix.RespPresence }

func (e presenceError) Error() string {
	return "presence is " + string(e.p.Presence) + " " + e.p.StatusMsg
}

func errPresence(p *mautrix.RespPresence) error { return presenceError{p} }

type noDeviceError struct{}

func (noDeviceError) Error() string { return "no device keys yet" }

var errNoDevice = noDeviceError{}
