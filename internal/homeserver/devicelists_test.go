package homeserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/authn"
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
		rooms := untrackingRooms(t, db, nil)

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
		// own sends for a local user, and for a remote one as a PDU
		// (inputEvent).
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
			inputEvent(t, rooms, remoteKey, roomID, userID, "m.room.member", userID, `{"membership":"`+membership+`"}`, nil)
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
		cacheDeviceLists(t, db, remote...)
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

// TestUntrackOnKickAndBan: a remote member kicked or banned by a local
// one stops being tracked when that was the last room they shared with
// a local user; one kicked who still shares another room keeps their
// cache. Spec: client-server-api, "Tracking the device list for a user"
// (kicks and bans end the sharing as leaves do).
func TestUntrackOnKickAndBan(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		rooms := untrackingRooms(t, db, nil)
		const alice, carol = "@alice:test.local", "@carol:test.local"
		const kicked, banned, sharer = "@kicked:remote.example", "@banned:remote.example", "@sharer:remote.example"
		room, err := rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: alice, Preset: "public_chat"})
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
		for _, u := range []string{kicked, banned, sharer} {
			inputEvent(t, rooms, remoteKey, room.RoomID, u, "m.room.member", u, `{"membership":"join"}`, nil)
		}
		inputEvent(t, rooms, remoteKey, other.RoomID, sharer, "m.room.member", sharer, `{"membership":"join"}`, nil)
		cacheDeviceLists(t, db, kicked, banned, sharer)

		for _, u := range []string{kicked, sharer} {
			if _, err := rooms.Kick(ctx, roomserver.MembershipRequest{RoomID: room.RoomID, Sender: alice, Target: u}); err != nil {
				t.Fatalf("kicking %s: %v", u, err)
			}
		}
		if _, err := rooms.Ban(ctx, roomserver.MembershipRequest{RoomID: room.RoomID, Sender: alice, Target: banned}); err != nil {
			t.Fatalf("banning %s: %v", banned, err)
		}
		for u, want := range map[string]bool{kicked: false, banned: false, sharer: true} {
			if got := cachedFresh(t, db, u); got != want {
				t.Errorf("%s: cache kept %v, want %v", u, got, want)
			}
		}
	})
}

