package keyserver_test

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"testing"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/keyserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

type noTokens struct{}

func (noTokens) VerifyAccessToken(context.Context, string, *http.Request) (*authn.Device, error) {
	return nil, nil
}

// TestDeviceListChangesSharedRooms: a user's device_lists.changed holds
// only users who share a room with them (Deps.SharedRoomUsers) and
// themselves; changes written through the device-deletion hook commit
// with the deletion and reach Deps.Notify after commit.
func TestDeviceListChangesSharedRooms(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		var mu sync.Mutex
		notified := map[string]int64{}
		notify := func(stream string, pos int64) {
			mu.Lock()
			defer mu.Unlock()
			notified[stream] = pos
		}
		ks, err := keyserver.New(ctx, keyserver.Deps{
			ServerName:  "localhost",
			DB:          db,
			Verifier:    noTokens{},
			Notify:      notify,
			UserDevices: func(context.Context, string) (map[string]string, error) { return map[string]string{}, nil },
			SharedRoomUsers: func(_ context.Context, userID string) ([]string, error) {
				if userID == "@bob:localhost" {
					return []string{"@alice:localhost"}, nil
				}
				return nil, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		hook := keyserver.DevicesDeletedHook(db, nil, notify)
		start, _ := ks.DeviceListPosition(ctx)
		for _, u := range []string{"@alice:localhost", "@carol:localhost", "@bob:localhost"} {
			if err := db.Write(ctx, func(tx storage.Tx) error { return hook(ctx, tx, u, []string{"DEV"}) }); err != nil {
				t.Fatal(err)
			}
		}
		// A deletion that rolls back leaves no change behind.
		_ = db.Write(ctx, func(tx storage.Tx) error {
			if err := hook(ctx, tx, "@dave:localhost", []string{"DEV"}); err != nil {
				return err
			}
			return context.Canceled
		})
		head, _ := ks.DeviceListPosition(ctx)
		mu.Lock()
		got := notified[keyserver.DeviceListStream]
		mu.Unlock()
		if head != start+3 || got != head {
			t.Fatalf("stream head %d (from %d), notified %d; want three committed changes, notified at the head", head, start, got)
		}
		changed, left, err := ks.DeviceListChanges(ctx, "@bob:localhost", start, head, keyserver.MembershipDelta{Left: []string{"@carol:localhost", "@alice:localhost"}})
		if err != nil || !slices.Equal(changed, []string{"@alice:localhost", "@bob:localhost"}) || !slices.Equal(left, []string{"@carol:localhost"}) {
			t.Errorf("bob's device lists: changed %v left %v (%v); want alice and bob changed (carol shares no room), carol left (alice still shares one)", changed, left, err)
		}
		changed, _, _ = ks.DeviceListChanges(ctx, "@bob:localhost", head, head, keyserver.MembershipDelta{})
		if len(changed) != 0 {
			t.Errorf("empty window: %v", changed)
		}
	})
}
