package keyserver_test

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/keyserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestUserDevicesNeverOlderThanItsStreamID: the answer to
// /user/devices is at least as new as the stream_id it claims. Here a
// rename commits while the device names are being read (the names read
// are the old ones): the answer must then claim a stream_id before the
// rename's, so that the rename's m.device_list_update, which names the
// later stream_id, is applied by the other server instead of being taken
// as seen already with the old name kept.
func TestUserDevicesNeverOlderThanItsStreamID(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		renamed := keyserver.DeviceRenamedHook(db, nil)
		var ks *keyserver.Server
		var renamePos int64
		ks, err := keyserver.New(ctx, keyserver.Deps{
			ServerName: "localhost",
			DB:         db,
			Verifier:   noTokens{},
			UserDevices: func(ctx context.Context, userID string) (map[string]string, error) {
				names := map[string]string{"DEV": ""} // read before the rename below commits
				if renamePos > 0 {
					return names, nil // the rename happens once, during the first read
				}
				if err := db.Write(ctx, func(tx storage.Tx) error { return renamed(ctx, tx, userID, "DEV") }); err != nil {
					return nil, err
				}
				// The rename's position in alice's device-list changes.
				err := db.Reader().QueryRow(ctx, `SELECT MAX(position) FROM keyserver_device_list_changes WHERE user_id = $1`, userID).Scan(&renamePos)
				return names, err
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		before, err := ks.DeviceListPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ans, err := ks.FederationUserDevices(ctx, "@alice:localhost")
		if err != nil {
			t.Fatal(err)
		}
		streamID := ans.(map[string]any)["stream_id"].(int64)
		if renamePos <= before {
			t.Fatalf("the rename wrote no change (position %d, before %d)", renamePos, before)
		}
		if streamID >= renamePos {
			t.Fatalf("the answer claims stream_id %d, the rename's (%d), with the names read before the rename", streamID, renamePos)
		}
	})
}