// inputEvent builds an event of sender's on prevs (nil: the room's
// forward extremities), with its auth events taken from the room's
// current state, and inputs it as a PDU from sender's server, signed with
// key (the federation API, not the roomserver, checks signatures).
func inputEvent(t *testing.T, rooms *roomserver.Server, key *signing.Key, roomID, sender, eventType, stateKey, content string, prevs []string) string {
	t.Helper()
	ctx := context.Background()
	version, err := rooms.RoomVersion(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	impl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
	var auth []gomatrixserverlib.PDU
	for _, k := range [][2]string{{"m.room.create", ""}, {"m.room.power_levels", ""}, {"m.room.join_rules", ""}, {"m.room.member", sender}} {
		ev, err := rooms.RoomStateEvent(ctx, roomID, k[0], k[1])
		if err != nil {
			continue // the sender's own member event, before they join
		}
		pdu, err := impl.NewEventFromTrustedJSONWithEventID(ev.EventID, ev.JSON, false)
		if err != nil {
			t.Fatal(err)
		}
		auth = append(auth, pdu)
	}
	if prevs == nil {
		if prevs, err = rooms.Extremities(ctx, roomID); err != nil {
			t.Fatal(err)
		}
	}
	var depth int64
	for _, id := range prevs {
		ev, _, err := rooms.FederationEvent(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		depth = max(depth, ev.Depth)
	}
	eb := impl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: roomID,
		Type: eventType, StateKey: &stateKey, Content: []byte(content),
		PrevEvents: prevs, Depth: depth + 1, Version: impl})
	provider, err := gomatrixserverlib.NewAuthEvents(auth)
	if err != nil {
		t.Fatal(err)
	}
	if err := eb.AddAuthEvents(provider); err != nil {
		t.Fatal(err)
	}
	_, origin, _ := strings.Cut(sender, ":")
	pdu, err := eb.Build(time.Now(), spec.ServerName(origin), gomatrixserverlib.KeyID(key.ID), key.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rooms.InputEvent(ctx, roomserver.InputEventRequest{RoomVersion: version, JSON: pdu.JSON()})
	if err != nil || resp.Outcome != roomserver.Accepted {
		t.Fatalf("%s's %s: %v %+v", sender, eventType, err, resp)
	}
	return pdu.EventID()
}

// untrackingRooms starts a roomserver on db whose hooks untrack device
// lists as the homeserver's do (untrackOnLeave, untrackOnJoinsEnded),
// with the key server's tables in place. afterLeave, when not nil, runs
// in each timeline event's transaction after its untracking.
func untrackingRooms(t *testing.T, db *storage.DB, afterLeave func(tx storage.Tx, ev roomserver.TimelineEvent)) *roomserver.Server {
	t.Helper()
	ctx := context.Background()
	key, err := signing.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if err := keyserver.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	var untrack func(context.Context, storage.Tx, roomserver.TimelineEvent) error
	var untrackEnded roomserver.JoinsEndedHook
	rooms, err := roomserver.New(ctx, roomserver.Deps{DB: db, ServerName: "test.local", Key: key,
		Config: config.RoomServer{DefaultRoomVersion: "12"}, Notify: func(string, int64) {},
		OnTimeline: func(ctx context.Context, tx storage.Tx, ev roomserver.TimelineEvent) (func(), error) {
			if err := untrack(ctx, tx, ev); err != nil {
				return nil, err
			}
			if afterLeave != nil {
				afterLeave(tx, ev)
			}
			return nil, nil
		},
		OnJoinsEnded: func(ctx context.Context, tx storage.Tx, roomID string, ended []string) error {
			return untrackEnded(ctx, tx, roomID, ended)
		}})
	if err != nil {
		t.Fatal(err)
	}
	untrack = untrackOnLeave(rooms, db.Engine(), "test.local")
	untrackEnded = untrackOnJoinsEnded(rooms, db.Engine(), "test.local")
	return rooms
}

// cacheDeviceLists stores a fresh cached device list, with one device,
// for each of userIDs, as a fetch would have.
func cacheDeviceLists(t *testing.T, db *storage.DB, userIDs ...string) {
	t.Helper()
	ctx := context.Background()
	if err := db.Write(ctx, func(tx storage.Tx) error {
		for _, u := range userIDs {
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
}

// cachedFresh reports whether userID's cached device list is fresh, and
// fails the test if a stale one still holds keys.
func cachedFresh(t *testing.T, db *storage.DB, userID string) bool {
	t.Helper()
	ctx := context.Background()
	var stale bool
	var keys int
	if err := db.Reader().QueryRow(ctx, `SELECT stale, (SELECT COUNT(*) FROM keyserver_remote_device_keys k WHERE k.user_id = u.user_id)
		FROM keyserver_remote_users u WHERE user_id = $1`, userID).Scan(&stale, &keys); err != nil {
		t.Fatal(err)
	}
	if stale && keys != 0 {
		t.Fatalf("%s's stale cache still holds %d keys", userID, keys)
	}
	return !stale
}

// TestUntrackOnStateReset: a remote user's join ended by state
// resolution alone — an incoming fork (alice, from before they joined,
// makes the public room invite-only) whose resolution rejects their
// join, with no leave event of theirs — untracks their device list, in
// the incoming event's transaction, when they share no other room with
// a local user (the roomserver's JoinsEndedHook); one who still shares
// another room keeps theirs. Likewise a reset of the join of a room's
// last local member untracks the remote members who then share no room
// with a local user. Spec: client-server-api, "Tracking the device list
// for a user"; rooms v2, "State resolution" (a join is authorised
// against the resolved join rules).
func TestUntrackOnStateReset(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		rooms := untrackingRooms(t, db, nil)
		const alice, carol = "@alice:test.local", "@carol:test.local"
		const gone, stays = "@gone:remote.example", "@stays:remote.example"
		room, err := rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: alice, Preset: "public_chat"})
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
		forkPoint, err := rooms.Extremities(ctx, room.RoomID)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range []string{gone, stays} {
			inputEvent(t, rooms, remoteKey, room.RoomID, u, "m.room.member", u, `{"membership":"join"}`, nil)
		}
		inputEvent(t, rooms, remoteKey, other.RoomID, stays, "m.room.member", stays, `{"membership":"join"}`, nil)
		cacheDeviceLists(t, db, gone, stays)

		inputEvent(t, rooms, remoteKey, room.RoomID, alice, "m.room.join_rules", "", `{"join_rule":"invite"}`, forkPoint)
		for _, u := range []string{gone, stays} {
			if ev, err := rooms.RoomStateEvent(ctx, room.RoomID, "m.room.member", u); err == nil && ev.Membership == "join" {
				t.Fatalf("%s is still joined after the reset: the fork did not reset their join", u)
			}
		}
		if cachedFresh(t, db, gone) {
			t.Errorf("%s, whose join the state reset ended and who shares no other room, is still tracked", gone)
		}
		if !cachedFresh(t, db, stays) {
			t.Errorf("%s, who still shares another room with a local user, lost their cache", stays)
		}

		// A local user's join reset: bob, the room's last local member
		// (alice has left), joined after the fork point, so the same
		// kind of fork, from the remote admin, ends his join, and the
		// remote member still joined shares no room with a local user.
		const bob, admin, lone = "@bob:test.local", "@admin:remote.example", "@lone:remote.example"
		second, err := rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: alice, Preset: "public_chat",
			PowerLevelContentOverride: map[string]any{"users": map[string]any{admin: 100}}})
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range []string{admin, lone} {
			inputEvent(t, rooms, remoteKey, second.RoomID, u, "m.room.member", u, `{"membership":"join"}`, nil)
		}
		if forkPoint, err = rooms.Extremities(ctx, second.RoomID); err != nil {
			t.Fatal(err)
		}
		if _, err := rooms.Join(ctx, roomserver.MembershipRequest{RoomID: second.RoomID, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		if _, err := rooms.Leave(ctx, roomserver.MembershipRequest{RoomID: second.RoomID, Sender: alice}); err != nil {
			t.Fatal(err)
		}
		cacheDeviceLists(t, db, lone)
		inputEvent(t, rooms, remoteKey, second.RoomID, admin, "m.room.join_rules", "", `{"join_rule":"invite"}`, forkPoint)
		if ev, err := rooms.RoomStateEvent(ctx, second.RoomID, "m.room.member", bob); err == nil && ev.Membership == "join" {
			t.Fatalf("%s is still joined after the reset: the fork did not reset his join", bob)
		}
		if ev, err := rooms.RoomStateEvent(ctx, second.RoomID, "m.room.member", lone); err != nil || ev.Membership != "join" {
			t.Fatalf("%s: %+v, %v; want still joined", lone, ev, err)
		}
		if cachedFresh(t, db, lone) {
			t.Errorf("%s, left with no local member by the reset of the last local join, is still tracked", lone)
		}
	})
}

