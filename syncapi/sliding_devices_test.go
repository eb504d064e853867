package syncapi_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

const devicesTestPassword = "correct horse battery staple"

// registerDevice registers localpart with a password, logged in on
// device deviceID.
func registerDevice(t *testing.T, srv *testserver.Server, localpart, deviceID string) *user {
	t.Helper()
	data, _ := json.Marshal(map[string]any{"username": localpart, "password": devicesTestPassword,
		"device_id": deviceID, "auth": map[string]any{"type": "m.login.dummy"}})
	code, resp := rawRequest(t, srv, &user{}, "POST", "/_matrix/client/v3/register", string(data))
	if code != 200 {
		t.Fatalf("register %s: %d %v", localpart, code, resp)
	}
	return &user{id: resp["user_id"].(string), token: resp["access_token"].(string)}
}

// loginDevice logs localpart in on device deviceID.
func loginDevice(t *testing.T, srv *testserver.Server, localpart, password, deviceID string) *user {
	t.Helper()
	data, _ := json.Marshal(map[string]any{"type": "m.login.password", "password": password, "device_id": deviceID,
		"identifier": map[string]any{"type": "m.id.user", "user": localpart}})
	code, resp := rawRequest(t, srv, &user{}, "POST", "/_matrix/client/v3/login", string(data))
	if code != 200 || resp["device_id"] != deviceID {
		t.Fatalf("login %s on %s: %d %v", localpart, deviceID, code, resp)
	}
	return &user{id: resp["user_id"].(string), token: resp["access_token"].(string)}
}

// withPasswordAuth makes a request that needs user-interactive auth:
// once for the session, then with localpart's password.
func withPasswordAuth(t *testing.T, srv *testserver.Server, u *user, localpart, method, path string, body map[string]any) {
	t.Helper()
	data, _ := json.Marshal(body)
	code, resp := rawRequest(t, srv, u, method, path, string(data))
	if code != 401 || resp["session"] == nil {
		t.Fatalf("%s %s without auth: %d %v, want 401 with a session", method, path, code, resp)
	}
	body["auth"] = map[string]any{"type": "m.login.password", "password": devicesTestPassword, "session": resp["session"],
		"identifier": map[string]any{"type": "m.id.user", "user": localpart}}
	data, _ = json.Marshal(body)
	if code, resp = rawRequest(t, srv, u, method, path, string(data)); code != 200 {
		t.Fatalf("%s %s: %d %v", method, path, code, resp)
	}
}

// TestSlidingSyncConnsDroppedWithDevice: the sliding sync connections of
// a device that goes away — logout, DELETE /devices/{deviceId}, POST
// /delete_devices, /logout/all, a password change logging out the other
// devices, a deactivation — are dropped when it goes, the other devices'
// kept; a device created again with that ID (a client may choose its
// device ID at login) does not continue them: the old pos is 400
// M_UNKNOWN_POS. A device deleted behind the server's back (the admin
// commands, another process) has its connections dropped when a device
// of its ID is created. In memory and, in split mode, in Redis.
// Spec: MSC4186, Connections (a server may forget a connection; its pos
// is then M_UNKNOWN_POS); client-server-api, "Login" (device_id).
func TestSlidingSyncConnsDroppedWithDevice(t *testing.T) {
	for _, mode := range []string{"memory", "redis"} {
		t.Run(mode, func(t *testing.T) {
			var edit func(*config.Config)
			if mode == "redis" {
				edit = testserver.UseRedis(t)
			}
			testserver.ForEachEngine(t, edit, func(t *testing.T, srv *testserver.Server) {
				testConnsDroppedWithDevice(t, srv)
			})
		})
	}
}

