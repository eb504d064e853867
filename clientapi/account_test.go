package clientapi_test

import (
	"context"
	"errors"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// Spec: client-server-api, "POST /_matrix/client/v3/account/password".
func TestChangePassword(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		cli := registerUser(t, srv, "pat")
		other, err := client(t, srv, "", "").Login(ctx, passwordLogin("pat"))
		if err != nil {
			t.Fatal(err)
		}
		url := srv.URL + "/_matrix/client/v3/account/password"
		st, body := call(t, "POST", url, cli.AccessToken, map[string]any{"new_password": "short"})
		expectError(t, "weak new password", st, body, 400, "M_WEAK_PASSWORD")
		const newPassword = "a much better password"
		st, body = call(t, "POST", url, cli.AccessToken, map[string]any{"new_password": newPassword})
		if st != 401 || body["session"] == nil {
			t.Fatalf("password change without auth: %d %v", st, body)
		}
		st, body = call(t, "POST", url, cli.AccessToken, map[string]any{
			"new_password": newPassword, "auth": passwordAuth(body["session"].(string), "pat", testPassword),
		})
		if st != 200 {
			t.Fatalf("password change: %d %v", st, body)
		}
		if _, err := cli.Whoami(ctx); err != nil {
			t.Fatalf("the requesting device stays logged in: %v", err)
		}
		if _, err := client(t, srv, string(other.UserID), other.AccessToken).Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
			t.Fatalf("other device after password change: %v, want M_UNKNOWN_TOKEN", err)
		}
		if _, err := client(t, srv, "", "").Login(ctx, passwordLogin("pat")); !errors.Is(err, mautrix.MForbidden) {
			t.Fatalf("old password: %v, want M_FORBIDDEN", err)
		}
		req := passwordLogin("pat")
		req.Password = newPassword
		third, err := client(t, srv, "", "").Login(ctx, req)
		if err != nil {
			t.Fatalf("new password: %v", err)
		}
		// logout_devices: false keeps the other devices.
		st, body = call(t, "POST", url, cli.AccessToken, map[string]any{
			"new_password": testPassword, "logout_devices": false, "auth": passwordAuth("", "pat", newPassword),
		})
		if st != 200 {
			t.Fatalf("password change keeping devices: %d %v", st, body)
		}
		if _, err := client(t, srv, string(third.UserID), third.AccessToken).Whoami(ctx); err != nil {
			t.Fatalf("logout_devices false must keep other devices: %v", err)
		}
	})
}

// Spec: "POST /_matrix/client/v3/account/deactivate"; security case 30.
func TestDeactivate(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		cli := registerUser(t, srv, "gone")
		req := passwordLogin("gone")
		req.RefreshToken = true
		other, err := client(t, srv, "", "").Login(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		// A login token minted before deactivation must not work after it.
		st, body := call(t, "POST", srv.URL+"/_matrix/client/v1/login/get_token", cli.AccessToken, map[string]any{"auth": passwordAuth("", "gone", testPassword)})
		if st != 200 {
			t.Fatalf("get_token: %d %v", st, body)
		}
		loginToken := body["login_token"].(string)

		url := srv.URL + "/_matrix/client/v3/account/deactivate"
		st, body = call(t, "POST", url, cli.AccessToken, map[string]any{"auth": passwordAuth("", "gone", "wrong password")})
		if st != 401 || body["errcode"] != "M_FORBIDDEN" {
			t.Fatalf("deactivate with wrong password: %d %v", st, body)
		}
		st, body = call(t, "POST", url, cli.AccessToken, map[string]any{"auth": passwordAuth(body["session"].(string), "gone", testPassword)})
		if st != 200 || body["id_server_unbind_result"] != "success" {
			t.Fatalf("deactivate: %d %v", st, body)
		}
		for _, tok := range []string{cli.AccessToken, other.AccessToken} {
			st, body := call(t, "GET", srv.URL+"/_matrix/client/v3/account/whoami", tok, nil)
			expectError(t, "token after deactivation", st, body, 401, "M_UNKNOWN_TOKEN")
		}
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/refresh", "", map[string]any{"refresh_token": other.RefreshToken})
		expectError(t, "refresh after deactivation", st, body, 401, "M_UNKNOWN_TOKEN")
		_, err = client(t, srv, "", "").Login(ctx, passwordLogin("gone"))
		if !errors.Is(err, mautrix.MUserDeactivated) {
			t.Fatalf("login after deactivation: %v, want M_USER_DEACTIVATED", err)
		}
		var httpErr mautrix.HTTPError
		if !errors.As(err, &httpErr) || httpErr.Response.StatusCode != 403 {
			t.Fatalf("login after deactivation must be 403: %v", err)
		}
		bad := passwordLogin("gone")
		bad.Password = "wrong password"
		if _, err := client(t, srv, "", "").Login(ctx, bad); !errors.Is(err, mautrix.MForbidden) {
			t.Fatalf("wrong password on a deactivated account: %v, want M_FORBIDDEN (no account probing)", err)
		}
		if _, err := client(t, srv, "", "").Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypeToken, Token: loginToken}); !errors.Is(err, mautrix.MForbidden) {
			t.Fatalf("login token after deactivation: %v, want M_FORBIDDEN", err)
		}
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "gone", "password": testPassword})
		expectError(t, "re-registering a deactivated user ID", st, body, 400, "M_USER_IN_USE")
	})
}

// Spec: client-server-api, "Capabilities negotiation".
func TestCapabilities(t *testing.T) {
	srv := testserver.Start(t, "sqlite", nil)
	cli := registerUser(t, srv, "cap")
	st, body := call(t, "GET", srv.URL+"/_matrix/client/v3/capabilities", cli.AccessToken, nil)
	caps, _ := body["capabilities"].(map[string]any)
	if st != 200 || caps == nil {
		t.Fatalf("capabilities: %d %v", st, body)
	}
	rv, _ := caps["m.room_versions"].(map[string]any)
	available, _ := rv["available"].(map[string]any)
	if rv["default"] != "12" || len(available) != 14 || available["1"] != "stable" || available["12"] != "stable" ||
		available["org.matrix.msc3757.10"] != "unstable" || available["org.matrix.msc3757.11"] != "unstable" {
		t.Fatalf("m.room_versions = %v", rv)
	}
	for name, want := range map[string]bool{
		"m.change_password": true, "m.set_displayname": true, "m.set_avatar_url": true,
		"m.3pid_changes": false, "m.get_login_token": true,
	} {
		c, _ := caps[name].(map[string]any)
		if c == nil || c["enabled"] != want {
			t.Errorf("%s = %v, want enabled %v", name, caps[name], want)
		}
	}

	// The default is the configured one, the version createRoom uses.
	srv11 := testserver.Start(t, "sqlite", func(c *config.Config) { c.RoomServer.DefaultRoomVersion = "11" })
	cli11 := registerUser(t, srv11, "cap")
	st, body = call(t, "GET", srv11.URL+"/_matrix/client/v3/capabilities", cli11.AccessToken, nil)
	caps, _ = body["capabilities"].(map[string]any)
	if rv, _ := caps["m.room_versions"].(map[string]any); st != 200 || rv["default"] != "11" {
		t.Fatalf("capabilities with room_server.default_room_version 11: %d %v", st, body)
	}
}
