package clientapi_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

func passwordLogin(user string) *mautrix.ReqLogin {
	return &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: user},
		Password:   testPassword,
	}
}

// Spec: client-server-api, "Login".
func TestLogin(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		registerUser(t, srv, "alice")
		anon := client(t, srv, "", "")

		flows, err := anon.GetLoginFlows(ctx)
		if err != nil || !flows.HasFlow(mautrix.AuthTypePassword) || !flows.HasFlow(mautrix.AuthTypeToken) {
			t.Fatalf("login flows: %+v %v", flows, err)
		}
		for _, user := range []string{"alice", "@alice:localhost", "ALICE"} {
			resp, err := anon.Login(ctx, passwordLogin(user))
			if err != nil || resp.UserID != "@alice:localhost" || resp.AccessToken == "" || resp.ExpiresInMS != 0 {
				t.Fatalf("login as %q: %+v %v", user, resp, err)
			}
		}
		// The deprecated top-level "user" field.
		st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "alice", "password": testPassword})
		if st != 200 || body["user_id"] != "@alice:localhost" {
			t.Fatalf("login with top-level user: %d %v", st, body)
		}

		bad := passwordLogin("alice")
		bad.Password = "wrong password"
		if _, err := anon.Login(ctx, bad); !errors.Is(err, mautrix.MForbidden) {
			t.Fatalf("wrong password: %v, want M_FORBIDDEN", err)
		}
		if _, err := anon.Login(ctx, passwordLogin("nobody")); !errors.Is(err, mautrix.MForbidden) {
			t.Fatalf("unknown user: %v, want M_FORBIDDEN", err)
		}
		if _, err := anon.Login(ctx, passwordLogin("@alice:elsewhere.example")); !errors.Is(err, mautrix.MForbidden) {
			t.Fatalf("remote user: %v, want M_FORBIDDEN", err)
		}
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/login", "", map[string]any{"type": "m.login.bogus"})
		expectError(t, "unknown login type", st, body, 400, "M_UNKNOWN")
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/login", "", `{"type": "m.login.password",`)
		expectError(t, "malformed JSON", st, body, 400, "M_NOT_JSON")
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/login", "", `{"type": 5}`)
		expectError(t, "wrong-shape JSON", st, body, 400, "M_BAD_JSON")
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/login", "", `["m.login.password"]`)
		expectError(t, "array body", st, body, 400, "M_BAD_JSON")
	})
}

// Spec: "Relationship between access tokens and devices": logging in
// with a known device_id replaces that device's session.
func TestLoginReusingDeviceReplacesSession(t *testing.T) {
	srv := testserver.Start(t, storage.SQLite, nil)
	ctx := context.Background()
	first := registerUser(t, srv, "dev")
	req := passwordLogin("dev")
	req.DeviceID = first.DeviceID
	resp, err := client(t, srv, "", "").Login(ctx, req)
	if err != nil || resp.DeviceID != first.DeviceID {
		t.Fatalf("login with existing device: %+v %v", resp, err)
	}
	if _, err := first.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
		t.Fatalf("old token after device re-login: %v, want M_UNKNOWN_TOKEN", err)
	}
	devices, err := client(t, srv, string(resp.UserID), resp.AccessToken).GetDevicesInfo(ctx)
	if err != nil || len(devices.Devices) != 1 {
		t.Fatalf("devices: %+v %v", devices, err)
	}
}

func TestAccessTokenErrors(t *testing.T) {
	srv := testserver.Start(t, storage.SQLite, nil)
	whoami := srv.URL + "/_matrix/client/v3/account/whoami"
	st, body := call(t, "GET", whoami, "", nil)
	expectError(t, "no token", st, body, 401, "M_MISSING_TOKEN")
	st, body = call(t, "GET", whoami, "mya_not-a-real-token", nil)
	expectError(t, "unknown token", st, body, 401, "M_UNKNOWN_TOKEN")
	if body["soft_logout"] != false {
		t.Fatalf("unknown token soft_logout = %v, want false", body["soft_logout"])
	}
	cli := registerUser(t, srv, "who")
	st, body = call(t, "GET", whoami, cli.AccessToken, nil)
	if st != 200 || body["user_id"] != "@who:localhost" || body["device_id"] != string(cli.DeviceID) || body["is_guest"] != false {
		t.Fatalf("whoami: %d %v", st, body)
	}
}

