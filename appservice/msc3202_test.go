package appservice_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// deviceLists is MSC3202's org.matrix.msc3202.device_lists.
type deviceLists struct {
	Changed []string `json:"changed"`
	Left    []string `json:"left"`
}

// uploadKeys uploads a fresh self-signed identity for the device, with
// otks signed one-time keys and, if fallback, a signed fallback key. more
// uploads n further one-time keys signed by the same identity.
func uploadKeys(t *testing.T, v3, token, userID, deviceID string, otks int, fallback bool) (more func(n int)) {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	b64 := base64.RawStdEncoding.EncodeToString
	sign := func(obj map[string]any) map[string]any {
		raw, _ := json.Marshal(obj)
		canonical, err := gomatrixserverlib.CanonicalJSON(raw)
		if err != nil {
			t.Fatal(err)
		}
		obj["signatures"] = map[string]any{userID: map[string]any{"ed25519:" + deviceID: b64(ed25519.Sign(priv, canonical))}}
		return obj
	}
	curve := func() string {
		k := make([]byte, 32)
		_, _ = rand.Read(k)
		return b64(k)
	}
	req := map[string]any{"device_keys": sign(map[string]any{
		"user_id": userID, "device_id": deviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]any{"ed25519:" + deviceID: b64(pub), "curve25519:" + deviceID: curve()},
	})}
	if otks > 0 {
		keys := map[string]any{}
		for i := range otks {
			keys[fmt.Sprintf("signed_curve25519:K%d", i)] = sign(map[string]any{"key": curve()})
		}
		req["one_time_keys"] = keys
	}
	if fallback {
		req["fallback_keys"] = map[string]any{"signed_curve25519:FB": sign(map[string]any{"key": curve(), "fallback": true})}
	}
	if st, body := call(t, "POST", v3+"/keys/upload", token, req); st != 200 {
		t.Fatalf("keys/upload for %s: %d %v", userID, st, body)
	}
	next := otks
	return func(n int) {
		t.Helper()
		keys := map[string]any{}
		for range n {
			keys[fmt.Sprintf("signed_curve25519:K%d", next)] = sign(map[string]any{"key": curve()})
			next++
		}
		if st, body := call(t, "POST", v3+"/keys/upload", token, map[string]any{"one_time_keys": keys}); st != 200 {
			t.Fatalf("keys/upload for %s: %d %v", userID, st, body)
		}
	}
}

// inChanged and inLeft say whether a transaction of txns lists userID in
// device_lists.changed (left).
func inChanged(txns []txn, userID string) bool {
	return slices.ContainsFunc(txns, func(tx txn) bool { return tx.DeviceLists != nil && slices.Contains(tx.DeviceLists.Changed, userID) })
}

func inLeft(txns []txn, userID string) bool {
	return slices.ContainsFunc(txns, func(tx txn) bool { return tx.DeviceLists != nil && slices.Contains(tx.DeviceLists.Left, userID) })
}

// lastCounts returns the last one-time key counts and unused fallback
// types pushed for the device, and whether any were.
func lastCounts(txns []txn, userID, deviceID string) (string, string, bool) {
	for i := len(txns) - 1; i >= 0; i-- {
		if c, ok := txns[i].OTKCounts[userID][deviceID]; ok {
			f, fok := txns[i].Fallback[userID][deviceID]
			if !fok {
				return fmt.Sprint(c), "missing", true
			}
			return fmt.Sprint(c), fmt.Sprint(f), true
		}
	}
	return "", "", false
}

