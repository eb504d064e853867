package federationapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/keyserver"
)

// These tests drive two servers only through their client APIs, with
// mautrix-go, over the servers' TLS listeners.

const e2ePassword = "correct horse battery staple"

// syncer is a registered user who follows their own /sync stream.
type syncer struct {
	t     testing.TB
	cli   *mautrix.Client
	since string
	// events are every room event, by room, and invites seen so far.
	timeline  map[id.RoomID][]*event.Event
	ephemeral map[id.RoomID][]*event.Event
	invites   map[id.RoomID]bool
	// knocks are the knock_state of pending knocks; left the rooms seen
	// in rooms.leave.
	knocks   map[id.RoomID][]*event.Event
	left     map[id.RoomID]bool
	toDevice []*event.Event
}

// register makes a user on s with a mautrix client for it.
func (s *fedServer) register(local string) *syncer {
	t := s.n.t
	t.Helper()
	cli, err := mautrix.NewClient("https://"+s.Name, "", "")
	if err != nil {
		t.Fatal(err)
	}
	cli.Client = s.n.httpClient()
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: local, Password: e2ePassword})
	if err != nil {
		t.Fatalf("registering %s on %s: %v", local, s.Name, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return &syncer{t: t, cli: cli, timeline: map[id.RoomID][]*event.Event{},
		ephemeral: map[id.RoomID][]*event.Event{}, invites: map[id.RoomID]bool{},
		knocks: map[id.RoomID][]*event.Event{}, left: map[id.RoomID]bool{}}
}

func (u *syncer) id() id.UserID { return u.cli.UserID }

// syncOnce runs one /sync from the last token and records what came.
func (u *syncer) syncOnce() {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := u.cli.SyncRequest(ctx, 200, u.since, "", false, event.PresenceOnline)
	if err != nil {
		u.t.Fatalf("sync for %s: %v", u.id(), err)
	}
	u.since = resp.NextBatch
	for roomID, room := range resp.Rooms.Join {
		u.timeline[roomID] = append(u.timeline[roomID], room.Timeline.Events...)
		u.ephemeral[roomID] = append(u.ephemeral[roomID], room.Ephemeral.Events...)
		delete(u.invites, roomID)
	}
	for roomID := range resp.Rooms.Invite {
		u.invites[roomID] = true
		delete(u.knocks, roomID)
	}
	for roomID, room := range resp.Rooms.Knock {
		u.knocks[roomID] = room.State.Events
	}
	for roomID := range resp.Rooms.Leave {
		u.left[roomID] = true
		delete(u.knocks, roomID)
		delete(u.invites, roomID)
	}
	u.toDevice = append(u.toDevice, resp.ToDevice.Events...)
}

// await syncs until cond holds.
func (u *syncer) await(what string, cond func() bool) {
	u.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		u.syncOnce()
		if cond() {
			return
		}
	}
	u.t.Fatalf("%s: timed out waiting for %s", u.id(), what)
}

// sawMessage reports whether body arrived in roomID's timeline from sender.
func (u *syncer) sawMessage(roomID id.RoomID, sender id.UserID, body string) bool {
	return slices.ContainsFunc(u.timeline[roomID], func(e *event.Event) bool {
		var c struct {
			Body string `json:"body"`
		}
		_ = json.Unmarshal(e.Content.VeryRaw, &c)
		return e.Type == event.EventMessage && e.Sender == sender && c.Body == body
	})
}

func (u *syncer) send(roomID id.RoomID, body string) id.EventID {
	u.t.Helper()
	resp, err := u.cli.SendText(context.Background(), roomID, body)
	if err != nil {
		u.t.Fatalf("%s sending to %s: %v", u.id(), roomID, err)
	}
	return resp.EventID
}

// publicAliasedRoom creates a public room with alias #local:server.
func (u *syncer) publicAliasedRoom(alias string) id.RoomID {
	u.t.Helper()
	resp, err := u.cli.CreateRoom(context.Background(), &mautrix.ReqCreateRoom{
		Preset: "public_chat", Visibility: "public", RoomAliasName: alias, Name: "federated " + alias})
	if err != nil {
		u.t.Fatalf("createRoom: %v", err)
	}
	return resp.RoomID
}