// TestUntrackRacingLeaves: on PostgreSQL, a remote user's leave of one
// room and the leave of the last local member of the other room they
// share, written at once, do not both keep their cached device list
// (each seeing the other room still shared, the other's write not
// committed). The user's leave is held open inside its transaction once
// it has decided (the cache kept: the other room is still shared); the
// local member's leave is started meanwhile, and runs until it waits
// for the first (or, were nothing to order them, commits); then the
// first is let go. The second must see the first's commit and untrack.
// SQLite writes one transaction at a time, so this cannot happen there.
// Spec: client-server-api, "Tracking the device list for a user".
func TestUntrackRacingLeaves(t *testing.T) {
	db := storagetest.OpenPostgres(t)
	ctx := context.Background()
	const alice, bob, user = "@alice:test.local", "@bob:test.local", "@racer:remote.example"
	var roomA string
	held := make(chan int64, 1) // the held transaction's backend PID
	release := make(chan struct{})
	rooms := untrackingRooms(t, db, func(tx storage.Tx, ev roomserver.TimelineEvent) {
		e := ev.Event
		if e.RoomID != roomA || e.Type != "m.room.member" || e.StateKey == nil || *e.StateKey != user || e.Membership != "leave" {
			return
		}
		var pid int64
		if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
			t.Error(err)
		}
		held <- pid
		<-release
	})
	a, err := rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: alice, Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: bob, Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	remoteKey, err := signing.Generate()
	if err != nil {
		t.Fatal(err)
	}
	for _, roomID := range []string{a.RoomID, b.RoomID} {
		inputEvent(t, rooms, remoteKey, roomID, user, "m.room.member", user, `{"membership":"join"}`, nil)
	}
	cacheDeviceLists(t, db, user)
	roomA = a.RoomID

	firstDone := make(chan struct{})
	go func() {
		defer close(firstDone)
		inputEvent(t, rooms, remoteKey, a.RoomID, user, "m.room.member", user, `{"membership":"leave"}`, nil)
	}()
	var pid int64
	select {
	case pid = <-held:
	case <-time.After(30 * time.Second):
		close(release)
		t.Fatal("the user's leave never reached its hook")
	}
	if !cachedFresh(t, db, user) {
		close(release)
		t.Fatal("the held leave untracked before the other leave ran: the test sets nothing up")
	}
	secondDone := make(chan error, 1)
	go func() {
		_, err := rooms.Leave(ctx, roomserver.MembershipRequest{RoomID: b.RoomID, Sender: bob})
		secondDone <- err
	}()
	// Wait until the second leave waits for a lock the first holds, or
	// has committed without waiting.
	var secondErr error
	secondFinished := false
	deadline := time.Now().Add(30 * time.Second)
	for !secondFinished {
		select {
		case secondErr = <-secondDone:
			secondFinished = true
			continue
		default:
		}
		var waiting int
		if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))`, pid).Scan(&waiting); err != nil {
			close(release)
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			close(release)
			t.Fatal("the second leave neither finished nor waited on the first")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	<-firstDone
	if !secondFinished {
		secondErr = <-secondDone
	}
	if secondErr != nil {
		t.Fatal(secondErr)
	}
	if cachedFresh(t, db, user) {
		t.Errorf("%s shares no room with a local user after both leaves, and is still tracked", user)
	}
}

// TestUntrackSweepWithRooms: the key server's one-time check of the
// device-list caches older binaries kept (keyserver migration 006),
// reading the rooms through the roomserver as the homeserver wires it:
// a remote user still joined to a room with a local user keeps their
// cache; one who left before the upgrade (with no cache row then, so no
// untracking) and one who never shared a room lose theirs. Spec:
// client-server-api, "Tracking the device list for a user".
func TestUntrackSweepWithRooms(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		rooms := untrackingRooms(t, db, nil)
		const alice, joined, left, never = "@alice:test.local", "@joined:remote.example", "@left:remote.example", "@never:remote.example"
		room, err := rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: alice, Preset: "public_chat"})
		if err != nil {
			t.Fatal(err)
		}
		remoteKey, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range []string{joined, left} {
			inputEvent(t, rooms, remoteKey, room.RoomID, u, "m.room.member", u, `{"membership":"join"}`, nil)
		}
		inputEvent(t, rooms, remoteKey, room.RoomID, left, "m.room.member", left, `{"membership":"leave"}`, nil)
		// The caches as an older binary left them, and the mark migration
		// 006 writes on a database holding any (the keyserver test
		// TestUntrackSweepAfterUpgrade runs the migration itself).
		cacheDeviceLists(t, db, joined, left, never)
		if err := db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO keyserver_untrack_sweep (id) VALUES (1)`)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := keyserver.New(ctx, keyserver.Deps{ServerName: "test.local", DB: db, Verifier: noTokens{},
			UserDevices: func(context.Context, string) (map[string]string, error) { return nil, nil },
			SharedInTx: func(ctx context.Context, q storage.Querier, userIDs []string) ([]string, error) {
				return rooms.SharingLocalRoomInTx(ctx, q, userIDs, "")
			}}); err != nil {
			t.Fatal(err)
		}
		if !cachedFresh(t, db, joined) {
			t.Errorf("%s, joined to a room with a local user, lost their cache", joined)
		}
		for _, u := range []string{left, never} {
			if cachedFresh(t, db, u) {
				t.Errorf("%s, sharing no room with a local user, is still tracked after the upgrade", u)
			}
		}
	})
}

// noTokens is an authn.Verifier that knows no access token.
type noTokens struct{}

func (noTokens) VerifyAccessToken(context.Context, string, *http.Request) (*authn.Device, error) {
	return nil, errors.New("no tokens here")
}
