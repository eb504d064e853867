package syncapi_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/keyserver"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/syncapi"
)

// The E2EE side of /sync and sliding sync against the real key server.

func deviceOf(u *user) string { return string(u.client.DeviceID) }

// sendToDevice sends {"n": n} as org.example.test from `from` to the
// device of `to`, with transaction ID txn.
func sendToDevice(t *testing.T, srv *testserver.Server, from, to *user, txn string, n int) {
	t.Helper()
	body := fmt.Sprintf(`{"messages":{%q:{%q:{"n":%d}}}}`, to.id, deviceOf(to), n)
	status, resp := rawRequest(t, srv, from, http.MethodPut, "/_matrix/client/v3/sendToDevice/org.example.test/"+txn, body)
	if status != http.StatusOK {
		t.Fatalf("sendToDevice: %d %v", status, resp)
	}
}

// toDeviceNs returns the "n" of each to_device event of a sync body, in
// order, checking sender and type.
func toDeviceNs(t *testing.T, events any, sender string) []int {
	t.Helper()
	list, ok := events.([]any)
	if !ok {
		t.Fatalf("to_device events: %v", events)
	}
	out := []int{}
	for _, e := range list {
		ev := e.(map[string]any)
		if ev["sender"] != sender || ev["type"] != "org.example.test" {
			t.Errorf("to-device event %v, want type org.example.test from %s", ev, sender)
		}
		out = append(out, int(ev["content"].(map[string]any)["n"].(float64)))
	}
	return out
}

func syncOK(t *testing.T, srv *testserver.Server, u *user, query string) map[string]any {
	t.Helper()
	status, body := rawSync(t, srv, u, query)
	if status != http.StatusOK {
		t.Fatalf("/sync?%s: %d %v", query, status, body)
	}
	return body
}

// uploadDeviceKeys uploads a fresh self-signed device identity for u's
// device, with one signed one-time key and a fallback key.
func uploadDeviceKeys(t *testing.T, srv *testserver.Server, u *user) {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	b64 := base64.RawStdEncoding.EncodeToString
	sign := func(obj map[string]any) map[string]any {
		raw, _ := json.Marshal(obj)
		canonical, err := gomatrixserverlib.CanonicalJSON(raw)
		if err != nil {
			t.Fatal(err)
		}
		obj["signatures"] = map[string]any{u.id: map[string]any{"ed25519:" + deviceOf(u): b64(ed25519.Sign(priv, canonical))}}
		return obj
	}
	curve := func() string {
		k := make([]byte, 32)
		_, _ = rand.Read(k)
		return b64(k)
	}
	body, _ := json.Marshal(map[string]any{
		"device_keys": sign(map[string]any{
			"user_id": u.id, "device_id": deviceOf(u),
			"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
			"keys":       map[string]any{"ed25519:" + deviceOf(u): b64(pub), "curve25519:" + deviceOf(u): curve()},
		}),
		"one_time_keys": map[string]any{"signed_curve25519:AAAA": sign(map[string]any{"key": curve()})},
		"fallback_keys": map[string]any{"signed_curve25519:BBBB": sign(map[string]any{"key": curve(), "fallback": true})},
	})
	if status, resp := rawRequest(t, srv, u, http.MethodPost, "/_matrix/client/v3/keys/upload", string(body)); status != http.StatusOK {
		t.Fatalf("keys/upload: %d %v", status, resp)
	}
}

// TestStreamNamesMatch: sync listens under the names the key server
// notifies.
func TestStreamNamesMatch(t *testing.T) {
	if syncapi.ToDeviceStream != keyserver.ToDeviceStream || syncapi.DeviceListStream != keyserver.DeviceListStream {
		t.Errorf("sync streams %q/%q, key server streams %q/%q", syncapi.ToDeviceStream, syncapi.DeviceListStream,
			keyserver.ToDeviceStream, keyserver.DeviceListStream)
	}
}

