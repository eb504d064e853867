package keyserver_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// MSC3814's endpoints, at their unstable prefix.
const dehydratedPath = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"

// dehydratedBody is a PUT /dehydrated_device body for k's device, with
// one signed one-time key and a signed fallback key.
func dehydratedBody(t *testing.T, k *deviceKeys, name string) map[string]any {
	t.Helper()
	dk := k.deviceObject(t)
	dk["dehydrated"] = true
	delete(dk, "signatures")
	dk = k.sign(t, dk)
	return map[string]any{
		"device_id":                   k.deviceID,
		"device_data":                 map[string]any{"algorithm": "org.matrix.msc3814.v2", "device_pickle": "cGlja2xl", "nonce": "bm9uY2U"},
		"initial_device_display_name": name,
		"device_keys":                 dk,
		"one_time_keys":               map[string]any{"signed_curve25519:AAAAAQ": k.signedOTK(t, false)},
		"fallback_keys":               map[string]any{"signed_curve25519:AAAAAg": k.signedOTK(t, true)},
	}
}

// deviceIDs lists u's devices (GET /devices).
func deviceIDs(t *testing.T, u *user) []string {
	t.Helper()
	status, body := u.do(t, http.MethodGet, "/_matrix/client/v3/devices", nil)
	if status != http.StatusOK {
		t.Fatalf("GET /devices: %d %v", status, body)
	}
	var out []string
	for _, d := range body["devices"].([]any) {
		out = append(out, d.(map[string]any)["device_id"].(string))
	}
	slices.Sort(out)
	return out
}

// sorted returns ids sorted.
func sorted(ids ...string) []string {
	slices.Sort(ids)
	return ids
}

