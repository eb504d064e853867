package keyserver_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/keyserver"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// contents returns the "n" field of each event, in order.
func contents(t *testing.T, events []keyserver.ToDeviceEvent) []float64 {
	t.Helper()
	out := []float64{}
	for _, e := range events {
		var c map[string]any
		if err := json.Unmarshal(e.Content, &c); err != nil {
			t.Fatal(err)
		}
		out = append(out, c["n"].(float64))
	}
	return out
}

func equal(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestToDevice: a replayed txnId delivers once (also after a restart);
// "*" reaches every device; messages come in order, survive a restart,
// and are deleted only when acknowledged (security case 36); remote
// recipients are queued for the federation sender; a deleted device's
// inbox goes with it.
func TestToDevice(t *testing.T) {
	for _, engine := range storagetest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			rs := testserver.Start(t, engine, nil)
			alice := register(t, rs, "alice")
			bob1 := register(t, rs, "bob")
			bob2 := bob1.login(t)
			send := func(txn string, to map[string]any) {
				t.Helper()
				status, body := alice.do(t, http.MethodPut, "/_matrix/client/v3/sendToDevice/m.room.encrypted/"+txn, map[string]any{"messages": to})
				if status != http.StatusOK {
					t.Fatalf("sendToDevice %s: %d %v", txn, status, body)
				}
			}
			send("t1", map[string]any{bob1.userID: map[string]any{"*": map[string]any{"n": 1}}})
			send("t1", map[string]any{bob1.userID: map[string]any{"*": map[string]any{"n": 99}}}) // replay
			send("t2", map[string]any{bob1.userID: map[string]any{bob1.deviceID: map[string]any{"n": 2}, "NOSUCHDEVICE": map[string]any{"n": 98}}})
			send("t3", map[string]any{bob1.userID: map[string]any{bob1.deviceID: map[string]any{"n": 3}}, "@carol:example.org": map[string]any{"C": map[string]any{"n": 4}}})

			ks := func() *keyserver.Server { return rs.HS.KeyServer }
			ev1, latest1, err := ks().ToDeviceSince(ctx, bob1.userID, bob1.deviceID, 0)
			if err != nil || !equal(contents(t, ev1), []float64{1, 2, 3}) {
				t.Fatalf("bob1 inbox: %v %v, want [1 2 3]", contents(t, ev1), err)
			}
			if ev1[0].Sender != alice.userID || ev1[0].Type != "m.room.encrypted" || latest1 != ev1[2].Position {
				t.Errorf("event fields: %+v latest %d", ev1[0], latest1)
			}
			ev2, _, _ := ks().ToDeviceSince(ctx, bob2.userID, bob2.deviceID, 0)
			if !equal(contents(t, ev2), []float64{1}) {
				t.Errorf("bob2 inbox: %v, want [1] (the * message only)", contents(t, ev2))
			}

			// Reading does not delete: a lost response is delivered again.
			again, _, _ := ks().ToDeviceSince(ctx, bob1.userID, bob1.deviceID, 0)
			if !equal(contents(t, again), []float64{1, 2, 3}) {
				t.Errorf("second read before ack: %v", contents(t, again))
			}
			// The client acknowledges the first message only.
			if err := ks().AckToDevice(ctx, bob1.userID, bob1.deviceID, ev1[0].Position); err != nil {
				t.Fatal(err)
			}

			rs.Restart(t)
			after, _, err := ks().ToDeviceSince(ctx, bob1.userID, bob1.deviceID, 0)
			if err != nil || !equal(contents(t, after), []float64{2, 3}) {
				t.Fatalf("bob1 inbox after ack and restart: %v %v, want [2 3]", contents(t, after), err)
			}
			// The replayed txnId stays a no-op across the restart.
			send("t1", map[string]any{bob1.userID: map[string]any{"*": map[string]any{"n": 97}}})
			ev2, _, _ = ks().ToDeviceSince(ctx, bob2.userID, bob2.deviceID, 0)
			if !equal(contents(t, ev2), []float64{1}) {
				t.Errorf("bob2 inbox after a post-restart replay: %v, want [1]", contents(t, ev2))
			}
			var outbound int
			if err := rs.HS.DB.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM keyserver_to_device_outbound WHERE destination = 'example.org'`).Scan(&outbound); err != nil || outbound != 1 {
				t.Errorf("outbound queue for example.org: %d %v, want 1", outbound, err)
			}
			// Messages after the acknowledged position, read from there.
			rest, latest, _ := ks().ToDeviceSince(ctx, bob1.userID, bob1.deviceID, after[0].Position)
			if !equal(contents(t, rest), []float64{3}) || latest != after[1].Position {
				t.Errorf("since the first unacked: %v latest %d", contents(t, rest), latest)
			}

			// Logging out bob2 deletes its inbox.
			if status, body := bob2.do(t, http.MethodPost, "/_matrix/client/v3/logout", map[string]any{}); status != http.StatusOK {
				t.Fatalf("logout: %d %v", status, body)
			}
			if gone, _, _ := ks().ToDeviceSince(ctx, bob2.userID, bob2.deviceID, 0); len(gone) != 0 {
				t.Errorf("a deleted device's inbox: %v, want empty", contents(t, gone))
			}
		})
	}
}