// TestSyncToDeviceDeliveryAndAck: to-device messages arrive in /sync in
// order, a replayed transaction ID once; they are redelivered until the
// client presents a later token, also across a restart between delivery
// and acknowledgement (security case 36), and deleted once it does.
func TestSyncToDeviceDeliveryAndAck(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		sendToDevice(t, srv, alice, bob, "t1", 1)
		sendToDevice(t, srv, alice, bob, "t2", 2)
		sendToDevice(t, srv, alice, bob, "t2", 2) // a retry: delivered once
		sendToDevice(t, srv, alice, bob, "t3", 3)

		first := syncOK(t, srv, bob, "timeout=0")
		if got := toDeviceNs(t, dig(first, "to_device", "events"), alice.id); !slices.Equal(got, []int{1, 2, 3}) {
			t.Fatalf("initial sync to-device: %v, want [1 2 3]", got)
		}
		// The response was lost: the same request gets the same messages.
		again := syncOK(t, srv, bob, "timeout=0")
		if got := toDeviceNs(t, dig(again, "to_device", "events"), alice.id); !slices.Equal(got, []int{1, 2, 3}) {
			t.Fatalf("repeated sync: %v, want [1 2 3] again", got)
		}
		srv.Restart(t)
		sendToDevice(t, srv, alice, bob, "t2", 2) // still a retry after the restart
		sendToDevice(t, srv, alice, bob, "t4", 4)
		afterRestart := syncOK(t, srv, bob, "timeout=0&since="+url.QueryEscape(first["next_batch"].(string)))
		if got := toDeviceNs(t, dig(afterRestart, "to_device", "events"), alice.id); !slices.Equal(got, []int{4}) {
			t.Fatalf("after a restart, since the first token: %v, want [4]", got)
		}
		// Presenting the first token acknowledged 1-3; 4 stays until a
		// token past it comes back.
		left, _, err := srv.HS.KeyServer.ToDeviceSince(ctx, bob.id, deviceOf(bob), 0)
		if err != nil || len(left) != 1 {
			t.Fatalf("bob's stored messages after the ack: %d %v, want only the unacknowledged one", len(left), err)
		}
		retry := syncOK(t, srv, bob, "timeout=0&since="+url.QueryEscape(first["next_batch"].(string)))
		if got := toDeviceNs(t, dig(retry, "to_device", "events"), alice.id); !slices.Equal(got, []int{4}) {
			t.Fatalf("retrying with the first token: %v, want [4]", got)
		}
		done := syncOK(t, srv, bob, "timeout=0&since="+url.QueryEscape(retry["next_batch"].(string)))
		if got := toDeviceNs(t, dig(done, "to_device", "events"), alice.id); len(got) != 0 {
			t.Fatalf("after acknowledging everything: %v", got)
		}
		if left, _, _ := srv.HS.KeyServer.ToDeviceSince(ctx, bob.id, deviceOf(bob), 0); len(left) != 0 {
			t.Errorf("%d messages still stored after the ack", len(left))
		}
		// The head survives the deletions: the last token stays valid.
		if status, body := rawSync(t, srv, bob, "timeout=0&since="+url.QueryEscape(done["next_batch"].(string))); status != http.StatusOK {
			t.Errorf("sync with the last token after every row was deleted: %d %v", status, body)
		}
	})
}

// TestSyncE2EEFieldsAlwaysPresent: the key counts are in every response,
// and reflect uploads and claims.
func TestSyncE2EEFieldsAlwaysPresent(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		body := syncOK(t, srv, alice, "timeout=0")
		for _, f := range []string{"device_one_time_keys_count", "device_unused_fallback_key_types", "to_device", "device_lists"} {
			if _, ok := body[f]; !ok {
				t.Errorf("initial sync without keys lacks %s: %v", f, body)
			}
		}
		uploadDeviceKeys(t, srv, alice)
		body = syncOK(t, srv, alice, "timeout=0&since="+url.QueryEscape(body["next_batch"].(string)))
		if dig(body, "device_one_time_keys_count", "signed_curve25519") != 1.0 ||
			!slices.Equal(toStringList(body["device_unused_fallback_key_types"]), []string{"signed_curve25519"}) {
			t.Fatalf("key counts after upload: %v %v", body["device_one_time_keys_count"], body["device_unused_fallback_key_types"])
		}
		claim := fmt.Sprintf(`{"one_time_keys":{%q:{%q:"signed_curve25519"}}}`, alice.id, deviceOf(alice))
		for range 2 { // the one-time key, then the fallback key
			if status, resp := rawRequest(t, srv, bob, http.MethodPost, "/_matrix/client/v3/keys/claim", claim); status != http.StatusOK {
				t.Fatalf("claim: %d %v", status, resp)
			}
		}
		body = syncOK(t, srv, alice, "timeout=0")
		if c, ok := body["device_one_time_keys_count"].(map[string]any); !ok || len(c) != 0 {
			t.Errorf("one-time key count after the claim: %v, want {}", body["device_one_time_keys_count"])
		}
		if f, ok := body["device_unused_fallback_key_types"].([]any); !ok || len(f) != 0 {
			t.Errorf("unused fallback types after its claim: %v, want []", body["device_unused_fallback_key_types"])
		}
	})
}