// TestClientJoinRemoteRoomByAlias: bob on B joins alice's room on A by
// its alias, through B's client API; each then sees the other's message
// in /sync.
func TestClientJoinRemoteRoomByAlias(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.register("alice"), b.register("bob")
		roomID := alice.publicAliasedRoom("lobby")

		alias := id.RoomAlias("#lobby:" + a.Name)
		resp, err := bob.cli.JoinRoom(ctx, alias.String(), nil)
		if err != nil {
			t.Fatalf("bob joining %s: %v", alias, err)
		}
		if resp.RoomID != roomID {
			t.Fatalf("joined %s, want %s", resp.RoomID, roomID)
		}
		joined, err := bob.cli.JoinedRooms(ctx)
		if err != nil || !slices.Contains(joined.JoinedRooms, roomID) {
			t.Fatalf("bob's joined rooms: %v, %v", joined, err)
		}

		alice.send(roomID, "hello from A")
		bob.await("alice's message", func() bool { return bob.sawMessage(roomID, alice.id(), "hello from A") })
		bob.send(roomID, "hello from B")
		alice.await("bob's message", func() bool { return alice.sawMessage(roomID, bob.id(), "hello from B") })

		// Leaving goes back to A through B's own copy of the room.
		if _, err := bob.cli.LeaveRoom(ctx, roomID); err != nil {
			t.Fatalf("bob leaving: %v", err)
		}
		eventually(t, "A to see bob leave", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(bob.id()))
			return m == "leave"
		})
	})
}

// TestClientJoinErrors: an unknown remote alias is the remote's 404, and
// an unreachable server is 502, never 401 (security case 32).
func TestClientJoinErrors(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, "sqlite")
	a, b := n.start(), n.start()
	bob := b.register("bob")
	ctx := context.Background()
	_, err := bob.cli.JoinRoom(ctx, "#nothing:"+a.Name, nil)
	if !httpStatusIs(err, 404) {
		t.Fatalf("unknown remote alias: %v, want 404", err)
	}
	_, err = bob.cli.JoinRoom(ctx, "#nothing:localhost:1", nil)
	if !httpStatusIs(err, 502) {
		t.Fatalf("unreachable server: %v, want 502", err)
	}
}

func httpStatusIs(err error, status int) bool {
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil {
		return false
	}
	return he.Response.StatusCode == status
}

// TestClientInviteRemoteUser: alice on A invites bob on B to a private
// room; the invite reaches bob's /sync on B, bob joins through A, and
// they talk.
func TestClientInviteRemoteUser(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.register("alice"), b.register("bob")
		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "secret"})
		if err != nil {
			t.Fatal(err)
		}
		roomID := created.RoomID
		bob.syncOnce() // an incremental sync must bring the invite

		if _, err := alice.cli.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.id()}); err != nil {
			t.Fatalf("inviting bob: %v", err)
		}
		if m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(bob.id())); m != "invite" {
			t.Fatalf("bob's membership on A is %q, want invite", m)
		}
		bob.await("the invite", func() bool { return bob.invites[roomID] })

		if _, err := bob.cli.JoinRoomByID(ctx, roomID); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		bob.send(roomID, "thanks for the invite")
		alice.await("bob's message", func() bool { return alice.sawMessage(roomID, bob.id(), "thanks for the invite") })
		alice.send(roomID, "welcome")
		bob.await("alice's message", func() bool { return bob.sawMessage(roomID, alice.id(), "welcome") })
		if bob.invites[roomID] {
			t.Fatal("the invite is still pending after the join")
		}
	})
}

// TestClientRejectRemoteInvite: bob rejects an invite to a room only A
// holds; A sees the leave.
func TestClientRejectRemoteInvite(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, "sqlite")
	a, b := n.start(), n.start()
	ctx := context.Background()
	alice, bob := a.register("alice"), b.register("bob")
	created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.cli.InviteUser(ctx, created.RoomID, &mautrix.ReqInviteUser{UserID: bob.id()}); err != nil {
		t.Fatal(err)
	}
	bob.await("the invite", func() bool { return bob.invites[created.RoomID] })
	if _, err := bob.cli.LeaveRoom(ctx, created.RoomID); err != nil {
		t.Fatalf("rejecting: %v", err)
	}
	eventually(t, "A to see the rejection", func() bool {
		m, _ := a.HS.Rooms.Membership(ctx, string(created.RoomID), string(bob.id()))
		return m == "leave"
	})
}

// sawEphemeral reports whether an ephemeral event of type t in roomID
// mentions who (in its content).
func (u *syncer) sawEphemeral(roomID id.RoomID, t event.Type, who id.UserID) bool {
	return slices.ContainsFunc(u.ephemeral[roomID], func(e *event.Event) bool {
		return e.Type.Type == t.Type && strings.Contains(string(e.Content.VeryRaw), string(who))
	})
}

