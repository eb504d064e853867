//go:build goolm

package homeserver_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/backup"
	"maunium.net/go/mautrix/crypto/cryptohelper"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// Issue 5's proof, with mautrix-go's crypto (pure-Go olm with -tags
// goolm): go test -tags goolm ./internal/homeserver/ -run TestE2EE

const e2eePassword = "correct horse battery staple"

// cryptoDevice is one logged-in device running a real client: a mautrix
// sync loop whose crypto helper (SQLite crypto and state stores in the
// test's temp dir) handles to-device messages, device lists, one-time
// key counts and decryption.
type cryptoDevice struct {
	cli  *mautrix.Client
	mach *crypto.OlmMachine

	mu    sync.Mutex
	texts map[id.EventID]string // bodies of decrypted m.room.message events
	pings map[string]int        // org.example.ping to-device events by content.n

	stop func()
}

// newCryptoDevice registers localpart (register) or logs in to it, and
// sets up the device's crypto, which uploads its keys. Its sync loop
// starts with start.
func newCryptoDevice(t *testing.T, srv *testserver.Server, localpart string, register bool) *cryptoDevice {
	t.Helper()
	ctx := context.Background()
	cli, err := mautrix.NewClient(srv.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	cli.Log = zerolog.Nop()
	if os.Getenv("MYELIN_TEST_CLIENT_LOG") != "" {
		cli.Log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).With().Str("client", localpart).Timestamp().Logger()
	}
	if register {
		resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: localpart, Password: e2eePassword})
		if err != nil {
			t.Fatalf("registering %s: %v", localpart, err)
		}
		cli.SetCredentials(resp.UserID, resp.AccessToken)
		cli.DeviceID = resp.DeviceID
	} else if _, err := cli.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword, Password: e2eePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart}, StoreCredentials: true}); err != nil {
		t.Fatalf("logging in %s: %v", localpart, err)
	}
	pickleKey := make([]byte, 32)
	_, _ = rand.Read(pickleKey)
	helper, err := cryptohelper.NewCryptoHelper(cli, pickleKey, filepath.Join(t.TempDir(), "crypto.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Init(ctx); err != nil {
		t.Fatalf("crypto init for %s/%s: %v", cli.UserID, cli.DeviceID, err)
	}
	t.Cleanup(func() { _ = helper.Close() })
	cli.Crypto = helper
	d := &cryptoDevice{cli: cli, mach: helper.Machine(), texts: map[id.EventID]string{}, pings: map[string]int{}, stop: func() {}}
	syncer := cli.Syncer.(*mautrix.DefaultSyncer)
	syncer.OnEventType(event.EventMessage, func(_ context.Context, evt *event.Event) {
		if msg := evt.Content.AsMessage(); evt.Mautrix.WasEncrypted && msg != nil {
			d.mu.Lock()
			d.texts[evt.ID] = msg.Body
			d.mu.Unlock()
		}
	})
	syncer.OnEventType(event.Type{Type: "org.example.ping", Class: event.ToDeviceEventType}, func(_ context.Context, evt *event.Event) {
		n, _ := evt.Content.Raw["n"].(string)
		d.mu.Lock()
		d.pings[n]++
		d.mu.Unlock()
	})
	return d
}

// start runs the device's sync loop until stop (or the test's end).
func (d *cryptoDevice) start(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = d.cli.SyncWithContext(ctx)
	}()
	var once sync.Once
	d.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(d.stop)
}

func (d *cryptoDevice) text(evID id.EventID) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.texts[evID]
}