func toStringList(v any) []string {
	list, _ := v.([]any)
	out := []string{}
	for _, x := range list {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// TestSyncDeviceListsFollowMembership: device_lists.changed names users
// who start sharing a room with the syncing user (both ways) and those
// sharing one whose keys change, never others; left names those who no
// longer share any room, both ways.
func TestSyncDeviceListsFollowMembership(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		room := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		other := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		tokens := map[*user]string{}
		lists := func(u *user) (changed, left []string) {
			t.Helper()
			body := syncOK(t, srv, u, "timeout=0&since="+url.QueryEscape(tokens[u]))
			tokens[u] = body["next_batch"].(string)
			return toStringList(dig(body, "device_lists", "changed")), toStringList(dig(body, "device_lists", "left"))
		}
		for _, u := range []*user{alice, bob, carol} {
			tokens[u] = syncOK(t, srv, u, "timeout=0")["next_batch"].(string)
		}
		expect := func(u *user, what string, wantChanged, wantLeft []string) {
			t.Helper()
			changed, left := lists(u)
			if !slices.Equal(changed, wantChanged) || !slices.Equal(left, wantLeft) {
				t.Errorf("%s, %s's device_lists: changed %v left %v; want changed %v left %v", what, u.id, changed, left, wantChanged, wantLeft)
			}
		}

		// The joiner is in its own changed list too, as Synapse has it
		// (Complement TestDeviceListsUpdateOverFederation).
		membership(t, srv, "join", bob, bob.id, room)
		expect(alice, "bob joined", []string{bob.id}, []string{})
		expect(bob, "bob joined", []string{alice.id, bob.id}, []string{})

		uploadDeviceKeys(t, srv, bob)
		uploadDeviceKeys(t, srv, carol) // shares no room with anyone
		expect(alice, "bob's new keys", []string{bob.id}, []string{})
		expect(bob, "his own new keys", []string{bob.id}, []string{})
		expect(carol, "her own new keys", []string{carol.id}, []string{})

		// Sharing a second room, then leaving one of two: still sharing.
		membership(t, srv, "join", bob, bob.id, other)
		expect(alice, "bob joined a second room", []string{bob.id}, []string{})
		expect(bob, "bob joined a second room", []string{alice.id, bob.id}, []string{})
		membership(t, srv, "leave", bob, bob.id, other)
		expect(alice, "bob left one of two shared rooms", []string{}, []string{})
		expect(bob, "bob left one of two shared rooms", []string{}, []string{})

		membership(t, srv, "leave", bob, bob.id, room)
		expect(alice, "bob left the last shared room", []string{}, []string{bob.id})
		expect(bob, "bob left the last shared room", []string{}, []string{alice.id})

		// Joined and left within one window: nothing to track.
		membership(t, srv, "join", carol, carol.id, room)
		membership(t, srv, "leave", carol, carol.id, room)
		expect(alice, "carol came and went", []string{}, []string{carol.id})
	})
}

// TestSyncLongPollWakesForE2EE: a waiting /sync returns when a to-device
// message arrives for its device, and when someone sharing a room
// changes keys.
func TestSyncLongPollWakesForE2EE(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		room := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", bob, bob.id, room)
		since := syncOK(t, srv, bob, "timeout=0")["next_batch"].(string)

		poll := func(trigger func()) map[string]any {
			t.Helper()
			type result struct {
				status int
				body   map[string]any
			}
			got := make(chan result, 1)
			start := time.Now()
			go func() {
				status, body := rawSync(t, srv, bob, "timeout=30000&since="+url.QueryEscape(since))
				got <- result{status, body}
			}()
			deadline := time.Now().Add(10 * time.Second)
			for srv.HS.Sync.Waiting() == 0 {
				if time.Now().After(deadline) {
					t.Fatal("the long-poll never started waiting")
				}
				time.Sleep(time.Millisecond)
			}
			trigger()
			r := <-got
			if r.status != http.StatusOK || time.Since(start) > 15*time.Second {
				t.Fatalf("long-poll: %d after %v: %v", r.status, time.Since(start), r.body)
			}
			since = r.body["next_batch"].(string)
			return r.body
		}
		body := poll(func() { sendToDevice(t, srv, alice, bob, "w1", 7) })
		if got := toDeviceNs(t, dig(body, "to_device", "events"), alice.id); !slices.Equal(got, []int{7}) {
			t.Errorf("woken by a to-device message: %v", got)
		}
		body = poll(func() { uploadDeviceKeys(t, srv, alice) })
		if got := toStringList(dig(body, "device_lists", "changed")); !slices.Equal(got, []string{alice.id}) {
			t.Errorf("woken by alice's new keys: changed %v", got)
		}
	})
}