// clientPair makes alice on A and bob on B share a public room on A, and
// returns once B holds the room's full state. Until then (bob's join has
// partial state, MSC3706) B does not know alice is in the room: it does
// not track her device list, and the device-list updates and key queries
// of that window leave its cache empty until bob asks again after the
// resync (keyserver MembersRevealed; TestPartialStateJoinTracksMembers-
// UpdatedMeanwhile). Tests of B's cache that began inside that window
// failed when the resync lost the race (TestDehydratedDeviceAcrossServers
// on a loaded machine).
func clientPair(t *testing.T, n *network) (a, b *fedServer, alice, bob *syncer, roomID id.RoomID) {
	ctx := context.Background()
	a, b = n.start(), n.start()
	alice, bob = a.register("alice"), b.register("bob")
	roomID = alice.publicAliasedRoom("pair")
	if _, err := bob.cli.JoinRoom(ctx, "#pair:"+a.Name, nil); err != nil {
		t.Fatalf("bob joining: %v", err)
	}
	eventually(t, "A to see bob's join", func() bool {
		m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(bob.id()))
		return m == "join"
	})
	awaitCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := b.HS.Rooms.AwaitFullState(awaitCtx, string(roomID)); err != nil {
		t.Fatalf("B's resync of the room bob joined: %v", err)
	}
	return a, b, alice, bob, roomID
}

// TestClientEphemeralAcrossServers: alice's typing and read receipt on A
// reach bob's /sync on B, and bob's typing reaches alice.
func TestClientEphemeralAcrossServers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		_, _, alice, bob, roomID := clientPair(t, n)
		bob.syncOnce()

		if _, err := alice.cli.UserTyping(ctx, roomID, true, 30*time.Second); err != nil {
			t.Fatalf("typing: %v", err)
		}
		bob.await("alice typing", func() bool { return bob.sawEphemeral(roomID, event.EphemeralEventTyping, alice.id()) })

		msg := bob.send(roomID, "read me")
		alice.await("bob's message", func() bool { return alice.sawMessage(roomID, bob.id(), "read me") })
		if err := alice.cli.SendReceipt(ctx, roomID, msg, event.ReceiptTypeRead, nil); err != nil {
			t.Fatalf("receipt: %v", err)
		}
		bob.await("alice's receipt", func() bool { return bob.sawEphemeral(roomID, event.EphemeralEventReceipt, alice.id()) })

		alice.syncOnce()
		if _, err := bob.cli.UserTyping(ctx, roomID, true, 30*time.Second); err != nil {
			t.Fatalf("typing: %v", err)
		}
		alice.await("bob typing", func() bool { return alice.sawEphemeral(roomID, event.EphemeralEventTyping, bob.id()) })
	})
}

// TestClientToDeviceAcrossServers: a to-device message from alice on A
// reaches bob's device on B.
func TestClientToDeviceAcrossServers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		bob.syncOnce()
		req := &mautrix.ReqSendToDevice{Messages: map[id.UserID]map[id.DeviceID]*event.Content{
			bob.id(): {bob.cli.DeviceID: {Raw: map[string]any{"hello": "from A"}}},
		}}
		if _, err := alice.cli.SendToDevice(ctx, event.NewEventType("org.example.ping"), req); err != nil {
			t.Fatalf("sendToDevice: %v", err)
		}
		// Read bob's to-device stream on B from the key server: /sync
		// shows it once the key server is sync's E2EE source.
		eventually(t, "the to-device message in bob's inbox on B", func() bool {
			msgs, _, err := b.HS.KeyServer.ToDeviceSince(ctx, string(bob.id()), string(bob.cli.DeviceID), 0)
			return err == nil && slices.ContainsFunc(msgs, func(m keyserver.ToDeviceEvent) bool {
				return m.Sender == string(alice.id()) && m.Type == "org.example.ping" && strings.Contains(string(m.Content), "from A")
			})
		})
	})
}

// TestClientRemoteMedia: bob on B downloads through B's authenticated
// media endpoint what alice uploaded on A; B fetches it from A over the
// federation media API, signed, and caches it.
func TestClientRemoteMedia(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, "sqlite")
	n.editEachConfig = func(c *config.Config) {
		c.MediaAPI.OutboundIPAllow = []string{"127.0.0.1/32"} // the test servers are on loopback
	}
	a, b := n.start(), n.start()
	alice, bob := a.register("alice"), b.register("bob")
	ctx := context.Background()
	payload := []byte("a small file that crosses servers")
	up, err := alice.cli.UploadBytes(ctx, payload, "text/plain")
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	if up.ContentURI.Homeserver != a.Name {
		t.Fatalf("uploaded to %s", up.ContentURI)
	}
	get := func(who *syncer, path string) (int, []byte) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+b.Name+path, nil)
		if who != nil {
			req.Header.Set("Authorization", "Bearer "+who.cli.AccessToken)
		}
		resp, err := n.httpClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, body
	}
	path := "/_matrix/client/v1/media/download/" + up.ContentURI.Homeserver + "/" + up.ContentURI.FileID
	status, body := get(bob, path)
	if status != http.StatusOK || string(body) != string(payload) {
		t.Fatalf("download on B: %d %q", status, body)
	}
	// Unsigned requests to A's federation media API are refused.
	code, _ := n.request(a, b.Name, nil, a.Name, http.MethodGet, "/_matrix/federation/v1/media/download/"+up.ContentURI.FileID, nil)
	if code != http.StatusUnauthorized {
		t.Fatalf("unsigned federation media request: %d, want 401", code)
	}
	// Signed ones are served (multipart).
	code, data := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodGet, "/_matrix/federation/v1/media/download/"+up.ContentURI.FileID, nil)
	if code != http.StatusOK || !strings.Contains(string(data), string(payload)) {
		t.Fatalf("signed federation media request: %d %q", code, data)
	}
}

