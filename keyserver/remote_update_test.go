package keyserver_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestKeylessDeviceUpdateChangesNothing: an m.device_list_update naming
// a device with no keys, of a user whose keys we hold none of, is not a
// change any client could act on (/keys/query lists no keyless device):
// the device-list stream does not move. One with keys does move it.
func TestKeylessDeviceUpdateChangesNothing(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ks := srv.HS.KeyServer
		ctx := context.Background()
		before, err := ks.DeviceListPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		update, _ := json.Marshal(map[string]any{"user_id": "@bob:remote.example", "device_id": "BOBDEVICE", "stream_id": 5, "prev_id": []int{}})
		if err := ks.RemoteDeviceListUpdate(ctx, "@bob:remote.example", update); err != nil {
			t.Fatal(err)
		}
		if after, _ := ks.DeviceListPosition(ctx); after != before {
			t.Fatalf("a keyless device update moved the device-list stream from %d to %d", before, after)
		}
		keys := newDeviceKeys(t, "@bob:remote.example", "BOBDEVICE")
		update, _ = json.Marshal(map[string]any{"user_id": "@bob:remote.example", "device_id": "BOBDEVICE", "stream_id": 6,
			"prev_id": []int{5}, "keys": keys.deviceObject(t)})
		if err := ks.RemoteDeviceListUpdate(ctx, "@bob:remote.example", update); err != nil {
			t.Fatal(err)
		}
		if after, _ := ks.DeviceListPosition(ctx); after <= before {
			t.Fatalf("an update with keys did not move the device-list stream (%d)", after)
		}
	})
}
