package federationapi_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/storage"
)

// Device lists of remote users who stop sharing every room with local
// users in the ordinary way: their server stops sending us their
// updates, so their cached list is dropped and fetched afresh when they
// share a room again, even if their server does not announce their
// devices on the join. Spec: client-server-api, "Tracking the device
// list for a user"; server-server-api, "Device Management".

// joinedOn waits until s sees userID's membership of roomID be want.
func joinedOn(t *testing.T, s *fedServer, roomID id.RoomID, userID id.UserID, want string) {
	t.Helper()
	eventually(t, s.Name+" to see "+string(userID)+" "+want, func() bool {
		m, _ := s.HS.Rooms.Membership(context.Background(), string(roomID), string(userID))
		return m == want
	})
}

// awaitFull waits for s's copy of roomID to have its full state (a
// federated join is a partial-state one until its resync completes).
func awaitFull(t *testing.T, s *fedServer, roomID id.RoomID) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.HS.Rooms.AwaitFullState(ctx, string(roomID)); err != nil {
		t.Fatalf("%s's resync of %s: %v", s.Name, roomID, err)
	}
}

// remoteRowStale reports whether s's cache row of userID is there and
// stale.
func remoteRowStale(t *testing.T, s *fedServer, userID string) bool {
	t.Helper()
	var stale bool
	err := s.HS.DB.Reader().QueryRow(context.Background(), `SELECT stale FROM keyserver_remote_users WHERE user_id = $1`, userID).Scan(&stale)
	if err != nil && !storage.IsNoRows(err) {
		t.Fatal(err)
	}
	return err == nil && stale
}

// replaceDevice gives local's account on s a new keyed device and
// deletes the old one (old), and returns the client of the new one.
func replaceDevice(t *testing.T, s *fedServer, local string, old *syncer) *syncer {
	t.Helper()
	fresh := s.login(local)
	fresh.uploadDeviceKeys()
	if err := fresh.cli.DeleteDevice(context.Background(), old.cli.DeviceID, &mautrix.ReqDeleteDevice[any]{Auth: map[string]any{
		"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": local}, "password": e2ePassword}}); err != nil {
		t.Fatalf("deleting %s's device %s: %v", local, old.cli.DeviceID, err)
	}
	return fresh
}

