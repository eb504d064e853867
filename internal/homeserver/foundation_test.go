package homeserver_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestFoundationJourney is issue 2's proof: a real client (mautrix-go)
// registers with a registration token, logs in, sets its profile and
// account data, manages devices and logs out; then the failure paths.
func TestFoundationJourney(t *testing.T) {
	testserver.ForEachEngine(t, func(c *config.Config) {
		c.ClientAPI.Registration = "token"
		c.ClientAPI.RateLimits.Enabled = true
		c.ClientAPI.RateLimits.Login = config.RateLimit{PerSecond: 0.01, Burst: 4}
		c.ClientAPI.RateLimits.Register = config.RateLimit{PerSecond: 1, Burst: 20}
	}, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		uses := int64(1)
		tok, err := srv.HS.ClientAPI.Accounts().CreateRegistrationToken(ctx, "", &uses, time.Time{})
		if err != nil {
			t.Fatalf("creating registration token: %v", err)
		}

		anon, _ := mautrix.NewClient(srv.URL, "", "")
		// Without a token the server answers with the UIA flows.
		_, uia, err := anon.Register(ctx, &mautrix.ReqRegister[any]{Username: "alice", Password: "alice's long password"})
		if err != nil || uia == nil || !uia.HasSingleStageFlow(authTypeRegistrationToken) {
			t.Fatalf("register without auth: uia=%+v err=%v; want a 401 offering m.login.registration_token", uia, err)
		}
		reg, _, err := anon.Register(ctx, &mautrix.ReqRegister[any]{
			Username: "alice", Password: "alice's long password",
			Auth: map[string]any{"type": authTypeRegistrationToken, "token": tok.Token, "session": uia.Session},
		})
		if err != nil {
			t.Fatalf("register with token: %v", err)
		}
		if reg.UserID != "@alice:localhost" || reg.AccessToken == "" {
			t.Fatalf("register response: %+v", reg)
		}
		// The token allowed one use; a second registration is refused.
		_, uia2, _ := anon.Register(ctx, &mautrix.ReqRegister[any]{Username: "bob", Password: "bob's long password"})
		if uia2 == nil {
			t.Fatal("second registration: want a UIA challenge")
		}
		_, _, err = anon.Register(ctx, &mautrix.ReqRegister[any]{
			Username: "bob", Password: "bob's long password",
			Auth: map[string]any{"type": authTypeRegistrationToken, "token": tok.Token, "session": uia2.Session},
		})
		if err == nil {
			t.Fatal("an exhausted registration token registered a second user")
		}

		// Taken username.
		if _, err := anon.RegisterAvailable(ctx, "alice"); !errors.Is(err, mautrix.MUserInUse) {
			t.Errorf("register/available for a taken name: %v, want M_USER_IN_USE", err)
		}

		// Log in on a second device.
		cli, _ := mautrix.NewClient(srv.URL, "", "")
		login, err := cli.Login(ctx, &mautrix.ReqLogin{
			Type:                     mautrix.AuthTypePassword,
			Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"},
			Password:                 "alice's long password",
			InitialDeviceDisplayName: "laptop",
			StoreCredentials:         true,
		})
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		who, err := cli.Whoami(ctx)
		if err != nil || who.UserID != "@alice:localhost" || who.DeviceID != login.DeviceID {
			t.Fatalf("whoami: %+v, %v", who, err)
		}

		// Profile.
		if err := cli.SetDisplayName(ctx, "Alice A."); err != nil {
			t.Fatalf("set displayname: %v", err)
		}
		if err := cli.SetAvatarURL(ctx, id.ContentURI{Homeserver: "localhost", FileID: "abcdef"}); err != nil {
			t.Fatalf("set avatar: %v", err)
		}
		prof, err := cli.GetProfile(ctx, "@alice:localhost")
		if err != nil || prof.DisplayName != "Alice A." || prof.AvatarURL.String() != "mxc://localhost/abcdef" {
			t.Fatalf("profile: %+v, %v", prof, err)
		}

		// Account data round trip.
		want := map[string]any{"theme": "dark", "n": float64(3)}
		if err := cli.SetAccountData(ctx, "org.example.settings", want); err != nil {
			t.Fatalf("set account data: %v", err)
		}
		got := map[string]any{}
		if err := cli.GetAccountData(ctx, "org.example.settings", &got); err != nil || got["theme"] != "dark" || got["n"] != float64(3) {
			t.Fatalf("account data: %v, %v", got, err)
		}

		// Devices: two (registration and login); delete the first with UIA.
		devs, err := cli.GetDevicesInfo(ctx)
		if err != nil || len(devs.Devices) != 2 {
			t.Fatalf("devices: %+v, %v", devs, err)
		}
		err = cli.DeleteDevice(ctx, reg.DeviceID, nil)
		var httpErr mautrix.HTTPError
		if !errors.As(err, &httpErr) || httpErr.Response.StatusCode != http.StatusUnauthorized {
			t.Fatalf("delete device without auth: %v, want 401 UIA", err)
		}
		err = cli.DeleteDevice(ctx, reg.DeviceID, &mautrix.ReqDeleteDevice[any]{Auth: map[string]any{
			"type":       mautrix.AuthTypePassword,
			"identifier": map[string]any{"type": "m.id.user", "user": "alice"},
			"password":   "alice's long password",
		}})
		if err != nil {
			t.Fatalf("delete device with password: %v", err)
		}
		first, _ := mautrix.NewClient(srv.URL, reg.UserID, reg.AccessToken)
		if _, err := first.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
			t.Errorf("token of a deleted device: %v, want M_UNKNOWN_TOKEN", err)
		}

		// Malformed bodies.
		status, body := raw(t, http.MethodPost, srv.URL+"/_matrix/client/v3/login", "", `{"type": "m.login.password",`)
		if status != 400 || body["errcode"] != "M_NOT_JSON" {
			t.Errorf("truncated JSON: %d %v, want 400 M_NOT_JSON", status, body)
		}
		status, body = raw(t, http.MethodPut, srv.URL+"/_matrix/client/v3/profile/@alice:localhost/displayname", login.AccessToken, `{"displayname": 42}`)
		if status != 400 || body["errcode"] != "M_BAD_JSON" {
			t.Errorf("wrong-typed displayname: %d %v, want 400 M_BAD_JSON", status, body)
		}

		// Logout ends the session.
		if _, err := cli.Logout(ctx); err != nil {
			t.Fatalf("logout: %v", err)
		}
		if _, err := cli.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
			t.Errorf("whoami after logout: %v, want M_UNKNOWN_TOKEN", err)
		}

		// Wrong password, then the login rate limit (burst 4, already two
		// logins used above counting this one).
		bad := &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"}, Password: "wrong"}
		if _, err := anon.Login(ctx, bad); !errors.Is(err, mautrix.MForbidden) {
			t.Errorf("wrong password: %v, want M_FORBIDDEN", err)
		}
		var limited error
		for i := 0; i < 5 && limited == nil; i++ {
			if _, err := anon.Login(ctx, bad); errors.Is(err, mautrix.MLimitExceeded) {
				limited = err
			}
		}
		if limited == nil {
			t.Fatal("login was never rate limited")
		}
	})
}