func (d *cryptoDevice) pingCount(n string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pings[n]
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// trustIn fetches userID's devices afresh on viewer and resolves its
// trust in each of deviceIDs.
func trustIn(t *testing.T, viewer *cryptoDevice, userID id.UserID, deviceIDs ...id.DeviceID) []id.TrustState {
	t.Helper()
	devices, err := viewer.mach.FetchKeys(context.Background(), []id.UserID{userID}, true)
	if err != nil {
		t.Fatalf("FetchKeys: %v", err)
	}
	var out []id.TrustState
	for _, d := range deviceIDs {
		dev := devices[userID][d]
		if dev == nil {
			t.Fatalf("%s's view has no device %s of %s", viewer.cli.UserID, d, userID)
		}
		out = append(out, viewer.mach.ResolveTrust(dev))
	}
	return out
}

// signOwnDevice has signer (holding its user's private cross-signing
// keys) sign another device of the same user.
func signOwnDevice(t *testing.T, signer *cryptoDevice, deviceID id.DeviceID) {
	t.Helper()
	ctx := context.Background()
	dev, err := signer.mach.GetOrFetchDevice(ctx, signer.cli.UserID, deviceID)
	if err != nil {
		t.Fatalf("fetching own device %s: %v", deviceID, err)
	}
	if err := signer.mach.SignOwnDevice(ctx, dev); err != nil {
		t.Fatalf("signing own device %s: %v", deviceID, err)
	}
}

// bootstrapCrossSigning creates and publishes first's user's
// cross-signing keys and signs every listed device with them.
func bootstrapCrossSigning(t *testing.T, first *cryptoDevice, others ...*cryptoDevice) *crypto.CrossSigningKeysCache {
	t.Helper()
	ctx := context.Background()
	keys, err := first.mach.GenerateCrossSigningKeys()
	if err != nil {
		t.Fatal(err)
	}
	if err := first.mach.PublishCrossSigningKeys(ctx, keys, nil); err != nil {
		t.Fatalf("publishing cross-signing keys: %v", err)
	}
	if err := first.mach.SignOwnMasterKey(ctx); err != nil {
		t.Fatalf("SignOwnMasterKey: %v", err)
	}
	if err := first.mach.SignOwnDevice(ctx, first.mach.OwnIdentity()); err != nil {
		t.Fatalf("SignOwnDevice: %v", err)
	}
	for _, o := range others {
		signOwnDevice(t, first, o.cli.DeviceID)
	}
	return keys
}

// TestE2EEJourney is issue 5's proof. Alice and Bob, two devices each,
// every device running a real sync loop; Alice sends in an encrypted
// room and both of Bob's devices decrypt the text; cross-signing makes
// Bob's devices verified in Alice's view once she signs his master key;
// a third device of Bob's restores the room key from the server-side
// key backup and decrypts; a replayed to-device transaction arrives
// once; and the plaintext is nowhere in the database.
func TestE2EEJourney(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		const secret = "the owl flies at dawn over the seventh bridge"
		const roomName = "Proof of encryption"
		a1 := newCryptoDevice(t, srv, "alice", true)
		a2 := newCryptoDevice(t, srv, "alice", false)
		b1 := newCryptoDevice(t, srv, "bob", true)
		b2 := newCryptoDevice(t, srv, "bob", false)
		bob := b1.cli.UserID
		for _, d := range []*cryptoDevice{a1, a2, b1, b2} {
			d.start(t)
		}

		// Cross-signing for both; Bob's devices are cross-signed but not
		// yet verified in Alice's view.
		bootstrapCrossSigning(t, a1, a2)
		bobKeys := bootstrapCrossSigning(t, b1, b2)
		for i, trust := range trustIn(t, a1, bob, b1.cli.DeviceID, b2.cli.DeviceID) {
			if trust != id.TrustStateCrossSignedTOFU {
				t.Fatalf("alice's trust in bob's device %d before she verified him: %s, want cross-signed (TOFU)", i+1, trust)
			}
		}

		// The encrypted room, created over the client API.
		empty := ""
		created, err := a1.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: roomName, Invite: []id.UserID{bob},
			InitialState: []*event.Event{{Type: event.StateEncryption, StateKey: &empty,
				Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}}})
		if err != nil {
			t.Fatalf("createRoom: %v", err)
		}
		room := created.RoomID
		if _, err := b1.cli.JoinRoomByID(ctx, room); err != nil {
			t.Fatalf("bob joins: %v", err)
		}
		// Alice's client learns of the join and the encryption from sync.
		waitFor(t, "alice's client to see bob joined an encrypted room", 20*time.Second, func() bool {
			enc, _ := a1.cli.StateStore.IsEncrypted(ctx, room)
			return enc && a1.cli.StateStore.IsMembership(ctx, room, bob, event.MembershipJoin)
		})

		sent, err := a1.cli.SendMessageEvent(ctx, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: secret})
		if err != nil {
			t.Fatalf("alice sends: %v", err)
		}
		stored, err := b1.cli.GetEvent(ctx, room, sent.EventID)
		if err != nil || stored.Type != event.EventEncrypted {
			t.Fatalf("the stored event: %v %v, want m.room.encrypted", stored, err)
		}
		for _, d := range []*cryptoDevice{b1, b2, a2} {
			waitFor(t, fmt.Sprintf("%s/%s to decrypt alice's message", d.cli.UserID, d.cli.DeviceID), 20*time.Second,
				func() bool { return d.text(sent.EventID) != "" })
			if got := d.text(sent.EventID); got != secret {
				t.Errorf("%s/%s decrypted %q, want %q", d.cli.UserID, d.cli.DeviceID, got, secret)
			}
		}

		// Alice verifies Bob by signing his master key: his devices are
		// now verified by cross-signing in her view.
		if err := a1.mach.SignUser(ctx, bob, bobKeys.MasterKey.PublicKey()); err != nil {
			t.Fatalf("alice signs bob's master key: %v", err)
		}
		for i, trust := range trustIn(t, a1, bob, b1.cli.DeviceID, b2.cli.DeviceID) {
			if trust != id.TrustStateCrossSignedVerified {
				t.Errorf("alice's trust in bob's device %d after verifying him: %s, want cross-signed verified", i+1, trust)
			}
		}

		// Bob backs up the room key from his first device...
		if err := stored.Content.ParseRaw(stored.Type); err != nil {
			t.Fatal(err)
		}
		sessionID := stored.Content.AsEncrypted().SessionID
		sess, err := b1.mach.CryptoStore.GetGroupSession(ctx, room, sessionID)
		if err != nil || sess == nil {
			t.Fatalf("bob's inbound session %s: %v %v", sessionID, sess, err)
		}
		backupKey, err := backup.NewMegolmBackupKey()
		if err != nil {
			t.Fatal(err)
		}
		authData := backup.MegolmAuthData{PublicKey: id.Ed25519(base64.RawStdEncoding.EncodeToString(backupKey.PublicKey().Bytes()))}
		version, err := b1.cli.CreateKeyBackupVersion(ctx, &mautrix.ReqRoomKeysVersionCreate[backup.MegolmAuthData]{
			Algorithm: id.KeyBackupAlgorithmMegolmBackupV1, AuthData: authData})
		if err != nil {
			t.Fatalf("creating the backup version: %v", err)
		}
		first := sess.Internal.FirstKnownIndex()
		exported, err := sess.Internal.Export(first)
		if err != nil {
			t.Fatal(err)
		}
		chain := sess.ForwardingChains
		if chain == nil {
			chain = []string{}
		}
		encrypted, err := backup.EncryptSessionData(backupKey, backup.MegolmSessionData{Algorithm: id.AlgorithmMegolmV1,
			ForwardingKeyChain: chain, SenderClaimedKeys: backup.SenderClaimedKeys{Ed25519: sess.SigningKey},
			SenderKey: sess.SenderKey, SessionKey: string(exported)})
		if err != nil {
			t.Fatal(err)
		}
		sessionData, _ := json.Marshal(encrypted)
		if _, err := b1.cli.PutKeysInBackupForRoomAndSession(ctx, version.Version, room, sessionID,
			&mautrix.ReqKeyBackupData{FirstMessageIndex: int(first), IsVerified: true, SessionData: sessionData}); err != nil {
			t.Fatalf("uploading the key to the backup: %v", err)
		}

		// ...and a new device restores it (Bob entered his recovery key),
		// is cross-signed by his first device, and decrypts the history
		// its first sync brings.
		b3 := newCryptoDevice(t, srv, "bob", false)
		signOwnDevice(t, b1, b3.cli.DeviceID)
		if s, _ := b3.mach.CryptoStore.GetGroupSession(ctx, room, sessionID); s != nil {
			t.Fatal("the new device has the room key before restoring the backup")
		}
		if v, err := b3.mach.DownloadAndStoreLatestKeyBackup(ctx, backupKey); err != nil || v != version.Version {
			t.Fatalf("restoring the backup: version %q %v, want %q", v, err, version.Version)
		}
		b3.start(t)
		waitFor(t, "bob's new device to decrypt alice's message", 20*time.Second, func() bool { return b3.text(sent.EventID) != "" })
		if got := b3.text(sent.EventID); got != secret {
			t.Errorf("bob's new device decrypted %q, want %q", got, secret)
		}
		if trust := trustIn(t, a1, bob, b3.cli.DeviceID)[0]; trust != id.TrustStateCrossSignedVerified {
			t.Errorf("alice's trust in bob's new device: %s, want cross-signed verified", trust)
		}

		// A replayed to-device transaction is delivered once: the ping
		// sent after it arrives, and the replay never did.
		ping := func(txn, n string) {
			t.Helper()
			_, err := a1.cli.MakeFullRequest(ctx, mautrix.FullRequest{Method: http.MethodPut,
				URL:         a1.cli.BuildClientURL("v3", "sendToDevice", "org.example.ping", txn),
				RequestJSON: map[string]any{"messages": map[string]any{bob.String(): map[string]any{b1.cli.DeviceID.String(): map[string]any{"n": n}}}}})
			if err != nil {
				t.Fatalf("sendToDevice %s: %v", txn, err)
			}
		}
		ping("txn-once", "once")
		ping("txn-once", "once")
		ping("txn-after", "after")
		waitFor(t, "the ping after the replay", 20*time.Second, func() bool { return b1.pingCount("after") == 1 })
		if n := b1.pingCount("once"); n != 1 {
			t.Errorf("a to-device message sent twice with one txnId arrived %d times", n)
		}

		for _, d := range []*cryptoDevice{a1, a2, b1, b2, b3} {
			d.stop()
		}
		found := scanDatabase(t, srv, secret, roomName)
		if found[roomName] == 0 {
			t.Fatalf("the scan did not find the room name %q: it cannot see the data", roomName)
		}
		if found[secret] != 0 {
			t.Errorf("the plaintext of the encrypted message is in the database (%d places)", found[secret])
		}
	})
}