// TestSlidingSyncE2EEExtensions: the to_device extension has its own
// since (acknowledging what came before it) and limit; e2ee carries key
// counts always and device list changes driven by membership.
func TestSlidingSyncE2EEExtensions(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		room := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		for i := 1; i <= 3; i++ {
			sendToDevice(t, srv, alice, bob, fmt.Sprintf("s%d", i), i)
		}
		sliding := func(u *user, pos, toDeviceSince string) map[string]any {
			t.Helper()
			req := map[string]any{"conn_id": "e2ee", "extensions": map[string]any{
				"to_device": map[string]any{"enabled": true, "since": toDeviceSince, "limit": 2},
				"e2ee":      map[string]any{"enabled": true},
			}}
			if pos != "" {
				req["pos"] = pos
			}
			raw, _ := json.Marshal(req)
			status, body := rawRequest(t, srv, u, http.MethodPost, "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0", string(raw))
			if status != http.StatusOK {
				t.Fatalf("sliding sync: %d %v", status, body)
			}
			return body
		}
		r1 := sliding(bob, "", "")
		if got := toDeviceNs(t, dig(r1, "extensions", "to_device", "events"), alice.id); !slices.Equal(got, []int{1, 2}) {
			t.Fatalf("first page (limit 2): %v", got)
		}
		next1 := dig(r1, "extensions", "to_device", "next_batch").(string)
		if dig(r1, "extensions", "e2ee", "device_one_time_keys_count") == nil || dig(r1, "extensions", "e2ee", "device_unused_fallback_key_types") == nil {
			t.Errorf("e2ee extension lacks key counts: %v", dig(r1, "extensions", "e2ee"))
		}
		r2 := sliding(bob, r1["pos"].(string), next1)
		if got := toDeviceNs(t, dig(r2, "extensions", "to_device", "events"), alice.id); !slices.Equal(got, []int{3}) {
			t.Fatalf("second page: %v", got)
		}
		if left, _, _ := srv.HS.KeyServer.ToDeviceSince(ctx, bob.id, deviceOf(bob), 0); len(left) != 1 {
			t.Errorf("stored after acknowledging the first page: %d, want 1", len(left))
		}
		// A retry with the same since gets the same page.
		if got := toDeviceNs(t, dig(sliding(bob, r1["pos"].(string), next1), "extensions", "to_device", "events"), alice.id); !slices.Equal(got, []int{3}) {
			t.Errorf("retried second page: %v", got)
		}
		membership(t, srv, "join", bob, bob.id, room)
		r3 := sliding(bob, r2["pos"].(string), dig(r2, "extensions", "to_device", "next_batch").(string))
		if got := toStringList(dig(r3, "extensions", "e2ee", "device_lists", "changed")); !slices.Equal(got, []string{alice.id, bob.id}) {
			t.Errorf("e2ee device_lists after joining alice's room: %v", got)
		}
		if got := toDeviceNs(t, dig(r3, "extensions", "to_device", "events"), alice.id); len(got) != 0 {
			t.Errorf("to-device after acknowledging all: %v", got)
		}
		status, _ := rawRequest(t, srv, bob, http.MethodPost, "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0",
			`{"conn_id":"other","extensions":{"to_device":{"enabled":true,"since":"nonsense"}}}`)
		if status != http.StatusBadRequest {
			t.Errorf("to_device since that is not a token: %d, want 400", status)
		}
	})
}

// dig walks a decoded JSON object.
func dig(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}
