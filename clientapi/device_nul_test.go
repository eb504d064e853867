package clientapi_test

import (
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// A device ID or device display name holding NUL cannot be stored in a
// PostgreSQL text column (and would reach other servers through device
// lists on SQLite): login, registration and PUT /devices refuse it with
// 400 M_INVALID_PARAM on both engines and create nothing.
func TestDeviceFieldsWithNULRefused(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := registerUser(t, srv, "alice")
		login := srv.URL + "/_matrix/client/v3/login"
		creds := map[string]any{"type": "m.login.password",
			"identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": testPassword}
		with := func(extra map[string]any) map[string]any {
			out := map[string]any{}
			for k, v := range creds {
				out[k] = v
			}
			for k, v := range extra {
				out[k] = v
			}
			return out
		}
		for name, extra := range map[string]map[string]any{
			"NUL device_id":             {"device_id": "DEV\x00ICE"},
			"control device_id":         {"device_id": "DEV\nICE"},
			"NUL display name at login": {"device_id": "NEWDEVICE", "initial_device_display_name": "phone\x00"},
		} {
			st, body := call(t, "POST", login, "", with(extra))
			expectError(t, name, st, body, 400, "M_INVALID_PARAM")
		}
		st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/register", "", map[string]any{
			"username": "bob", "password": testPassword, "device_id": "B\x00B",
			"auth": map[string]any{"type": "m.login.dummy"}})
		expectError(t, "NUL device_id at registration", st, body, 400, "M_INVALID_PARAM")

		st, body = call(t, "PUT", srv.URL+"/_matrix/client/v3/devices/"+string(alice.DeviceID), alice.AccessToken,
			map[string]any{"display_name": "lap\x00top"})
		expectError(t, "NUL display name on PUT /devices", st, body, 400, "M_INVALID_PARAM")

		// Nothing was created or renamed: alice still has her one device,
		// and bob does not exist.
		st, body = call(t, "GET", srv.URL+"/_matrix/client/v3/devices", alice.AccessToken, nil)
		devices, _ := body["devices"].([]any)
		if st != 200 || len(devices) != 1 {
			t.Fatalf("devices after refused requests: %d %v", st, body)
		}
		if dn, _ := devices[0].(map[string]any)["display_name"].(string); dn == "lap\x00top" {
			t.Fatalf("display name changed to %q", dn)
		}
		st, body = call(t, "GET", srv.URL+"/_matrix/client/v3/register/available?username=bob", "", nil)
		if st != 200 || body["available"] != true {
			t.Fatalf("bob after a refused registration: %d %v", st, body)
		}
	})
}
