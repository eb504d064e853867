package federationapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
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
	toDevice  []*event.Event
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
		ephemeral: map[id.RoomID][]*event.Event{}, invites: map[id.RoomID]bool{}}
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
