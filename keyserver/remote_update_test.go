package keyserver_test

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"

	"github.com/myelin-chat/myelin/keyserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestKeylessDeviceUpdateChangesNothing: an m.device_list_update naming
// a device with no keys, of a user whose keys we hold none of and who
// shares a room with a local user, is not a change any client could act
// on (/keys/query lists no keyless device): the device-list stream does
// not move. One with keys does move it. The same keyless update of a
// user no local user shares a room with yet (a member of a
// partial-state room the resync has not revealed) is recorded, so local
// users see it once they share the room (MSC3706; Complement msc3902
// CanReceiveDeviceListUpdateDuringPartialStateJoin).
func TestKeylessDeviceUpdateChangesNothing(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		var shared atomic.Bool
		ks, err := keyserver.New(ctx, keyserver.Deps{
			ServerName:  "localhost",
			DB:          db,
			Verifier:    noTokens{},
			UserDevices: func(context.Context, string) (map[string]string, error) { return map[string]string{}, nil },
			SharedRoomUsers: func(_ context.Context, userID string) ([]string, error) {
				if shared.Load() {
					return []string{"@alice:localhost"}, nil
				}
				return nil, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		keyless := func(userID string, streamID int) {
			t.Helper()
			update, _ := json.Marshal(map[string]any{"user_id": userID, "device_id": "DEVICE", "stream_id": streamID, "prev_id": []int{}})
			if err := ks.RemoteDeviceListUpdate(ctx, userID, update); err != nil {
				t.Fatal(err)
			}
		}

		// Not yet sharing a room: recorded.
		before, _ := ks.DeviceListPosition(ctx)
		keyless("@derek:remote.example", 1)
		if after, _ := ks.DeviceListPosition(ctx); after <= before {
			t.Fatalf("a keyless update of a user sharing no room yet did not move the device-list stream (%d)", after)
		}

		shared.Store(true)
		before, _ = ks.DeviceListPosition(ctx)
		keyless("@bob:remote.example", 5)
		if after, _ := ks.DeviceListPosition(ctx); after != before {
			t.Fatalf("a keyless device update moved the device-list stream from %d to %d", before, after)
		}
		keys := newDeviceKeys(t, "@bob:remote.example", "DEVICE")
		update, _ := json.Marshal(map[string]any{"user_id": "@bob:remote.example", "device_id": "DEVICE", "stream_id": 6,
			"prev_id": []int{5}, "keys": keys.deviceObject(t)})
		if err := ks.RemoteDeviceListUpdate(ctx, "@bob:remote.example", update); err != nil {
			t.Fatal(err)
		}
		if after, _ := ks.DeviceListPosition(ctx); after <= before {
			t.Fatalf("an update with keys did not move the device-list stream (%d)", after)
		}
	})
}