// MSC3202: a service that opted in (receive_ephemeral and
// org.matrix.msc3202) gets org.matrix.msc3202.device_lists (changed:
// users sharing a room with its users whose device list changed or who
// started sharing one; left: users who no longer share any), and the
// one-time key counts and unused fallback key types of its users'
// devices after each change. Services that did not opt in get none of
// it. A failed transaction is retried with the same body, also after a
// restart, and the streams resume after it.
func TestAppServiceMSC3202(t *testing.T) {
	fs, plain, legacy := newFakeService(t), newFakeService(t), newFakeService(t)
	plain.hs, legacy.hs = "plain-hs", "legacy-hs"
	testserver.ForEachEngine(t, withEphemeralServices(t, fs, plain, legacy), func(t *testing.T, srv *testserver.Server) {
		for _, f := range []*fakeService{fs, plain, legacy} {
			f.mu.Lock()
			f.txns, f.fail = nil, false
			f.mu.Unlock()
		}
		v3 := srv.URL + "/_matrix/client/v3"
		st, body := call(t, "POST", v3+"/register", asToken, map[string]any{
			"type": "m.login.application_service", "username": "_bridge_alice"})
		if st != 200 {
			t.Fatalf("AS registration: %d %v", st, body)
		}
		alice, aliceToken, aliceDevice := body["user_id"].(string), body["access_token"].(string), body["device_id"].(string)
		bob, bobToken := register(t, srv, "bob")
		carol, carolToken := register(t, srv, "carol")
		login := func(user string) (token, device string) {
			st, body := call(t, "POST", v3+"/login", "", map[string]any{"type": "m.login.password",
				"identifier": map[string]any{"type": "m.id.user", "user": user}, "password": "correct horse battery staple"})
			if st != 200 {
				t.Fatalf("login %s: %d %v", user, st, body)
			}
			return body["access_token"].(string), body["device_id"].(string)
		}
		join := func(token, room string) {
			t.Helper()
			if st, body := call(t, "POST", v3+"/join/"+url.PathEscape(room), token, map[string]any{}); st != 200 {
				t.Fatalf("join: %d %v", st, body)
			}
		}
		leave := func(token, room string) string {
			t.Helper()
			st, body := call(t, "POST", v3+"/rooms/"+url.PathEscape(room)+"/leave", token, map[string]any{})
			if st != 200 {
				t.Fatalf("leave: %d %v", st, body)
			}
			return room
		}

		// Bob's room; alice joins: bob starts sharing a room with the
		// service's user.
		st, body = call(t, "POST", v3+"/createRoom", bobToken, map[string]any{"preset": "public_chat"})
		if st != 200 {
			t.Fatalf("createRoom: %d %v", st, body)
		}
		room := body["room_id"].(string)
		join(aliceToken, room)
		waitFor(t, "bob in changed after alice joined", func() bool { return inChanged(fs.snapshot(), bob) })

		// Bob's new device uploads keys: bob changed again. Carol, who
		// shares no room, does the same: never reported.
		k := len(fs.snapshot())
		carolToken2, carolDevice2 := login("carol")
		uploadKeys(t, v3, carolToken2, carol, carolDevice2, 0, false)
		bobToken2, bobDevice2 := login("bob")
		uploadKeys(t, v3, bobToken2, bob, bobDevice2, 0, false)
		waitFor(t, "bob in changed after his new device's keys", func() bool { return inChanged(fs.snapshot()[k:], bob) })

		// Alice's device uploads 3 one-time keys and a fallback key.
		moreAliceKeys := uploadKeys(t, v3, aliceToken, alice, aliceDevice, 3, true)
		waitFor(t, "alice's counts", func() bool {
			c, f, _ := lastCounts(fs.snapshot(), alice, aliceDevice)
			return c == "map[signed_curve25519:3]" && f == "[signed_curve25519]"
		})
		claim := func() {
			t.Helper()
			st, body := call(t, "POST", v3+"/keys/claim", bobToken, map[string]any{
				"one_time_keys": map[string]any{alice: map[string]any{aliceDevice: "signed_curve25519"}}})
			if st != 200 {
				t.Fatalf("claim: %d %v", st, body)
			}
		}
		claim()
		waitFor(t, "alice's counts after a claim", func() bool {
			c, _, _ := lastCounts(fs.snapshot(), alice, aliceDevice)
			return c == "map[signed_curve25519:2]"
		})
		claim()
		claim()
		waitFor(t, "alice's counts at zero", func() bool {
			c, f, _ := lastCounts(fs.snapshot(), alice, aliceDevice)
			return c == "map[]" && f == "[signed_curve25519]"
		})
		claim() // the fallback key
		waitFor(t, "alice's fallback key used", func() bool {
			c, f, _ := lastCounts(fs.snapshot(), alice, aliceDevice)
			return c == "map[]" && f == "[]"
		})
		for _, tx := range fs.snapshot() {
			for u := range tx.OTKCounts {
				if u != alice {
					t.Fatalf("counts of %s, outside the namespaces, pushed: %s", u, tx.Body)
				}
			}
		}

		// Carol, who shares no room with alice, makes a room of her own
		// and leaves it: nothing the service may hear of.
		st, body = call(t, "POST", v3+"/createRoom", carolToken, map[string]any{"preset": "private_chat"})
		if st != 200 {
			t.Fatalf("carol's createRoom: %d %v", st, body)
		}
		leave(carolToken, body["room_id"].(string))
		// Bob leaves the only room he shares with alice: left.
		leave(bobToken, room)
		waitFor(t, "bob in left", func() bool { return inLeft(fs.snapshot(), bob) })
		if inChanged(fs.snapshot(), carol) || inLeft(fs.snapshot(), carol) {
			t.Fatalf("carol, who shares no room with the service's users, reported")
		}

		// The services that did not opt in are up to date (they see the
		// room) and got none of it.
		st, body = call(t, "PUT", v3+"/rooms/"+url.PathEscape(room)+"/send/m.room.message/marker", aliceToken,
			map[string]any{"msgtype": "m.text", "body": "marker"})
		if st != 200 {
			t.Fatalf("send: %d %v", st, body)
		}
		marker := body["event_id"].(string)
		waitFor(t, "the plain and legacy services see the marker", func() bool {
			return findEvent(plain.snapshot(), marker) != "" && findEvent(legacy.snapshot(), marker) != ""
		})
		for _, f := range []*fakeService{plain, legacy} {
			for _, tx := range f.snapshot() {
				if strings.Contains(tx.Body, "org.matrix.msc3202") {
					t.Fatalf("MSC3202 data pushed to a service that did not opt in: %s", tx.Body)
				}
			}
		}

		// The service fails: the transaction with bob's return is
		// retried with the same txnId and body. Meanwhile carol joins,
		// bob's third device uploads keys and alice's device 2 one-time
		// keys: each reaches the service once, after the restart.
		fs.setFail(true)
		k = len(fs.snapshot())
		join(bobToken, room)
		var failedID, failedBody string
		waitFor(t, "a failed transaction with bob in changed", func() bool {
			for _, tx := range fs.snapshot()[k:] {
				if tx.DeviceLists != nil && slices.Contains(tx.DeviceLists.Changed, bob) {
					failedID, failedBody = tx.ID, tx.Body
					return true
				}
			}
			return false
		})
		join(carolToken, room)
		bobToken3, bobDevice3 := login("bob")
		uploadKeys(t, v3, bobToken3, bob, bobDevice3, 0, false)
		moreAliceKeys(2)
		k = len(fs.snapshot())
		waitFor(t, "two more attempts", func() bool { return len(fs.snapshot()) >= k+2 })
		for _, tx := range fs.snapshot() {
			if tx.ID == failedID && tx.Body != failedBody {
				t.Fatalf("retry of %s altered:\nfirst %s\nretry %s", failedID, failedBody, tx.Body)
			}
		}

		// Restart: the pending transaction again, identical; then
		// carol's join, once.
		srv.Restart(t)
		fs.mu.Lock()
		fs.txns = nil
		fs.mu.Unlock()
		fs.setFail(false)
		waitFor(t, "the pending transaction after restart", func() bool { return len(fs.snapshot()) > 0 })
		if first := fs.snapshot()[0]; first.ID != failedID || first.Body != failedBody {
			t.Fatalf("after restart first came %s %s, want %s %s", first.ID, first.Body, failedID, failedBody)
		}
		waitFor(t, "carol in changed, bob's new device and alice's counts after restart", func() bool {
			c, _, _ := lastCounts(fs.snapshot(), alice, aliceDevice)
			return inChanged(fs.snapshot(), carol) && inChanged(fs.snapshot()[1:], bob) && c == "map[signed_curve25519:2]"
		})
		carols, bobs, counts := 0, 0, 0
		for _, tx := range distinct(t, fs.snapshot())[1:] {
			if tx.DeviceLists != nil && slices.Contains(tx.DeviceLists.Changed, carol) {
				carols++
			}
			if tx.DeviceLists != nil && slices.Contains(tx.DeviceLists.Changed, bob) {
				bobs++
			}
			if _, ok := tx.OTKCounts[alice][aliceDevice]; ok {
				counts++
			}
		}
		if carols != 1 || bobs != 1 || counts != 1 {
			t.Fatalf("after the retried transaction: carol in changed %d times, bob %d, alice's counts %d; want each once", carols, bobs, counts)
		}
	})
}
