package keyserver_test

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestKeyBackup covers room_keys/version CRUD with auth_data validation,
// etag and count, the three key paths, the spec's "better key wins"
// rules and M_WRONG_ROOM_KEYS_VERSION.
func TestKeyBackup(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := register(t, srv, "alice")
		const v3 = "/_matrix/client/v3"
		authData := map[string]any{"public_key": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo"}
		expect := func(what string, status int, body map[string]any, wantStatus int, wantCode string) {
			t.Helper()
			if status != wantStatus || (wantCode != "" && body["errcode"] != wantCode) {
				t.Errorf("%s: %d %v, want %d %s", what, status, body, wantStatus, wantCode)
			}
		}

		status, body := alice.do(t, http.MethodGet, v3+"/room_keys/version", nil)
		expect("no backup yet", status, body, 404, "M_NOT_FOUND")
		status, body = alice.do(t, http.MethodPost, v3+"/room_keys/version", map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": map[string]any{}})
		expect("auth_data without public_key", status, body, 400, "M_MISSING_PARAM")
		status, body = alice.do(t, http.MethodPost, v3+"/room_keys/version", map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": map[string]any{"public_key": "short"}})
		expect("malformed public_key", status, body, 400, "M_INVALID_PARAM")
		status, body = alice.do(t, http.MethodPost, v3+"/room_keys/version", map[string]any{"algorithm": "org.example.unknown", "auth_data": authData})
		expect("unknown algorithm", status, body, 400, "M_INVALID_PARAM")

		status, body = alice.do(t, http.MethodPost, v3+"/room_keys/version", map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": authData})
		if status != 200 || body["version"] != "1" {
			t.Fatalf("create backup: %d %v", status, body)
		}
		status, body = alice.do(t, http.MethodGet, v3+"/room_keys/version", nil)
		if status != 200 || body["version"] != "1" || body["count"] != float64(0) || body["etag"] == nil || dig(body, "auth_data", "public_key") != authData["public_key"] {
			t.Fatalf("current backup: %d %v", status, body)
		}
		etag0 := body["etag"]

		key := func(fmi, fc int, verified bool, tag string) map[string]any {
			return map[string]any{"first_message_index": fmi, "forwarded_count": fc, "is_verified": verified,
				"session_data": map[string]any{"ciphertext": tag, "ephemeral": "e", "mac": "m"}}
		}
		put := func(path string, k map[string]any) (int, map[string]any) {
			return alice.do(t, http.MethodPut, v3+"/room_keys/keys/!room:localhost/sess1"+path, k)
		}
		stored := func() string {
			_, body := alice.do(t, http.MethodGet, v3+"/room_keys/keys/!room:localhost/sess1?version=1", nil)
			s, _ := dig(body, "session_data", "ciphertext").(string)
			return s
		}
		status, body = put("?version=1", key(5, 1, false, "first"))
		if status != 200 || body["count"] != float64(1) || body["etag"] == etag0 {
			t.Fatalf("put key: %d %v", status, body)
		}
		etag1 := body["etag"]
		steps := []struct {
			key  map[string]any
			want string
		}{
			{key(6, 0, false, "later index"), "first"},    // higher first_message_index loses
			{key(5, 2, false, "more forwarded"), "first"}, // same index, higher forwarded_count loses
			{key(5, 0, false, "less forwarded"), "less forwarded"},
			{key(2, 3, false, "earlier index"), "earlier index"},
			{key(9, 9, true, "verified"), "verified"},         // verified beats unverified
			{key(0, 0, false, "unverified best"), "verified"}, // unverified never replaces verified
			{key(1, 0, true, "verified earlier"), "verified earlier"},
		}
		for _, s := range steps {
			if status, body := put("?version=1", s.key); status != 200 {
				t.Fatalf("put %v: %d %v", s.key, status, body)
			}
			if got := stored(); got != s.want {
				t.Errorf("after uploading %q: stored %q, want %q", s.key["session_data"].(map[string]any)["ciphertext"], got, s.want)
			}
		}
		status, body = put("?version=1", key(9, 9, false, "worse"))
		if status != 200 || body["count"] != float64(1) {
			t.Errorf("a worse key: %d %v", status, body)
		}
		etagSame := body["etag"]
		status, body = put("?version=1", key(9, 9, false, "worse"))
		if body["etag"] != etagSame || etagSame == etag1 {
			t.Errorf("etag: unchanged keys should keep it (%v then %v), changes should move it (from %v)", etagSame, body["etag"], etag1)
		}

		// Room and all-rooms forms.
		status, body = alice.do(t, http.MethodPut, v3+"/room_keys/keys/!other:localhost?version=1", map[string]any{"sessions": map[string]any{"s2": key(0, 0, false, "two"), "s3": key(0, 0, false, "three")}})
		if status != 200 || body["count"] != float64(3) {
			t.Errorf("put room keys: %d %v", status, body)
		}
		status, body = alice.do(t, http.MethodPut, v3+"/room_keys/keys?version=1", map[string]any{"rooms": map[string]any{"!third:localhost": map[string]any{"sessions": map[string]any{"s4": key(0, 0, false, "four")}}}})
		if status != 200 || body["count"] != float64(4) {
			t.Errorf("put all keys: %d %v", status, body)
		}
		_, body = alice.do(t, http.MethodGet, v3+"/room_keys/keys?version=1", nil)
		if len(body["rooms"].(map[string]any)) != 3 || dig(body, "rooms", "!other:localhost", "sessions", "s3", "session_data", "ciphertext") != "three" {
			t.Errorf("get all keys: %v", body)
		}
		_, body = alice.do(t, http.MethodGet, v3+"/room_keys/keys/!other:localhost?version=1", nil)
		if len(body["sessions"].(map[string]any)) != 2 {
			t.Errorf("get room keys: %v", body)
		}
		_, body = alice.do(t, http.MethodGet, v3+"/room_keys/keys/!empty:localhost?version=1", nil)
		if s, ok := body["sessions"].(map[string]any); !ok || len(s) != 0 {
			t.Errorf("get keys of a room without any: %v, want empty sessions", body)
		}
		status, body = alice.do(t, http.MethodGet, v3+"/room_keys/keys/!other:localhost/nosuch?version=1", nil)
		expect("unknown session", status, body, 404, "M_NOT_FOUND")
		status, body = put("?version=7", key(0, 0, true, "x"))
		expect("put to an unknown version", status, body, 403, "M_WRONG_ROOM_KEYS_VERSION")
		if body["current_version"] != "1" {
			t.Errorf("current_version: %v, want 1", body["current_version"])
		}
		status, body = put("?version=1", map[string]any{"first_message_index": 0})
		expect("incomplete key", status, body, 400, "")

		// Updating the version: only auth_data may change.
		status, body = alice.do(t, http.MethodPut, v3+"/room_keys/version/1", map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": authData, "version": "2"})
		expect("version mismatch in body", status, body, 400, "M_INVALID_PARAM")
		status, body = alice.do(t, http.MethodPut, v3+"/room_keys/version/9", map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": authData})
		expect("update an unknown version", status, body, 404, "M_NOT_FOUND")
		newAuth := map[string]any{"public_key": "aSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo", "signatures": map[string]any{}}
		status, body = alice.do(t, http.MethodPut, v3+"/room_keys/version/1", map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": newAuth, "version": "1"})
		expect("update auth_data", status, body, 200, "")

		// A new version becomes current; writes to the old one are refused.
		_, body = alice.do(t, http.MethodPost, v3+"/room_keys/version", map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": authData})
		if body["version"] != "2" {
			t.Fatalf("second version: %v", body)
		}
		status, body = put("?version=1", key(0, 0, true, "late"))
		if status != 403 || body["errcode"] != "M_WRONG_ROOM_KEYS_VERSION" || body["current_version"] != "2" {
			t.Errorf("write to the old version: %d %v", status, body)
		}
		// Deleting keys and versions.
		status, body = alice.do(t, http.MethodDelete, v3+"/room_keys/keys/!other:localhost?version=1", nil)
		if status != 200 || body["count"] != float64(2) {
			t.Errorf("delete room keys: %d %v", status, body)
		}
		status, body = alice.do(t, http.MethodDelete, v3+"/room_keys/version/2", nil)
		expect("delete version 2", status, body, 200, "")
		_, body = alice.do(t, http.MethodGet, v3+"/room_keys/version", nil)
		if body["version"] != "1" || body["count"] != float64(2) || dig(body, "auth_data", "public_key") != newAuth["public_key"] {
			t.Errorf("current after deleting 2: %v, want version 1 with 2 keys", body)
		}
		status, body = alice.do(t, http.MethodGet, v3+"/room_keys/version/2", nil)
		expect("a deleted version", status, body, 404, "M_NOT_FOUND")
		_, body = alice.do(t, http.MethodPost, v3+"/room_keys/version", map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": authData})
		if body["version"] != "3" {
			t.Errorf("version after a deletion: %v, want 3 (numbers are not reused)", body)
		}
		// Another user sees none of it.
		bob := register(t, srv, "bob")
		status, body = bob.do(t, http.MethodGet, v3+"/room_keys/keys?version=1", nil)
		expect("bob reading alice's backup", status, body, 404, "M_NOT_FOUND")
	})
}

// TestKeyBackupEscapedPath: room and session IDs travel percent-escaped
// in the path (session IDs are base64 and may hold '/'); the key is
// stored, listed and found under the unescaped IDs.
func TestKeyBackupEscapedPath(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := register(t, srv, "alice")
		const v3 = "/_matrix/client/v3"
		const roomID, sessionID = "!room:localhost", "ab/cd+ef"
		status, body := alice.do(t, http.MethodPost, v3+"/room_keys/version", map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
			"auth_data": map[string]any{"public_key": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo"}})
		if status != 200 {
			t.Fatalf("create backup: %d %v", status, body)
		}
		path := v3 + "/room_keys/keys/" + url.PathEscape(roomID) + "/" + url.PathEscape(sessionID) + "?version=" + body["version"].(string)
		key := map[string]any{"first_message_index": 0, "forwarded_count": 0, "is_verified": true,
			"session_data": map[string]any{"ciphertext": "c", "ephemeral": "e", "mac": "m"}}
		if status, body := alice.do(t, http.MethodPut, path, key); status != 200 {
			t.Fatalf("put with an escaped path: %d %v", status, body)
		}
		_, body = alice.do(t, http.MethodGet, v3+"/room_keys/keys?version=1", nil)
		if dig(body, "rooms", roomID, "sessions", sessionID, "session_data") == nil {
			t.Errorf("all keys: %v, want the session under %q in %q", body, sessionID, roomID)
		}
		if status, body := alice.do(t, http.MethodGet, path, nil); status != 200 || dig(body, "session_data", "ciphertext") != "c" {
			t.Errorf("get with an escaped path: %d %v", status, body)
		}
	})
}