// devicesOf lists the device IDs resp holds for userID.
func devicesOf(resp keysQueryResp, userID string) []string {
	var out []string
	for d := range resp.DeviceKeys[userID] {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// TestDeviceListUntrackedOnLeave: bob (on B) shares one room with alice
// (on A); alice's /keys/query makes A cache bob's device list. Then the
// room stops being shared — bob leaves, alice kicks him, alice bans him,
// or alice (A's only member) leaves — and A drops its copy (the row is
// kept, stale). While no room is shared, bob replaces his device: B
// tells A nothing. The room is shared again (bob rejoins, after an unban
// for the ban; alice rejoins) with B announcing none of bob's devices on
// his join; alice's /keys/query answers bob's new device, not the
// deleted one: A fetched the list afresh. Before, A served the copy it
// kept.
func TestDeviceListUntrackedOnLeave(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		for _, how := range []string{"leave", "kick", "ban", "local leave"} {
			t.Run(how, func(t *testing.T) {
				ctx := context.Background()
				a, b := n.start(), n.start()
				b.HS.Federation.SilenceJoins(true)
				alice, bob := a.register("alice"), b.register("bob")
				bob.uploadDeviceKeys()
				bobID := string(bob.id())
				var roomID id.RoomID
				var alias string
				if how == "local leave" {
					roomID, alias = bob.publicAliasedRoom("bobs"), "#bobs:"+b.Name
					if _, err := alice.cli.JoinRoom(ctx, alias, nil); err != nil {
						t.Fatalf("alice joining: %v", err)
					}
					joinedOn(t, b, roomID, alice.id(), "join")
					awaitFull(t, a, roomID)
				} else {
					roomID, alias = alice.publicAliasedRoom("alices"), "#alices:"+a.Name
					if _, err := bob.cli.JoinRoom(ctx, alias, nil); err != nil {
						t.Fatalf("bob joining: %v", err)
					}
					joinedOn(t, a, roomID, bob.id(), "join")
					awaitFull(t, b, roomID)
				}

				if got := devicesOf(alice.queryKeys(map[string][]string{bobID: {}}, 5000), bobID); !slices.Equal(got, []string{string(bob.cli.DeviceID)}) {
					t.Fatalf("alice's first query of bob: devices %v", got)
				}
				if got := cachedDevices(t, a, bobID); len(got) != 1 {
					t.Fatalf("A caches bob's devices %v after alice's query, want his one", got)
				}

				var err error
				switch how {
				case "leave":
					_, err = bob.cli.LeaveRoom(ctx, roomID)
				case "kick":
					_, err = alice.cli.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: bob.id()})
				case "ban":
					_, err = alice.cli.BanUser(ctx, roomID, &mautrix.ReqBanUser{UserID: bob.id()})
				case "local leave":
					_, err = alice.cli.LeaveRoom(ctx, roomID)
				}
				if err != nil {
					t.Fatalf("%s: %v", how, err)
				}
				// Both servers hold the room unshared before bob's
				// devices change, so B sends A no update about them.
				ended, gone := bob.id(), "leave"
				if how == "local leave" {
					ended = alice.id()
				} else if how == "ban" {
					gone = "ban"
				}
				joinedOn(t, a, roomID, ended, gone)
				joinedOn(t, b, roomID, ended, gone)
				if got := cachedDevices(t, a, bobID); len(got) != 0 || !remoteRowStale(t, a, bobID) {
					t.Fatalf("after the %s A still caches bob's devices %v (stale row: %v)", how, got, remoteRowStale(t, a, bobID))
				}

				bob = replaceDevice(t, b, "bob", bob)
				newDevice := string(bob.cli.DeviceID)
				if how == "ban" {
					if _, err := alice.cli.UnbanUser(ctx, roomID, &mautrix.ReqUnbanUser{UserID: bob.id()}); err != nil {
						t.Fatal(err)
					}
					joinedOn(t, b, roomID, bob.id(), "leave")
				}
				if how == "local leave" {
					if _, err := alice.cli.JoinRoom(ctx, alias, nil); err != nil {
						t.Fatalf("alice rejoining: %v", err)
					}
					joinedOn(t, b, roomID, alice.id(), "join")
					awaitFull(t, a, roomID)
				} else {
					if _, err := bob.cli.JoinRoom(ctx, alias, nil); err != nil {
						t.Fatalf("bob rejoining: %v", err)
					}
					joinedOn(t, a, roomID, bob.id(), "join")
				}
				if got := devicesOf(alice.queryKeys(map[string][]string{bobID: {}}, 5000), bobID); !slices.Equal(got, []string{newDevice}) {
					t.Fatalf("alice's query of bob once they share the room again (%s): devices %v, want only %s", how, got, newDevice)
				}
				if got := cachedDevices(t, a, bobID); !slices.Equal(got, []string{newDevice}) || remoteRowStale(t, a, bobID) {
					t.Fatalf("A caches bob's devices %v after the refetch, want %s fresh", got, newDevice)
				}
			})
		}
	})
}

// TestDeviceListKeptWhileStillShared: bob (on B) shares three rooms
// with alice (on A); alice's /keys/query makes A cache his device list.
// bob leaves one room and alice leaves another (A's last member there):
// bob still shares the third with alice, so A keeps his list, fresh, and
// answers alice from it with B down (no fetch).
func TestDeviceListKeptWhileStillShared(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		bob.uploadDeviceKeys()
		bobID := string(bob.id())
		var rooms []id.RoomID
		for _, name := range []string{"one", "two", "three"} {
			roomID := alice.publicAliasedRoom(name)
			if _, err := bob.cli.JoinRoom(ctx, "#"+name+":"+a.Name, nil); err != nil {
				t.Fatalf("bob joining %s: %v", name, err)
			}
			joinedOn(t, a, roomID, bob.id(), "join")
			awaitFull(t, b, roomID)
			rooms = append(rooms, roomID)
		}
		if got := devicesOf(alice.queryKeys(map[string][]string{bobID: {}}, 5000), bobID); len(got) != 1 {
			t.Fatalf("alice's first query of bob: devices %v", got)
		}
		if _, err := bob.cli.LeaveRoom(ctx, rooms[0]); err != nil {
			t.Fatal(err)
		}
		joinedOn(t, a, rooms[0], bob.id(), "leave")
		if _, err := alice.cli.LeaveRoom(ctx, rooms[1]); err != nil {
			t.Fatal(err)
		}
		joinedOn(t, a, rooms[1], alice.id(), "leave")
		if got := cachedDevices(t, a, bobID); !slices.Equal(got, []string{string(bob.cli.DeviceID)}) || remoteRowStale(t, a, bobID) {
			t.Fatalf("A's cache of bob, who still shares a room with alice: devices %v, stale %v", got, remoteRowStale(t, a, bobID))
		}
		b.stop()
		resp := alice.queryKeys(map[string][]string{bobID: {}}, 2000)
		if got := devicesOf(resp, bobID); len(resp.Failures) != 0 || !slices.Equal(got, []string{string(bob.cli.DeviceID)}) {
			t.Fatalf("alice's query of bob with B down: devices %v, failures %v; want his device from A's cache", got, resp.Failures)
		}
	})
}