func testConnsDroppedWithDevice(t *testing.T, srv *testserver.Server) {
	ctx := context.Background()
	open := func(u *user, conn, pos string) (int, map[string]any) {
		t.Helper()
		body := map[string]any{"conn_id": conn, "timeout": 0,
			"lists": map[string]any{"all": map[string]any{"range": []int{0, 5}, "timeline_limit": 1}}}
		if pos != "" {
			body["pos"] = pos
		}
		return sliding(t, srv, u, body)
	}
	mustOpen := func(u *user, conn, pos string) string {
		t.Helper()
		code, resp := open(u, conn, pos)
		if code != 200 {
			t.Fatalf("sliding sync %s from %q: %d %v", conn, pos, code, resp)
		}
		return resp["pos"].(string)
	}
	held := func(u *user, device string, conns ...string) int {
		t.Helper()
		n, err := srv.HS.Sync.SlidingConnsHeld(ctx, u.id, device, conns...)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	type route struct {
		name string
		// remove makes device D go, with D's or K's session.
		remove func(localpart string, d, k *user)
		// kept: K's connection stays; password: the password after;
		// noLogin: the account cannot log in again.
		kept, noLogin bool
		password      string
	}
	routes := []route{
		{name: "logout", kept: true, remove: func(_ string, d, _ *user) {
			if code, resp := rawRequest(t, srv, d, "POST", "/_matrix/client/v3/logout", "{}"); code != 200 {
				t.Fatalf("logout: %d %v", code, resp)
			}
		}},
		{name: "deletedevice", kept: true, remove: func(lp string, _, k *user) {
			withPasswordAuth(t, srv, k, lp, "DELETE", "/_matrix/client/v3/devices/D", map[string]any{})
		}},
		{name: "deletedevices", kept: true, remove: func(lp string, _, k *user) {
			withPasswordAuth(t, srv, k, lp, "POST", "/_matrix/client/v3/delete_devices", map[string]any{"devices": []string{"D"}})
		}},
		{name: "logoutall", remove: func(_ string, d, _ *user) {
			if code, resp := rawRequest(t, srv, d, "POST", "/_matrix/client/v3/logout/all", "{}"); code != 200 {
				t.Fatalf("logout/all: %d %v", code, resp)
			}
		}},
		{name: "password", kept: true, password: "a new password, long enough", remove: func(lp string, _, k *user) {
			withPasswordAuth(t, srv, k, lp, "POST", "/_matrix/client/v3/account/password",
				map[string]any{"new_password": "a new password, long enough", "logout_devices": true})
		}},
		{name: "deactivate", noLogin: true, remove: func(lp string, d, _ *user) {
			withPasswordAuth(t, srv, d, lp, "POST", "/_matrix/client/v3/account/deactivate", map[string]any{})
		}},
		{name: "behindtheback", kept: true, remove: func(lp string, _, _ *user) {
			// As the admin commands do from another process: the rows
			// go, no hook of this server runs.
			err := srv.HS.DB.Write(ctx, func(tx storage.Tx) error {
				if _, err := tx.Exec(ctx, `DELETE FROM sessions WHERE localpart = $1 AND device_id = 'D'`, lp); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, `DELETE FROM devices WHERE localpart = $1 AND device_id = 'D'`, lp)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, r := range routes {
		lp := "user" + r.name
		d := registerDevice(t, srv, lp, "D")
		k := loginDevice(t, srv, lp, devicesTestPassword, "K")
		posD := mustOpen(d, "c", "")
		posD = mustOpen(d, "c", posD)
		mustOpen(d, "c2", "")
		posK := mustOpen(k, "c", "")
		if n := held(d, "D", "c", "c2"); n != 2 {
			t.Fatalf("%s: %d of D's connections held before, want 2", r.name, n)
		}
		r.remove(lp, d, k)
		want := 0
		if r.name == "behindtheback" {
			want = 2 // not seen until a device of that ID is created
		}
		if n := held(d, "D", "c", "c2"); n != want {
			t.Fatalf("%s: %d of D's connections held after D went, want %d", r.name, n, want)
		}
		if r.kept {
			if n := held(k, "K", "c"); n != 1 {
				t.Fatalf("%s: K's connection dropped", r.name)
			}
			if code, resp := open(k, "c", posK); code != 200 {
				t.Fatalf("%s: K's connection after D went: %d %v, want it kept", r.name, code, resp)
			}
		} else if n := held(k, "K", "c"); n != 0 {
			t.Fatalf("%s: K's connection held after K went", r.name)
		}
		if r.noLogin {
			continue
		}
		password := devicesTestPassword
		if r.password != "" {
			password = r.password
		}
		again := loginDevice(t, srv, lp, password, "D")
		if n := held(again, "D", "c", "c2"); n != 0 {
			t.Fatalf("%s: %d of the old D's connections held once D is created again", r.name, n)
		}
		if code, resp := open(again, "c", posD); code != 400 || resp["errcode"] != "M_UNKNOWN_POS" {
			t.Fatalf("%s: the old D's pos on the new D: %d %v, want 400 M_UNKNOWN_POS", r.name, code, resp)
		}
		mustOpen(again, "c", "")
	}
}