// Spec: "Refreshing access tokens", "Soft logout".
func TestRefreshTokens(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		registerUser(t, srv, "fresh")
		req := passwordLogin("fresh")
		req.RefreshToken = true
		login, err := client(t, srv, "", "").Login(ctx, req)
		if err != nil || login.RefreshToken == "" || login.ExpiresInMS != srv.Config.ClientAPI.AccessTokenLifetime.D().Milliseconds() {
			t.Fatalf("login with refresh_token: %+v %v", login, err)
		}
		refreshURL := srv.URL + "/_matrix/client/v3/refresh"
		whoami := srv.URL + "/_matrix/client/v3/account/whoami"

		st, r2 := call(t, "POST", refreshURL, "", map[string]any{"refresh_token": login.RefreshToken})
		if st != 200 || r2["access_token"] == nil || r2["refresh_token"] == nil || r2["expires_in_ms"] == nil {
			t.Fatalf("refresh: %d %v", st, r2)
		}
		st, body := call(t, "GET", whoami, login.AccessToken, nil)
		expectError(t, "old access token", st, body, 401, "M_UNKNOWN_TOKEN")

		// Until the new tokens are used, the old refresh token may be retried.
		st, r2b := call(t, "POST", refreshURL, "", map[string]any{"refresh_token": login.RefreshToken})
		if st != 200 || r2b["access_token"] == r2["access_token"] {
			t.Fatalf("retrying the old refresh token before use: %d %v", st, r2b)
		}
		// Using the new access token revokes the old refresh token.
		if st, body := call(t, "GET", whoami, r2b["access_token"].(string), nil); st != 200 || body["device_id"] != string(login.DeviceID) {
			t.Fatalf("new access token: %d %v", st, body)
		}
		st, body = call(t, "POST", refreshURL, "", map[string]any{"refresh_token": login.RefreshToken})
		expectError(t, "old refresh token after use of the new one", st, body, 401, "M_UNKNOWN_TOKEN")
		st, body = call(t, "POST", refreshURL, "", map[string]any{"refresh_token": "myr_unknown"})
		expectError(t, "unknown refresh token", st, body, 401, "M_UNKNOWN_TOKEN")

		// An expired access token is a soft logout; refreshing recovers.
		if err := srv.HS.DB.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE sessions SET access_expires_ts = 1 WHERE device_id = $1`, string(login.DeviceID))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		st, body = call(t, "GET", whoami, r2b["access_token"].(string), nil)
		expectError(t, "expired access token", st, body, 401, "M_UNKNOWN_TOKEN")
		if body["soft_logout"] != true {
			t.Fatalf("expired token soft_logout = %v, want true", body["soft_logout"])
		}
		st, r3 := call(t, "POST", refreshURL, "", map[string]any{"refresh_token": r2b["refresh_token"]})
		if st != 200 {
			t.Fatalf("refresh after expiry: %d %v", st, r3)
		}
		if st, _ := call(t, "GET", whoami, r3["access_token"].(string), nil); st != 200 {
			t.Fatalf("access token after refresh: %d", st)
		}
	})
}

// Spec: "POST /_matrix/client/v1/login/get_token" and m.login.token.
func TestLoginTokenSingleUse(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		cli := registerUser(t, srv, "qr")
		caps, err := cli.Capabilities(ctx)
		if err != nil || caps.GetLoginToken == nil || !caps.GetLoginToken.Enabled {
			t.Fatalf("m.get_login_token capability: %+v %v", caps, err)
		}
		getToken := srv.URL + "/_matrix/client/v1/login/get_token"
		st, uia := call(t, "POST", getToken, cli.AccessToken, map[string]any{})
		if st != 401 || uia["session"] == nil || uia["errcode"] != nil {
			t.Fatalf("get_token without auth: %d %v", st, uia)
		}
		st, body := call(t, "POST", getToken, cli.AccessToken, map[string]any{"auth": passwordAuth(uia["session"].(string), "qr", testPassword)})
		if st != 200 || body["login_token"] == nil || body["expires_in_ms"] != float64(srv.Config.ClientAPI.LoginTokenLifetime.D().Milliseconds()) {
			t.Fatalf("get_token: %d %v", st, body)
		}
		token := body["login_token"].(string)
		other := client(t, srv, "", "")
		resp, err := other.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypeToken, Token: token})
		if err != nil || resp.UserID != cli.UserID || resp.DeviceID == cli.DeviceID {
			t.Fatalf("login with token: %+v %v", resp, err)
		}
		if _, err := other.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypeToken, Token: token}); !errors.Is(err, mautrix.MForbidden) {
			t.Fatalf("second use of the login token: %v, want M_FORBIDDEN", err)
		}
		// Every call re-prompts: a finished session does not authorise another token.
		st, body = call(t, "POST", getToken, cli.AccessToken, map[string]any{"auth": map[string]any{"session": uia["session"]}})
		if st != 401 || body["session"] == uia["session"] {
			t.Fatalf("get_token with a used session: %d %v", st, body)
		}
	})
}

func TestLogout(t *testing.T) {
	srv := testserver.Start(t, storage.SQLite, nil)
	ctx := context.Background()
	cli := registerUser(t, srv, "bye")
	second, err := client(t, srv, "", "").Login(ctx, passwordLogin("bye"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
		t.Fatalf("after logout: %v", err)
	}
	other := client(t, srv, string(second.UserID), second.AccessToken)
	devices, err := other.GetDevicesInfo(ctx)
	if err != nil || len(devices.Devices) != 1 || devices.Devices[0].DeviceID != second.DeviceID {
		t.Fatalf("logout must delete only the caller's device: %+v %v", devices, err)
	}
	third, err := client(t, srv, "", "").Login(ctx, passwordLogin("bye"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.LogoutAll(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{second.AccessToken, third.AccessToken} {
		if st, body := call(t, "GET", srv.URL+"/_matrix/client/v3/account/whoami", tok, nil); st != http.StatusUnauthorized {
			t.Fatalf("after logout/all: %d %v", st, body)
		}
	}
	var n int
	if err := srv.HS.DB.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM devices WHERE localpart = 'bye'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("devices left after logout/all: %d %v", n, err)
	}
}
