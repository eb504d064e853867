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

// MSC2409 / MSC4203: to-device messages for a service's users are pushed
// under de.sorunome.msc2409.to_device with to_user_id and to_device_id;
// those of its exclusive users leave their inbox with the transaction
// that holds them, those of non-exclusive users stay for /sync.
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
		toDeviceEvents := func(token string) []any {
			st, body := call(t, "GET", v3+"/sync?timeout=0", token, nil)
			if st != 200 {
				t.Fatalf("sync: %d %v", st, body)
			}
			td, _ := body["to_device"].(map[string]any)
			evs, _ := td["events"].([]any)
			return evs
		}

		send(carol, carolDevice, map[string]any{"n": "carol"})
		send(dave, daveDevice, map[string]any{"n": "dave"})
		send(alice, aliceDevice, map[string]any{"n": "alice"})
		waitFor(t, "alice's message", func() bool { return len(toDeviceTo(fs.snapshot(), alice)) > 0 })
		m := toDeviceTo(fs.snapshot(), alice)[0]
		if m["to_device_id"] != aliceDevice || m["type"] != "m.test" || m["sender"] != "@bob:localhost" ||
			m["content"].(map[string]any)["n"] != "alice" {
			t.Fatalf("pushed to-device message %v", m)
		}
		for _, u := range []string{carol, dave} {
			if got := toDeviceTo(fs.snapshot(), u); len(got) != 0 {
				t.Fatalf("message for %s, outside the namespaces, pushed: %v", u, got)
			}
		}
		// Alice is in an exclusive namespace: her inbox is empty now.
		if evs := toDeviceEvents(aliceToken); len(evs) != 0 {
			t.Fatalf("alice's pushed message still in her inbox: %v", evs)
		}
		// Dave is in the legacy service's non-exclusive namespace: pushed
		// to it, and still delivered to his /sync.
		waitFor(t, "dave's message to the legacy service", func() bool { return len(toDeviceTo(legacy.snapshot(), dave)) > 0 })
		if m := toDeviceTo(legacy.snapshot(), dave)[0]; m["to_device_id"] != daveDevice {
			t.Fatalf("dave's message %v", m)
		}
		if evs := toDeviceEvents(daveToken); len(evs) != 1 {
			t.Fatalf("dave's /sync to-device events %v, want his message", evs)
		}
		if evs := toDeviceEvents(carolToken); len(evs) != 1 {
			t.Fatalf("carol's /sync to-device events %v, want her message", evs)
		}
		for _, tx := range plain.snapshot() {
			if len(tx.ToDevice) > 0 {
				t.Fatalf("to-device pushed to a service without receive_ephemeral: %s", tx.Body)
			}
		}

		// The service fails: the message is held by the stored
		// transaction, retried unchanged, and not in the inbox either.
		fs.setFail(true)
		send(alice, aliceDevice, map[string]any{"n": "second"})
		waitFor(t, "two attempts with the second message", func() bool {
			ids := map[string]int{}
			for _, tx := range fs.snapshot() {
				for _, m := range tx.ToDevice {
					if m["content"].(map[string]any)["n"] == "second" {
						ids[tx.ID]++
					}
				}
			}
			return len(ids) == 1 && func() bool {
				for _, c := range ids {
					return c >= 2
				}
				return false
			}()
		})
		distinct(t, fs.snapshot())
		if evs := toDeviceEvents(aliceToken); len(evs) != 0 {
			t.Fatalf("alice's message held by a pending transaction still in her inbox: %v", evs)
		}
		fs.setFail(false)
	})
}