// TestClientRemoteProfileAndDirectory: B's client API answers for A's
// users and aliases by asking A over federation; A's public room list is
// readable from B.
func TestClientRemoteProfileAndDirectory(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, "sqlite")
	a, b := n.start(), n.start()
	alice, bob := a.register("alice"), b.register("bob")
	ctx := context.Background()
	if err := alice.cli.SetDisplayName(ctx, "Alice of A"); err != nil {
		t.Fatal(err)
	}
	profile, err := bob.cli.GetProfile(ctx, alice.id())
	if err != nil || profile.DisplayName != "Alice of A" {
		t.Fatalf("remote profile: %+v, %v", profile, err)
	}
	if _, err := bob.cli.GetProfile(ctx, id.UserID("@nobody:"+a.Name)); !httpStatusIs(err, 404) {
		t.Fatalf("unknown remote user: %v, want 404", err)
	}
	roomID := alice.publicAliasedRoom("hall")
	res, err := bob.cli.ResolveAlias(ctx, id.RoomAlias("#hall:"+a.Name))
	if err != nil || res.RoomID != roomID || !slices.Contains(res.Servers, a.Name) {
		t.Fatalf("remote alias: %+v, %v", res, err)
	}
	list, err := bob.cli.PublicRooms(ctx, &mautrix.ReqPublicRooms{Server: a.Name})
	if err != nil || !slices.ContainsFunc(list.Chunk, func(r *mautrix.PublicRoomInfo) bool { return r.RoomID == roomID }) {
		t.Fatalf("A's public rooms from B: %+v, %v", list, err)
	}
}

// TestClientRejectLocalInviteToEmptyRoom: with federation on, an invite whose
// inviter (the last member) has left is rejected here, not through
// another server (there is none). Complement: TestRoomsInvite "Invited
// user can reject invite for empty room".
func TestClientRejectLocalInviteToEmptyRoom(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		alice, bob := a.register("alice"), a.register("bob")
		ctx := context.Background()
		room, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.id()}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alice.cli.LeaveRoom(ctx, room.RoomID); err != nil {
			t.Fatal(err)
		}
		if _, err := bob.cli.LeaveRoom(ctx, room.RoomID); err != nil {
			t.Fatalf("rejecting the invite: %v", err)
		}
		if m, _ := a.HS.Rooms.Membership(ctx, string(room.RoomID), string(bob.id())); m != "leave" {
			t.Fatalf("bob's membership is %q after rejecting", m)
		}
	})
}

// TestClientRemoteInviteFullCreateEvent: the invite_room_state sent with
// a remote invite carries the whole m.room.create event, so the
// invitee's sync shows it with its origin_server_ts and room_id.
// Spec: MSC4311; Complement TestMSC4311FullCreateEventOnStrippedState.
func TestClientRemoteInviteFullCreateEvent(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		ctx := context.Background()
		room, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Invite: []id.UserID{bob.id()}})
		if err != nil {
			t.Fatal(err)
		}
		var create *event.Event
		bob.await("the invite", func() bool {
			resp, err := bob.cli.SyncRequest(ctx, 0, "", "", false, "")
			if err != nil {
				t.Fatal(err)
			}
			inv, ok := resp.Rooms.Invite[room.RoomID]
			if !ok {
				return false
			}
			for _, ev := range inv.State.Events {
				if ev.Type == event.StateCreate {
					create = ev
				}
			}
			return true
		})
		if create == nil || create.Timestamp == 0 || create.RoomID != room.RoomID || create.Sender != alice.id() ||
			create.ID != id.EventID("$"+strings.TrimPrefix(string(room.RoomID), "!")) {
			t.Fatalf("create event in invite_state: %+v", create)
		}
	})
}
