package homeserver

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/keyserver"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestUntrackOnLeave: the roomserver's OnTimeline hook drops the cached
// device lists of the remote users a member event leaves sharing no room
// with a local user, in the event's transaction. A big room (more remote
// members than one query takes) whose local members leave one by one:
// the first leave changes nothing (another local member stays); the last
// one untracks every remote member but the one who shares another room
// with a local user; that one's own leave of the other room untracks
// them too. Spec: client-server-api, "Tracking the device list for a
// user".
func TestUntrackOnLeave(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		key, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if err := keyserver.Migrate(ctx, db); err != nil {
			t.Fatal(err)
		}
		var untrack func(context.Context, storage.Tx, roomserver.TimelineEvent) error
		rooms, err := roomserver.New(ctx, roomserver.Deps{DB: db, ServerName: "test.local", Key: key,
			Config: config.RoomServer{DefaultRoomVersion: "12"}, Notify: func(string, int64) {},
			OnTimeline: func(ctx context.Context, tx storage.Tx, ev roomserver.TimelineEvent) (func(), error) {
				return nil, untrack(ctx, tx, ev)
			}})
		if err != nil {
			t.Fatal(err)
		}
		untrack = untrackOnLeave(rooms, "test.local")

		const alice, bob, carol = "@alice:test.local", "@bob:test.local", "@carol:test.local"
		const members = 520
		remote := make([]string, members)
		big, err := rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: alice, Preset: "public_chat"})
		if err != nil {
			t.Fatal(err)
		}
		other, err := rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: carol, Preset: "public_chat"})
		if err != nil {
			t.Fatal(err)
		}
		remoteKey, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		// member writes a member event of userID: through the roomserver's
		// own sends for a local user, and for a remote one as a PDU from
		// remote.example (whose signature the federation API, not the
		// roomserver, checks).
		member := func(roomID, userID, membership string) {
			t.Helper()
			if strings.HasSuffix(userID, ":test.local") {
				req := roomserver.MembershipRequest{RoomID: roomID, Sender: userID}
				send := rooms.Join
				if membership == "leave" {
					send = rooms.Leave
				}
				if _, err := send(ctx, req); err != nil {
					t.Fatalf("%s: %s: %v", userID, membership, err)
				}
				return
			}
			version, err := rooms.RoomVersion(ctx, roomID)
			if err != nil {
				t.Fatal(err)
			}
			impl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
			var auth []gomatrixserverlib.PDU
			for _, k := range [][2]string{{"m.room.create", ""}, {"m.room.power_levels", ""}, {"m.room.join_rules", ""}, {"m.room.member", userID}} {
				ev, err := rooms.RoomStateEvent(ctx, roomID, k[0], k[1])
				if err != nil {
					continue // the user's own member event, before they join
				}
				pdu, err := impl.NewEventFromTrustedJSONWithEventID(ev.EventID, ev.JSON, false)
				if err != nil {
					t.Fatal(err)
				}
				auth = append(auth, pdu)
			}
			ext, err := rooms.Extremities(ctx, roomID)
			if err != nil {
				t.Fatal(err)
			}
			var depth int64
			for _, id := range ext {
				ev, _, err := rooms.FederationEvent(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				depth = max(depth, ev.Depth)
			}
			stateKey := userID
			eb := impl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{SenderID: userID, RoomID: roomID,
				Type: "m.room.member", StateKey: &stateKey, Content: []byte(`{"membership":"` + membership + `"}`),
				PrevEvents: ext, Depth: depth + 1, Version: impl})
			provider, err := gomatrixserverlib.NewAuthEvents(auth)
			if err != nil {
				t.Fatal(err)
			}
			if err := eb.AddAuthEvents(provider); err != nil {
				t.Fatal(err)
			}
			pdu, err := eb.Build(time.Now(), "remote.example", gomatrixserverlib.KeyID(remoteKey.ID), remoteKey.PrivateKey)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := rooms.InputEvent(ctx, roomserver.InputEventRequest{RoomVersion: version, JSON: pdu.JSON()})
			if err != nil || resp.Outcome != roomserver.Accepted {
				t.Fatalf("%s: %s: %v %+v", userID, membership, err, resp)
			}
		}
		join := func(roomID, userID string) { t.Helper(); member(roomID, userID, "join") }
		leave := func(roomID, userID string) { t.Helper(); member(roomID, userID, "leave") }
		join(big.RoomID, bob)
		for i := range remote {
			remote[i] = fmt.Sprintf("@r%d:remote.example", i)
			join(big.RoomID, remote[i])
		}
		sharer := remote[members-3] // in the second query's share of the users
		join(other.RoomID, sharer)
		// Every remote member's list is cached, fresh, with one device.
		if err := db.Write(ctx, func(tx storage.Tx) error {
			for _, u := range remote {
				if _, err := tx.Exec(ctx, `INSERT INTO keyserver_remote_users (user_id, stream_id, stale, updated_ts) VALUES ($1, 1, FALSE, 1)`, u); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `INSERT INTO keyserver_remote_device_keys (user_id, device_id, key_json) VALUES ($1, 'D', '{}')`, u); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// untracked counts the remote users whose cache is stale, and
		// checks those have no keys left.
		untracked := func() map[string]bool {
			t.Helper()
			out := map[string]bool{}
			stale, err := storage.QueryColumn[string](ctx, db.Reader(), `SELECT user_id FROM keyserver_remote_users WHERE stale`)
			if err != nil {
				t.Fatal(err)
			}
			for _, u := range stale {
				out[u] = true
			}
			held, err := storage.QueryColumn[string](ctx, db.Reader(), `SELECT DISTINCT d.user_id FROM keyserver_remote_device_keys d
				JOIN keyserver_remote_users u ON u.user_id = d.user_id WHERE u.stale`)
			if err != nil {
				t.Fatal(err)
			}
			if len(held) != 0 {
				t.Fatalf("untracked users still hold cached keys: %v", held)
			}
			return out
		}

		leave(big.RoomID, bob)
		if got := untracked(); len(got) != 0 {
			t.Fatalf("a local member's leave with alice still in the room untracked %d users", len(got))
		}
		leave(big.RoomID, alice)
		got := untracked()
		if len(got) != members-1 || got[sharer] {
			t.Fatalf("the last local member's leave untracked %d users (%s among them: %v), want %d, all but %s",
				len(got), sharer, got[sharer], members-1, sharer)
		}
		leave(other.RoomID, sharer)
		if got := untracked(); len(got) != members {
			t.Fatalf("%s's leave of the last room shared with a local user: %d untracked, want %d", sharer, len(got), members)
		}
	})
}