// queriedDevices is what u's /keys/query says about of's devices.
func queriedDevices(t *testing.T, u *user, of string) map[string]any {
	t.Helper()
	status, body := u.do(t, http.MethodPost, "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{of: []string{}}})
	if status != http.StatusOK {
		t.Fatalf("keys/query: %d %v", status, body)
	}
	m, _ := dig(body, "device_keys", of).(map[string]any)
	return m
}

// events calls POST /dehydrated_device/{id}/events with next_batch
// (omitted when "").
func dehydratedEvents(t *testing.T, u *user, deviceID, nextBatch string) (int, map[string]any) {
	t.Helper()
	req := map[string]any{}
	if nextBatch != "" {
		req["next_batch"] = nextBatch
	}
	return u.do(t, http.MethodPost, dehydratedPath+"/"+url.PathEscape(deviceID)+"/events", req)
}

// countRows runs a COUNT(*) query.
func countRows(t *testing.T, srv *testserver.Server, query string) int {
	t.Helper()
	var n int
	if err := srv.HS.DB.Reader().QueryRow(context.Background(), query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func errcode(body map[string]any) string { s, _ := body["errcode"].(string); return s }

// TestDehydratedDevice (MSC3814): a user's dehydrated device is a real
// device (listed, in keys/query with its dehydrated flag, its one-time
// key claimable, in other users' device-list changes) without an access
// token; its to-device messages are paged by next_batch and not deleted
// when read; a new PUT replaces it with its keys and inbox; DELETE
// /dehydrated_device and DELETE /devices/{id} end it. Every bad request
// gets its error and writes nothing.
func TestDehydratedDevice(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := register(t, srv, "alice"), register(t, srv, "bob")
		status, body := call(t, srv, http.MethodGet, "/_matrix/client/versions", "", nil)
		if status != http.StatusOK || dig(body, "unstable_features", "org.matrix.msc3814") != true {
			t.Errorf("/versions: %d %v, want org.matrix.msc3814 in unstable_features", status, body["unstable_features"])
		}
		status, body = alice.do(t, http.MethodPost, "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"})
		if status != http.StatusOK {
			t.Fatalf("createRoom: %d %v", status, body)
		}
		if status, body := bob.do(t, http.MethodPost, "/_matrix/client/v3/join/"+url.PathEscape(body["room_id"].(string)), map[string]any{}); status != http.StatusOK {
			t.Fatalf("bob joins: %d %v", status, body)
		}

		// None yet.
		for _, c := range []struct{ method, path string }{
			{http.MethodGet, dehydratedPath}, {http.MethodDelete, dehydratedPath}, {http.MethodPost, dehydratedPath + "/X/events"},
		} {
			status, body := alice.do(t, c.method, c.path, map[string]any{})
			if status != http.StatusNotFound || errcode(body) != "M_NOT_FOUND" {
				t.Errorf("%s %s with no dehydrated device: %d %v, want 404 M_NOT_FOUND", c.method, c.path, status, body)
			}
		}

		// Bad requests: each refused, nothing written.
		k1 := newDeviceKeys(t, alice.userID, "DEHYDRATED1")
		good := func() map[string]any { return dehydratedBody(t, k1, "Backup device") }
		bads := []struct {
			name   string
			edit   func(b map[string]any)
			status int
			code   string
		}{
			{"no device_id", func(b map[string]any) { delete(b, "device_id") }, 400, "M_MISSING_PARAM"},
			{"device_id with a NUL (keys signed for it)", func(b map[string]any) {
				for k, v := range dehydratedBody(t, newDeviceKeys(t, alice.userID, "DEHYD\x00"), "") {
					b[k] = v
				}
			}, 400, "M_INVALID_PARAM"},
			{"display name with a NUL", func(b map[string]any) { b["initial_device_display_name"] = "a\x00b" }, 400, "M_INVALID_PARAM"},
			{"no device_data", func(b map[string]any) { delete(b, "device_data") }, 400, "M_MISSING_PARAM"},
			{"device_data not an object", func(b map[string]any) { b["device_data"] = "x" }, 400, "M_BAD_JSON"},
			{"device_data without algorithm", func(b map[string]any) { b["device_data"] = map[string]any{"nonce": "x"} }, 400, "M_MISSING_PARAM"},
			{"no device_keys", func(b map[string]any) { delete(b, "device_keys") }, 400, "M_MISSING_PARAM"},
			{"device_keys of another device", func(b map[string]any) { b["device_id"] = "OTHER" }, 400, "M_INVALID_PARAM"},
			{"device_keys of another user", func(b map[string]any) {
				other := newDeviceKeys(t, bob.userID, "DEHYDRATED1")
				b["device_keys"] = other.deviceObject(t)
			}, 400, "M_INVALID_PARAM"},
			{"bad self-signature", func(b map[string]any) {
				dk := b["device_keys"].(map[string]any)
				dk["dehydrated"] = false // signed as true
			}, 400, "M_INVALID_SIGNATURE"},
			{"one-time key not signed by the device", func(b map[string]any) {
				stranger := newDeviceKeys(t, alice.userID, "DEHYDRATED1")
				b["one_time_keys"] = map[string]any{"signed_curve25519:AAAAAQ": stranger.signedOTK(t, false)}
			}, 400, ""},
			{"fallback key not signed by the device", func(b map[string]any) {
				stranger := newDeviceKeys(t, alice.userID, "DEHYDRATED1")
				b["fallback_keys"] = map[string]any{"signed_curve25519:AAAAAg": stranger.signedOTK(t, true)}
			}, 400, ""},
		}
		for _, bad := range bads {
			b := good()
			bad.edit(b)
			status, body := alice.do(t, http.MethodPut, dehydratedPath, b)
			if status != bad.status || (bad.code != "" && errcode(body) != bad.code) || errcode(body) == "" {
				t.Errorf("PUT %s: %d %v, want %d %s", bad.name, status, body, bad.status, bad.code)
			}
		}
		// A logged-in device's ID is refused: it would take over its keys.
		taken := newDeviceKeys(t, alice.userID, alice.deviceID)
		status, body = alice.do(t, http.MethodPut, dehydratedPath, dehydratedBody(t, taken, "x"))
		if status != http.StatusBadRequest || errcode(body) != "M_INVALID_PARAM" {
			t.Errorf("PUT with the caller's own device ID: %d %v, want 400 M_INVALID_PARAM", status, body)
		}
		if got := deviceIDs(t, alice); !slices.Equal(got, []string{alice.deviceID}) {
			t.Fatalf("devices after refused PUTs: %v, want only %s", got, alice.deviceID)
		}
		if status, body := alice.do(t, http.MethodGet, dehydratedPath, nil); status != http.StatusNotFound {
			t.Fatalf("GET after refused PUTs: %d %v, want 404", status, body)
		}
		if q := queriedDevices(t, bob, alice.userID); q["DEHYDRATED1"] != nil || q[alice.deviceID] != nil {
			t.Fatalf("keys/query after refused PUTs: %v, want no keys", q)
		}

		// A good one.
		t0 := nextBatch(t, bob)
		status, body = alice.do(t, http.MethodPut, dehydratedPath, good())
		if status != http.StatusOK || body["device_id"] != "DEHYDRATED1" {
			t.Fatalf("PUT: %d %v", status, body)
		}
		status, body = alice.do(t, http.MethodGet, dehydratedPath, nil)
		if status != http.StatusOK || body["device_id"] != "DEHYDRATED1" || dig(body, "device_data", "algorithm") != "org.matrix.msc3814.v2" || dig(body, "device_data", "nonce") != "bm9uY2U" {
			t.Errorf("GET: %d %v", status, body)
		}
		if got := deviceIDs(t, alice); !slices.Equal(got, sorted(alice.deviceID, "DEHYDRATED1")) {
			t.Errorf("devices: %v, want the dehydrated one listed", got)
		}
		q := queriedDevices(t, bob, alice.userID)
		if dig(q, "DEHYDRATED1", "dehydrated") != true || dig(q, "DEHYDRATED1", "unsigned", "device_display_name") != "Backup device" {
			t.Errorf("keys/query: %v, want DEHYDRATED1 with dehydrated: true and its display name", q)
		}
		status, body = bob.do(t, http.MethodGet, "/_matrix/client/v3/keys/changes?from="+url.QueryEscape(t0)+"&to="+url.QueryEscape(nextBatch(t, bob)), nil)
		if status != http.StatusOK || !slices.Contains(toStrings(body["changed"]), alice.userID) {
			t.Errorf("bob's device-list changes across the PUT: %d %v, want alice in changed", status, body)
		}
		status, body = bob.do(t, http.MethodPost, "/_matrix/client/v3/keys/claim", map[string]any{
			"one_time_keys": map[string]any{alice.userID: map[string]any{"DEHYDRATED1": "signed_curve25519"}}})
		if status != http.StatusOK || dig(body, "one_time_keys", alice.userID, "DEHYDRATED1", "signed_curve25519:AAAAAQ") == nil {
			t.Errorf("claim the dehydrated device's one-time key: %d %v", status, body)
		}
		// No access token: a login naming the device is refused (the
		// rehydrating client keeps its own device ID), and the device has
		// no session.
		localpart := strings.TrimPrefix(strings.Split(alice.userID, ":")[0], "@")
		status, body = call(t, srv, http.MethodPost, "/_matrix/client/v3/login", "", map[string]any{
			"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": localpart},
			"password": testPassword, "device_id": "DEHYDRATED1"})
		if status != http.StatusBadRequest || errcode(body) != "M_INVALID_PARAM" || body["access_token"] != nil {
			t.Errorf("login as the dehydrated device: %d %v, want 400 M_INVALID_PARAM", status, body)
		}
		if n := countRows(t, srv, `SELECT COUNT(*) FROM sessions WHERE device_id = 'DEHYDRATED1'`); n != 0 {
			t.Errorf("sessions of the dehydrated device: %d, want 0", n)
		}

		// 105 messages for it: pages of 100, 5, then none; reading deletes nothing.
		for i := range 105 {
			status, body := bob.do(t, http.MethodPut, fmt.Sprintf("/_matrix/client/v3/sendToDevice/m.room.encrypted/d%d", i), map[string]any{
				"messages": map[string]any{alice.userID: map[string]any{"DEHYDRATED1": map[string]any{"n": i}}}})
			if status != http.StatusOK {
				t.Fatalf("sendToDevice: %d %v", status, body)
			}
		}
		page := func(token string) ([]any, string) {
			t.Helper()
			status, body := dehydratedEvents(t, alice, "DEHYDRATED1", token)
			next, _ := body["next_batch"].(string)
			events, ok := body["events"].([]any)
			if status != http.StatusOK || !ok || next == "" {
				t.Fatalf("events next_batch=%q: %d %v", token, status, body)
			}
			return events, next
		}
		p1, n1 := page("")
		p2, n2 := page(n1)
		p3, n3 := page(n2)
		if len(p1) != 100 || len(p2) != 5 || len(p3) != 0 || n3 == "" {
			t.Fatalf("pages: %d, %d, %d events (next %q %q %q), want 100, 5, 0", len(p1), len(p2), len(p3), n1, n2, n3)
		}
		if dig(p1[0], "content", "n") != float64(0) || dig(p2[4], "content", "n") != float64(104) || dig(p1[0], "sender") != bob.userID || dig(p1[0], "type") != "m.room.encrypted" {
			t.Errorf("events out of order or malformed: first %v, last %v", p1[0], p2[4])
		}
		if again, _ := page(""); len(again) != 100 {
			t.Errorf("reading from the start again: %d events, want 100 (messages are kept)", len(again))
		}
		// GET, the MSC's current text: from and limit in the query, and
		// no next_batch once nothing remains (even when the last page is
		// exactly full).
		get := func(query string) (int, []any, map[string]any) {
			t.Helper()
			status, body := alice.do(t, http.MethodGet, dehydratedPath+"/DEHYDRATED1/events"+query, nil)
			events, _ := body["events"].([]any)
			return status, events, body
		}
		status, g1, body := get("")
		if status != http.StatusOK || len(g1) != 100 || body["next_batch"] == nil {
			t.Fatalf("GET events: %d, %d events, next_batch %v; want 100 and a next_batch", status, len(g1), body["next_batch"])
		}
		status, g2, body := get("?from=" + url.QueryEscape(body["next_batch"].(string)) + "&limit=5")
		if _, has := body["next_batch"]; status != http.StatusOK || len(g2) != 5 || has || dig(g2[4], "content", "n") != float64(104) {
			t.Errorf("GET events, the last 5 exactly: %d, %d events, body %v; want 5 and no next_batch", status, len(g2), body)
		}
		status, g3, body := get("?limit=2&from=" + url.QueryEscape(n1))
		if status != http.StatusOK || len(g3) != 2 || body["next_batch"] == nil || dig(g3[0], "content", "n") != float64(100) {
			t.Errorf("GET events limit=2: %d, %d events, body %v", status, len(g3), body)
		}
		status, g4, _ := get("?next_batch=" + url.QueryEscape(n1))
		if status != http.StatusOK || len(g4) != 5 {
			t.Errorf("GET events?next_batch (an earlier draft): %d, %d events, want 5", status, len(g4))
		}
		for _, q := range []string{"?limit=0", "?limit=x", "?from=abc"} {
			if status, _, body := get(q); status != http.StatusBadRequest || errcode(body) != "M_INVALID_PARAM" {
				t.Errorf("GET events%s: %d %v, want 400 M_INVALID_PARAM", q, status, body)
			}
		}
		status, body = dehydratedEvents(t, alice, "DEHYDRATED1", "not-a-token")
		if status != http.StatusBadRequest || errcode(body) != "M_INVALID_PARAM" {
			t.Errorf("events with a bad next_batch: %d %v, want 400 M_INVALID_PARAM", status, body)
		}
		status, body = dehydratedEvents(t, alice, alice.deviceID, "")
		if status != http.StatusForbidden || errcode(body) != "M_FORBIDDEN" {
			t.Errorf("events of a device that is not the dehydrated one: %d %v, want 403 M_FORBIDDEN", status, body)
		}
		// Bob has one of his own; alice's is not his to read.
		kb := newDeviceKeys(t, bob.userID, "BOBDEHYD")
		if status, body := bob.do(t, http.MethodPut, dehydratedPath, dehydratedBody(t, kb, "")); status != http.StatusOK {
			t.Fatalf("bob's PUT: %d %v", status, body)
		}
		status, body = dehydratedEvents(t, bob, "DEHYDRATED1", "")
		if status != http.StatusForbidden || errcode(body) != "M_FORBIDDEN" {
			t.Errorf("bob reads alice's dehydrated device: %d %v, want 403 M_FORBIDDEN", status, body)
		}
		if _, ok := body["events"]; ok {
			t.Errorf("bob got events of alice's device: %v", body)
		}

		// Replace: the old device, its keys and its inbox go in the same commit.
		k2 := newDeviceKeys(t, alice.userID, "DEHYDRATED2")
		if status, body := alice.do(t, http.MethodPut, dehydratedPath, dehydratedBody(t, k2, "Second")); status != http.StatusOK {
			t.Fatalf("replacing PUT: %d %v", status, body)
		}
		if status, body := alice.do(t, http.MethodGet, dehydratedPath, nil); status != http.StatusOK || body["device_id"] != "DEHYDRATED2" {
			t.Errorf("GET after replace: %d %v", status, body)
		}
		if got := deviceIDs(t, alice); !slices.Equal(got, sorted(alice.deviceID, "DEHYDRATED2")) {
			t.Errorf("devices after replace: %v", got)
		}
		if q := queriedDevices(t, bob, alice.userID); q["DEHYDRATED1"] != nil || q["DEHYDRATED2"] == nil {
			t.Errorf("keys/query after replace: %v, want DEHYDRATED2 only", q)
		}
		if n := countRows(t, srv, `SELECT COUNT(*) FROM keyserver_to_device WHERE device_id = 'DEHYDRATED1'`); n != 0 {
			t.Errorf("the replaced device's inbox: %d rows, want 0", n)
		}
		for _, table := range []string{"keyserver_one_time_keys", "keyserver_fallback_keys"} {
			if n := countRows(t, srv, `SELECT COUNT(*) FROM `+table+` WHERE device_id = 'DEHYDRATED1'`); n != 0 {
				t.Errorf("the replaced device's %s: %d rows, want 0", table, n)
			}
		}
		status, body = dehydratedEvents(t, alice, "DEHYDRATED1", "")
		if status != http.StatusForbidden {
			t.Errorf("events of the replaced device: %d %v, want 403", status, body)
		}
		status, body = dehydratedEvents(t, alice, "DEHYDRATED2", "")
		if events, _ := body["events"].([]any); status != http.StatusOK || len(events) != 0 {
			t.Errorf("DEHYDRATED2 inbox: %d %v", status, body)
		}
		// A replacement refused half-way (its one-time key is forged)
		// leaves the current device, its keys and inbox as they were.
		bob.do(t, http.MethodPut, "/_matrix/client/v3/sendToDevice/m.room.encrypted/keep", map[string]any{
			"messages": map[string]any{alice.userID: map[string]any{"DEHYDRATED2": map[string]any{"n": "kept"}}}})
		k9 := newDeviceKeys(t, alice.userID, "DEHYDRATED9")
		b9 := dehydratedBody(t, k9, "")
		b9["one_time_keys"] = map[string]any{"signed_curve25519:AAAAAQ": newDeviceKeys(t, alice.userID, "DEHYDRATED9").signedOTK(t, false)}
		if status, body := alice.do(t, http.MethodPut, dehydratedPath, b9); status != http.StatusBadRequest {
			t.Errorf("replacement with a forged one-time key: %d %v, want 400", status, body)
		}
		if status, body := alice.do(t, http.MethodGet, dehydratedPath, nil); status != http.StatusOK || body["device_id"] != "DEHYDRATED2" {
			t.Errorf("GET after a refused replacement: %d %v, want DEHYDRATED2", status, body)
		}
		if got := deviceIDs(t, alice); !slices.Equal(got, sorted(alice.deviceID, "DEHYDRATED2")) {
			t.Errorf("devices after a refused replacement: %v", got)
		}
		if q := queriedDevices(t, bob, alice.userID); q["DEHYDRATED2"] == nil || q["DEHYDRATED9"] != nil {
			t.Errorf("keys/query after a refused replacement: %v", q)
		}
		status, body = dehydratedEvents(t, alice, "DEHYDRATED2", "")
		if events, _ := body["events"].([]any); status != http.StatusOK || len(events) != 1 {
			t.Errorf("DEHYDRATED2 inbox after a refused replacement: %d %v, want the 1 message", status, body)
		}
		// Replacing with the same device ID is allowed (new keys, same ID).
		k2b := newDeviceKeys(t, alice.userID, "DEHYDRATED2")
		if status, body := alice.do(t, http.MethodPut, dehydratedPath, dehydratedBody(t, k2b, "Again")); status != http.StatusOK {
			t.Errorf("PUT with the same device ID: %d %v", status, body)
		}
		if q := queriedDevices(t, bob, alice.userID); dig(q, "DEHYDRATED2", "keys", "ed25519:DEHYDRATED2") != k2b.ed25519() {
			t.Errorf("keys/query after same-ID replace: %v, want the new ed25519 key", q["DEHYDRATED2"])
		}

		// DELETE /dehydrated_device (no UIA).
		status, body = alice.do(t, http.MethodDelete, dehydratedPath, nil)
		if status != http.StatusOK || body["device_id"] != "DEHYDRATED2" {
			t.Errorf("DELETE: %d %v", status, body)
		}
		if status, _ := alice.do(t, http.MethodGet, dehydratedPath, nil); status != http.StatusNotFound {
			t.Errorf("GET after DELETE: %d, want 404", status)
		}
		if got := deviceIDs(t, alice); !slices.Equal(got, []string{alice.deviceID}) {
			t.Errorf("devices after DELETE: %v", got)
		}
		if q := queriedDevices(t, bob, alice.userID); q["DEHYDRATED2"] != nil {
			t.Errorf("keys/query after DELETE: %v", q)
		}

		// DELETE /devices/{id} (with UIA) ends it too.
		k3 := newDeviceKeys(t, alice.userID, "DEHYDRATED3")
		if status, body := alice.do(t, http.MethodPut, dehydratedPath, dehydratedBody(t, k3, "")); status != http.StatusOK {
			t.Fatalf("PUT 3: %d %v", status, body)
		}
		status, body = alice.do(t, http.MethodDelete, "/_matrix/client/v3/devices/DEHYDRATED3", map[string]any{})
		if status != http.StatusUnauthorized {
			t.Fatalf("DELETE /devices without auth: %d %v, want a 401 challenge", status, body)
		}
		local := strings.TrimPrefix(strings.Split(alice.userID, ":")[0], "@")
		status, body = alice.do(t, http.MethodDelete, "/_matrix/client/v3/devices/DEHYDRATED3", map[string]any{"auth": map[string]any{
			"type": "m.login.password", "session": body["session"], "password": testPassword,
			"identifier": map[string]any{"type": "m.id.user", "user": local}}})
		if status != http.StatusOK {
			t.Fatalf("DELETE /devices/DEHYDRATED3: %d %v", status, body)
		}
		if status, body := alice.do(t, http.MethodGet, dehydratedPath, nil); status != http.StatusNotFound {
			t.Errorf("GET after DELETE /devices: %d %v, want 404", status, body)
		}
		if status, body := bob.do(t, http.MethodGet, dehydratedPath, nil); status != http.StatusOK || body["device_id"] != "BOBDEHYD" {
			t.Errorf("bob's dehydrated device after alice's deletions: %d %v", status, body)
		}
	})
}
