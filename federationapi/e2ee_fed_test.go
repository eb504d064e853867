//go:build goolm

package federationapi_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/cryptohelper"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Issue 7's E2EE proof, with mautrix-go's crypto (pure-Go olm):
// go test -tags goolm ./federationapi/ -run TestE2EEAcrossServers

// olmClient is a registered user's device running a mautrix sync loop
// with a crypto helper, recording the texts it decrypted.
type olmClient struct {
	cli   *mautrix.Client
	mu    sync.Mutex
	texts map[id.EventID]string
}

func (s *fedServer) olmClient(t *testing.T, local string) *olmClient {
	t.Helper()
	ctx := context.Background()
	cli, err := mautrix.NewClient("https://"+s.Name, "", "")
	if err != nil {
		t.Fatal(err)
	}
	cli.Client = s.n.httpClient()
	cli.Log = zerolog.Nop()
	if os.Getenv("MYELIN_TEST_CLIENT_LOG") != "" {
		cli.Log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).With().Str("client", local+"@"+s.Name).Logger()
	}
	resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: local, Password: e2ePassword})
	if err != nil {
		t.Fatalf("registering %s: %v", local, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	pickleKey := make([]byte, 32)
	_, _ = rand.Read(pickleKey)
	helper, err := cryptohelper.NewCryptoHelper(cli, pickleKey, filepath.Join(t.TempDir(), "crypto.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Init(ctx); err != nil {
		t.Fatalf("crypto init: %v", err)
	}
	cli.Crypto = helper
	c := &olmClient{cli: cli, texts: map[id.EventID]string{}}
	cli.Syncer.(*mautrix.DefaultSyncer).OnEventType(event.EventMessage, func(_ context.Context, evt *event.Event) {
		if msg := evt.Content.AsMessage(); evt.Mautrix.WasEncrypted && msg != nil {
			c.mu.Lock()
			c.texts[evt.ID] = msg.Body
			c.mu.Unlock()
		}
	})
	syncCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = cli.SyncWithContext(syncCtx)
	}()
	// Runs before the servers stop (cleanups run last-in first-out).
	t.Cleanup(func() { cancel(); <-done; _ = helper.Close() })
	return c
}

func (c *olmClient) text(evID id.EventID) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.texts[evID]
}

func (c *olmClient) awaitText(t *testing.T, evID id.EventID, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for c.text(evID) == "" {
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s did not decrypt %s within 30s", c.cli.UserID, c.cli.DeviceID, evID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := c.text(evID); got != want {
		t.Fatalf("%s decrypted %q, want %q", c.cli.UserID, got, want)
	}
}

// TestE2EEAcrossServers: alice on A and bob on B, real clients with
// Olm/Megolm, talk in an encrypted room; each decrypts the other. The
// keys cross through /keys/query and /keys/claim fan-out, the room keys
// as m.direct_to_device EDUs; the servers hold only ciphertext.
func TestE2EEAcrossServers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		e2eeConversation(t, a, b, "alice", "bob")
	})
}

// e2eeConversation registers olm clients aliceLocal on a and bobLocal
// on b, has them share an encrypted room on a, and checks that each
// decrypts the other's message while b stores only ciphertext.
func e2eeConversation(t *testing.T, a, b *fedServer, aliceLocal, bobLocal string) {
	t.Helper()
	ctx := context.Background()
	alice, bob := a.olmClient(t, aliceLocal), b.olmClient(t, bobLocal)
	empty := ""
	created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "encrypted across servers",
		InitialState: []*event.Event{{Type: event.StateEncryption, StateKey: &empty,
			Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}}})
	if err != nil {
		t.Fatalf("createRoom: %v", err)
	}
	room := created.RoomID
	if _, err := alice.cli.InviteUser(ctx, room, &mautrix.ReqInviteUser{UserID: bob.cli.UserID}); err != nil {
		t.Fatalf("inviting bob: %v", err)
	}
	eventuallyErr(t, "bob to join alice's room on A", func() error {
		_, err := bob.cli.JoinRoomByID(ctx, room)
		return err
	})
	for _, c := range []*olmClient{alice, bob} {
		other := bob.cli.UserID
		if c == bob {
			other = alice.cli.UserID
		}
		eventually(t, fmt.Sprintf("%s's client to see the encrypted room with %s", c.cli.UserID, other), func() bool {
			enc, _ := c.cli.StateStore.IsEncrypted(ctx, room)
			return enc && c.cli.StateStore.IsMembership(ctx, room, other, event.MembershipJoin)
		})
	}

	const fromAlice = "a secret that crosses from A to B"
	sent, err := alice.cli.SendMessageEvent(ctx, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: fromAlice})
	if err != nil {
		t.Fatalf("alice sends: %v", err)
	}
	bob.awaitText(t, sent.EventID, fromAlice)

	const fromBob = "and one that crosses back from B to A"
	reply, err := bob.cli.SendMessageEvent(ctx, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: fromBob})
	if err != nil {
		t.Fatalf("bob sends: %v", err)
	}
	alice.awaitText(t, reply.EventID, fromBob)

	// What B stored of alice's message is the ciphertext.
	stored, err := bob.cli.GetEvent(ctx, room, sent.EventID)
	if err != nil || stored.Type != event.EventEncrypted {
		t.Fatalf("B's copy of alice's message: %v %v, want m.room.encrypted", stored, err)
	}
}

func eventuallyErr(t testing.TB, what string, fn func() error) {
	t.Helper()
	var err error
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s: %v", what, err)
}
