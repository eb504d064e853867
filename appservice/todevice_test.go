package appservice_test

import (
	"fmt"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// toDeviceTo returns the to-device items of txns addressed to userID.
func toDeviceTo(txns []txn, userID string) []map[string]any {
	var out []map[string]any
	for _, tx := range txns {
		for _, m := range tx.ToDevice {
			if m["to_user_id"] == userID {
				out = append(out, m)
			}
		}
	}
	return out
}

// MSC2409 / MSC4203: a service that opted in (receive_ephemeral and
// org.matrix.msc3202) gets the to-device messages for its users' devices
// under de.sorunome.msc2409.to_device with to_user_id and to_device_id,
// each once and in order; nothing for other users; a service that did
// not opt in gets none. The inboxes keep every message for /sync. A
// failed transaction is retried with the same body, also after a
// restart, and the stream resumes after it.
func TestAppServiceToDevice(t *testing.T) {
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
		_, bobToken := register(t, srv, "bob")
		carol, carolToken := register(t, srv, "carol")
		dave, daveToken := register(t, srv, "dave")
		device := func(token string) string {
			_, body := call(t, "GET", v3+"/account/whoami", token, nil)
			return body["device_id"].(string)
		}
		carolDevice, daveDevice := device(carolToken), device(daveToken)
		n := 0
		send := func(to, dev string, content map[string]any) {
			n++
			if st, body := call(t, "PUT", fmt.Sprintf("%s/sendToDevice/m.test/td%d", v3, n), bobToken, map[string]any{
				"messages": map[string]any{to: map[string]any{dev: content}}}); st != 200 {
				t.Fatalf("sendToDevice: %d %v", st, body)
			}
		}
		syncContents := func(token string) []string {
			st, body := call(t, "GET", v3+"/sync?timeout=0", token, nil)
			if st != 200 {
				t.Fatalf("sync: %d %v", st, body)
			}
			td, _ := body["to_device"].(map[string]any)
			evs, _ := td["events"].([]any)
			var out []string
			for _, e := range evs {
				out = append(out, fmt.Sprint(e.(map[string]any)["content"].(map[string]any)["n"]))
			}
			return out
		}
		contents := func(ms []map[string]any) []string {
			var out []string
			for _, m := range ms {
				out = append(out, fmt.Sprint(m["content"].(map[string]any)["n"]))
			}
			return out
		}

		send(carol, carolDevice, map[string]any{"n": "carol"})
		send(dave, daveDevice, map[string]any{"n": "dave"})
		send(alice, aliceDevice, map[string]any{"n": "a1"})
		send(alice, aliceDevice, map[string]any{"n": "a2"})
		waitFor(t, "alice's messages", func() bool { return len(toDeviceTo(fs.snapshot(), alice)) >= 2 })
		m := toDeviceTo(fs.snapshot(), alice)[0]
		if m["to_device_id"] != aliceDevice || m["type"] != "m.test" || m["sender"] != "@bob:localhost" {
			t.Fatalf("pushed to-device message %v", m)
		}
		if got := contents(toDeviceTo(fs.snapshot(), alice)); fmt.Sprint(got) != "[a1 a2]" {
			t.Fatalf("alice's pushed messages %v, want [a1 a2] once each in order", got)
		}
		for _, tx := range fs.snapshot() {
			for _, m := range tx.ToDevice {
				if m["to_user_id"] != alice {
					t.Fatalf("message for %v, outside the namespaces, pushed: %v", m["to_user_id"], m)
				}
			}
		}
		// The inbox keeps them: alice's device may /sync too.
		if got := syncContents(aliceToken); fmt.Sprint(got) != "[a1 a2]" {
			t.Fatalf("alice's /sync to-device %v, want [a1 a2]", got)
		}
		// Dave is in the legacy service's namespace, but it did not opt
		// in (no org.matrix.msc3202): nothing pushed; his /sync has it.
		if got := syncContents(daveToken); fmt.Sprint(got) != "[dave]" {
			t.Fatalf("dave's /sync to-device %v, want [dave]", got)
		}
		if got := syncContents(carolToken); fmt.Sprint(got) != "[carol]" {
			t.Fatalf("carol's /sync to-device %v, want [carol]", got)
		}
		// A marker event shows the other services are up to date.
		st, body = call(t, "POST", v3+"/createRoom", bobToken, map[string]any{})
		if st != 200 {
			t.Fatalf("createRoom: %d %v", st, body)
		}
		room := body["room_id"].(string)
		roomSeen := func(txns []txn) bool {
			for _, tx := range txns {
				for _, ev := range tx.Events {
					if ev["room_id"] == room {
						return true
					}
				}
			}
			return false
		}
		waitFor(t, "the legacy and plain services see the room", func() bool {
			return roomSeen(legacy.snapshot()) && roomSeen(plain.snapshot())
		})
		for _, f := range []*fakeService{plain, legacy} {
			for _, tx := range f.snapshot() {
				if len(tx.ToDevice) > 0 {
					t.Fatalf("to-device pushed to a service that did not opt in: %s", tx.Body)
				}
			}
		}

		// The service fails: the transaction holding the message is
		// retried with the same txnId and body.
		fs.setFail(true)
		send(alice, aliceDevice, map[string]any{"n": "a3"})
		var failedID, failedBody string
		waitFor(t, "a failed transaction with a3", func() bool {
			for _, tx := range fs.snapshot() {
				if fmt.Sprint(contents(tx.ToDevice)) == "[a3]" {
					failedID, failedBody = tx.ID, tx.Body
					return true
				}
			}
			return false
		})
		send(alice, aliceDevice, map[string]any{"n": "a4"})
		k := len(fs.snapshot())
		waitFor(t, "two more attempts", func() bool { return len(fs.snapshot()) >= k+2 })
		for _, tx := range fs.snapshot() {
			if tx.ID == failedID && tx.Body != failedBody {
				t.Fatalf("retry of %s altered:\nfirst %s\nretry %s", failedID, failedBody, tx.Body)
			}
		}

		// Restart: the pending transaction again, identical; then a4,
		// which no transaction held yet, once.
		srv.Restart(t)
		v3 = srv.URL + "/_matrix/client/v3"
		fs.mu.Lock()
		fs.txns = nil
		fs.mu.Unlock()
		fs.setFail(false)
		waitFor(t, "the pending transaction after restart", func() bool { return len(fs.snapshot()) > 0 })
		if first := fs.snapshot()[0]; first.ID != failedID || first.Body != failedBody {
			t.Fatalf("after restart first came %s %s, want %s %s", first.ID, first.Body, failedID, failedBody)
		}
		send(alice, aliceDevice, map[string]any{"n": "a5"})
		waitFor(t, "a5", func() bool { return len(toDeviceTo(fs.snapshot(), alice)) >= 3 })
		if got := contents(toDeviceTo(distinct(t, fs.snapshot()), alice)); fmt.Sprint(got) != "[a3 a4 a5]" {
			t.Fatalf("after restart alice's pushed messages %v, want [a3 a4 a5]", got)
		}
		if got := syncContents(aliceToken); fmt.Sprint(got) != "[a1 a2 a3 a4 a5]" {
			t.Fatalf("alice's /sync to-device %v, want all five", got)
		}
	})
}