// scanDatabase counts the database values (every text and binary
// column of every table) containing each needle.
func scanDatabase(t *testing.T, srv *testserver.Server, needles ...string) map[string]int {
	t.Helper()
	found := map[string]int{}
	if srv.HS.DB.Engine() == storage.Postgres {
		scanPostgres(t, srv, needles, found)
		return found
	}
	db, err := sql.Open("sqlite3", "file:"+srv.Config.Database.SQLitePath+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var tables []string
	rows, err := db.Query(`SELECT name FROM sqlite_master WHERE type = 'table'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, name)
	}
	rows.Close()
	if len(tables) < 10 {
		t.Fatalf("only %d tables in the database: %v", len(tables), tables)
	}
	for _, table := range tables {
		rows, err := db.Query(`SELECT * FROM "` + table + `"`)
		if err != nil {
			t.Fatalf("reading %s: %v", table, err)
		}
		cols, _ := rows.Columns()
		values := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range values {
			ptrs[i] = &values[i]
		}
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatalf("reading %s: %v", table, err)
			}
			for _, v := range values {
				var s string
				switch v := v.(type) {
				case string:
					s = v
				case []byte:
					s = string(v)
				default:
					continue
				}
				for _, n := range needles {
					if strings.Contains(s, n) {
						found[n]++
					}
				}
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
	}
	return found
}

// scanPostgres searches every text, JSON and bytea column of the test's
// schema.
func scanPostgres(t *testing.T, srv *testserver.Server, needles []string, found map[string]int) {
	t.Helper()
	ctx := context.Background()
	q := srv.HS.DB.Reader()
	rows, err := q.Query(ctx, `SELECT table_name, column_name, data_type FROM information_schema.columns
		WHERE table_schema = current_schema() AND data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'bytea')`)
	if err != nil {
		t.Fatal(err)
	}
	type column struct{ table, name, typ string }
	var cols []column
	for rows.Next() {
		var c column
		if err := rows.Scan(&c.table, &c.name, &c.typ); err != nil {
			t.Fatal(err)
		}
		cols = append(cols, c)
	}
	rows.Close()
	if len(cols) < 10 {
		t.Fatalf("only %d text columns in the schema", len(cols))
	}
	for _, c := range cols {
		cond := `strpos("` + c.name + `"::text, $1) > 0`
		if c.typ == "bytea" {
			cond = `position(convert_to($1, 'UTF8') in "` + c.name + `") > 0`
		}
		for _, n := range needles {
			var count int
			if err := q.QueryRow(ctx, `SELECT COUNT(*) FROM "`+c.table+`" WHERE `+cond, n).Scan(&count); err != nil {
				t.Fatalf("scanning %s.%s: %v", c.table, c.name, err)
			}
			found[n] += count
		}
	}
}