// TestHTTPPlumbing checks what every endpoint shares: JSON errors for
// unknown paths and methods, CORS, the body limit, request IDs, metrics,
// discovery and the signed server key.
func TestHTTPPlumbing(t *testing.T) {
	srv := testserver.Start(t, "sqlite", func(c *config.Config) {
		c.HTTP.MaxBodyBytes = 65536
		c.Global.WellKnownServer = "matrix.example.org:443"
	})

	status, body := raw(t, http.MethodGet, srv.URL+"/_matrix/client/v3/no/such/endpoint", "", "")
	if status != 404 || body["errcode"] != "M_UNRECOGNIZED" {
		t.Errorf("unknown path: %d %v, want 404 M_UNRECOGNIZED", status, body)
	}
	status, body = raw(t, http.MethodDelete, srv.URL+"/_matrix/client/versions", "", "")
	if status != 405 || body["errcode"] != "M_UNRECOGNIZED" {
		t.Errorf("wrong method: %d %v, want 405 M_UNRECOGNIZED", status, body)
	}

	req, _ := http.NewRequest(http.MethodOptions, srv.URL+"/_matrix/client/v3/login", nil)
	req.Header.Set("Origin", "https://app.element.io")
	req.Header.Set("Access-Control-Request-Method", "POST")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Access-Control-Allow-Origin") != "*" || !strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Errorf("CORS preflight headers: %v", resp.Header)
	}
	if resp.Header.Get("X-Request-Id") == "" {
		t.Error("no X-Request-Id header")
	}

	big := `{"type":"m.login.password","password":"` + strings.Repeat("x", 70000) + `"}`
	status, body = raw(t, http.MethodPost, srv.URL+"/_matrix/client/v3/login", "", big)
	if status != 413 || body["errcode"] != "M_TOO_LARGE" {
		t.Errorf("oversized body: %d %v, want 413 M_TOO_LARGE", status, body)
	}

	status, body = raw(t, http.MethodGet, srv.URL+"/_matrix/client/v3/account/whoami", "", "")
	if status != 401 || body["errcode"] != "M_MISSING_TOKEN" {
		t.Errorf("no token: %d %v, want 401 M_MISSING_TOKEN", status, body)
	}
	status, body = raw(t, http.MethodGet, srv.URL+"/_matrix/client/v3/account/whoami", "mya_bogus", "")
	if status != 401 || body["errcode"] != "M_UNKNOWN_TOKEN" {
		t.Errorf("bad token: %d %v, want 401 M_UNKNOWN_TOKEN", status, body)
	}

	status, body = raw(t, http.MethodGet, srv.URL+"/_matrix/client/versions", "", "")
	if versions, _ := body["versions"].([]any); status != 200 || len(versions) == 0 {
		t.Errorf("versions: %d %v", status, body)
	}
	status, body = raw(t, http.MethodGet, srv.URL+"/.well-known/matrix/client", "", "")
	if hs, _ := body["m.homeserver"].(map[string]any); status != 200 || hs["base_url"] != srv.URL {
		t.Errorf("well-known client: %d %v, want base_url %s", status, body, srv.URL)
	}
	status, body = raw(t, http.MethodGet, srv.URL+"/.well-known/matrix/server", "", "")
	if status != 200 || body["m.server"] != "matrix.example.org:443" {
		t.Errorf("well-known server: %d %v", status, body)
	}

	// The server key document is signed by the key it publishes.
	resp, err = http.Get(srv.URL + "/_matrix/key/v2/server")
	if err != nil {
		t.Fatal(err)
	}
	keyJSON, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var keys struct {
		ServerName string                       `json:"server_name"`
		VerifyKeys map[string]map[string]string `json:"verify_keys"`
	}
	if err := json.Unmarshal(keyJSON, &keys); err != nil || keys.ServerName != "localhost" || len(keys.VerifyKeys) != 1 {
		t.Fatalf("server keys: %s (%v)", keyJSON, err)
	}
	for keyID, k := range keys.VerifyKeys {
		pub, err := base64.RawStdEncoding.DecodeString(k["key"])
		if err != nil {
			t.Fatal(err)
		}
		if err := gomatrixserverlib.VerifyJSON("localhost", gomatrixserverlib.KeyID(keyID), ed25519.PublicKey(pub), keyJSON); err != nil {
			t.Errorf("server key self-signature does not verify: %v", err)
		}
	}

	// Metrics count requests by route pattern, never by raw path.
	resp, err = http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `myelin_http_requests_total{code="200",method="GET",route="/_matrix/client/versions"}`) {
		t.Errorf("metrics do not count /versions by route:\n%s", metrics)
	}
	if strings.Contains(string(metrics), "no/such/endpoint") {
		t.Error("metrics leak raw paths")
	}
}

func raw(t *testing.T, method, url, token, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	out := map[string]any{}
	_ = json.Unmarshal(data, &out)
	return resp.StatusCode, out
}

// authTypeRegistrationToken is the UIA stage mautrix-go has no constant for.
// Spec: client-server-api, "Token-authenticated registration".
const authTypeRegistrationToken mautrix.AuthType = "m.login.registration_token"

// TestSupportWellKnown checks /.well-known/matrix/support (spec v1.10):
// 404 until the admin configures a contact, then the contact.
func TestSupportWellKnown(t *testing.T) {
	bare := testserver.Start(t, "sqlite", nil)
	if status, body := raw(t, http.MethodGet, bare.URL+"/.well-known/matrix/support", "", ""); status != 404 || body["errcode"] != "M_NOT_FOUND" {
		t.Errorf("unconfigured support: %d %v, want 404 M_NOT_FOUND", status, body)
	}
	srv := testserver.Start(t, "sqlite", func(c *config.Config) {
		c.Global.AdminMatrixID = "@admin:example.org"
		c.Global.SupportPage = "https://example.org/help"
	})
	status, body := raw(t, http.MethodGet, srv.URL+"/.well-known/matrix/support", "", "")
	contacts, _ := body["contacts"].([]any)
	if status != 200 || len(contacts) != 1 || body["support_page"] != "https://example.org/help" {
		t.Fatalf("support: %d %v", status, body)
	}
	if c := contacts[0].(map[string]any); c["matrix_id"] != "@admin:example.org" || c["role"] != "m.role.admin" {
		t.Errorf("contact: %v", c)
	}
}
