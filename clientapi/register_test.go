package clientapi_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

func tokenMode(c *config.Config) { c.ClientAPI.Registration = "token" }

// Spec: client-server-api, "Token-authenticated registration".
func TestRegisterWithRegistrationToken(t *testing.T) {
	testserver.ForEachEngine(t, tokenMode, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		one := int64(1)
		tok, err := srv.HS.ClientAPI.Accounts().CreateRegistrationToken(ctx, "", &one, timeZero)
		if err != nil {
			t.Fatal(err)
		}
		validity := srv.URL + "/_matrix/client/v1/register/m.login.registration_token/validity?token="
		if st, body := call(t, "GET", validity+tok.Token, "", nil); st != 200 || body["valid"] != true {
			t.Fatalf("validity before use: %d %v", st, body)
		}
		if st, body := call(t, "GET", validity+"nope", "", nil); st != 200 || body["valid"] != false {
			t.Fatalf("validity of unknown token: %d %v", st, body)
		}

		cli := client(t, srv, "", "")
		req := &mautrix.ReqRegister[any]{Username: "alice", Password: testPassword}
		_, uia, err := cli.Register(ctx, req)
		if uia == nil {
			t.Fatalf("first request: want a UIA challenge, got err %v", err)
		}
		if !uia.HasSingleStageFlow("m.login.registration_token") || uia.Session == "" {
			t.Fatalf("flows = %+v session %q, want [[m.login.registration_token]]", uia.Flows, uia.Session)
		}

		// A wrong token is a failed stage: 401 with errcode and the flows.
		st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/register", "", map[string]any{
			"username": "alice", "password": testPassword,
			"auth": map[string]any{"type": "m.login.registration_token", "token": "wrong", "session": uia.Session},
		})
		if st != 401 || body["errcode"] != "M_FORBIDDEN" || body["flows"] == nil || body["session"] != uia.Session {
			t.Fatalf("wrong token: %d %v", st, body)
		}

		req.Auth = map[string]any{"type": "m.login.registration_token", "token": tok.Token, "session": uia.Session}
		resp, _, err := cli.Register(ctx, req)
		if err != nil {
			t.Fatalf("register with token: %v", err)
		}
		if resp.UserID != "@alice:localhost" || resp.AccessToken == "" || resp.DeviceID == "" {
			t.Fatalf("register response %+v", resp)
		}
		who, err := client(t, srv, string(resp.UserID), resp.AccessToken).Whoami(ctx)
		if err != nil || who.UserID != "@alice:localhost" || who.DeviceID != resp.DeviceID {
			t.Fatalf("whoami after registration: %+v %v", who, err)
		}

		tokens, err := srv.HS.ClientAPI.Accounts().RegistrationTokens(ctx)
		if err != nil || len(tokens) != 1 || tokens[0].Completed != 1 || tokens[0].Pending != 0 {
			t.Fatalf("token counters after use: %+v %v", tokens, err)
		}
		if st, body := call(t, "GET", validity+tok.Token, "", nil); st != 200 || body["valid"] != false {
			t.Fatalf("validity after last use: %d %v", st, body)
		}

		// The token's one use is spent: the next registration fails at the token stage.
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/register", "", map[string]any{
			"username": "bob", "password": testPassword,
			"auth": map[string]any{"type": "m.login.registration_token", "token": tok.Token},
		})
		if st != 401 || body["errcode"] != "M_FORBIDDEN" {
			t.Fatalf("exhausted token: %d %v", st, body)
		}
		// The session cannot be replayed to register a second account.
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/register", "", map[string]any{
			"username": "carol", "password": testPassword, "auth": map[string]any{"session": uia.Session},
		})
		if st != 401 || body["errcode"] != "M_FORBIDDEN" || body["session"] == uia.Session {
			t.Fatalf("replayed session: %d %v", st, body)
		}
	})
}

// A token that two clients race for: the second one to pass the stage
// while the first is pending finds it used up (pending counts).
func TestRegistrationTokenPendingCountsAsUse(t *testing.T) {
	srv := testserver.Start(t, "sqlite", tokenMode)
	ctx := context.Background()
	one := int64(1)
	tok, err := srv.HS.ClientAPI.Accounts().CreateRegistrationToken(ctx, "race-token", &one, timeZero)
	if err != nil {
		t.Fatal(err)
	}
	// Client A passes the token stage but sends no password, so it does not finish.
	st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/register", "", map[string]any{
		"username": "first", "auth": map[string]any{"type": "m.login.registration_token", "token": tok.Token},
	})
	expectError(t, "completed flow without password", st, body, 400, "M_MISSING_PARAM")
	tokens, _ := srv.HS.ClientAPI.Accounts().RegistrationTokens(ctx)
	if tokens[0].Pending != 1 {
		t.Fatalf("pending = %d, want 1", tokens[0].Pending)
	}
	st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/register", "", map[string]any{
		"username": "second", "password": testPassword,
		"auth": map[string]any{"type": "m.login.registration_token", "token": tok.Token},
	})
	if st != 401 || body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("second client with a pending token: %d %v", st, body)
	}
}

// Spec: "Dummy Auth"; appendices, "User Identifiers".
func TestRegisterOpenAndUsernameRules(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		cli := registerUser(t, srv, "Bob")
		if cli.UserID != "@bob:localhost" {
			t.Fatalf("user ID = %s, want the lower-cased @bob:localhost", cli.UserID)
		}
		anon := client(t, srv, "", "")
		if _, err := anon.RegisterAvailable(ctx, "bob"); !errors.Is(err, mautrix.MUserInUse) {
			t.Fatalf("available(bob) err = %v, want M_USER_IN_USE", err)
		}
		if resp, err := anon.RegisterAvailable(ctx, "someone_else"); err != nil || !resp.Available {
			t.Fatalf("available(someone_else) = %+v, %v", resp, err)
		}
		if _, err := anon.RegisterAvailable(ctx, "bad!name"); !errors.Is(err, mautrix.MInvalidUsername) {
			t.Fatalf("available(bad!name) err = %v, want M_INVALID_USERNAME", err)
		}
		// Username errors come before UIA, so they show on the first request.
		for name, want := range map[string]string{
			"bob": "M_USER_IN_USE", "BOB": "M_USER_IN_USE", "bad!name": "M_INVALID_USERNAME",
			"sp ace": "M_INVALID_USERNAME", "ünï": "M_INVALID_USERNAME",
			string(make([]byte, 250)): "M_INVALID_USERNAME",
		} {
			st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/register", "", map[string]any{"username": name, "password": testPassword})
			expectError(t, "register "+name, st, body, 400, want)
		}
		st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "weak", "password": "short"})
		expectError(t, "weak password", st, body, 400, "M_WEAK_PASSWORD")
		// All legal punctuation is accepted.
		if c := registerUser(t, srv, "a.b_c=d-e/f+g"); c.UserID != "@a.b_c=d-e/f+g:localhost" {
			t.Fatalf("user ID = %s", c.UserID)
		}
		// No username: the server picks a legal one.
		resp, err := anon.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Password: testPassword, InhibitLogin: true})
		if err != nil || resp.UserID == "" || resp.AccessToken != "" {
			t.Fatalf("generated username with inhibit_login: %+v %v", resp, err)
		}
		// A request without auth never succeeds, even when dummy is the only stage.
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "nodummy", "password": testPassword})
		if st != 401 || body["errcode"] != nil || body["session"] == nil {
			t.Fatalf("no auth: %d %v", st, body)
		}
	})
}

func TestRegisterClosedAndGuests(t *testing.T) {
	srv := testserver.Start(t, "sqlite", func(c *config.Config) { c.ClientAPI.Registration = "closed" })
	st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "x", "password": testPassword})
	expectError(t, "closed registration", st, body, http.StatusForbidden, "M_FORBIDDEN")
	st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	expectError(t, "guest without guest_access", st, body, http.StatusForbidden, "M_FORBIDDEN")
	st, body = call(t, "GET", srv.URL+"/_matrix/client/v1/register/m.login.registration_token/validity?token=x", "", nil)
	expectError(t, "validity when not in token mode", st, body, http.StatusForbidden, "M_FORBIDDEN")

	guests := testserver.Start(t, "sqlite", func(c *config.Config) { c.ClientAPI.GuestAccess = true })
	cli := client(t, guests, "", "")
	resp, _, err := cli.RegisterGuest(context.Background(), &mautrix.ReqRegister[any]{Username: "ignored", InitialDeviceDisplayName: "guest phone"})
	if err != nil || resp.UserID == "@ignored:localhost" || resp.AccessToken == "" {
		t.Fatalf("guest registration: %+v %v", resp, err)
	}
	st, body = call(t, "GET", guests.URL+"/_matrix/client/v3/account/whoami", resp.AccessToken, nil)
	if st != 200 || body["is_guest"] != true {
		t.Fatalf("guest whoami: %d %v", st, body)
	}
	st, body = call(t, "POST", guests.URL+"/_matrix/client/v3/account/password", resp.AccessToken, map[string]any{"new_password": testPassword})
	expectError(t, "guest password change", st, body, http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN")
}

func TestThreepidEndpoints(t *testing.T) {
	srv := testserver.Start(t, "sqlite", nil)
	cli := registerUser(t, srv, "tp")
	st, body := call(t, "GET", srv.URL+"/_matrix/client/v3/account/3pid", cli.AccessToken, nil)
	if list, ok := body["threepids"].([]any); st != 200 || !ok || len(list) != 0 {
		t.Fatalf("GET /account/3pid: %d %v", st, body)
	}
	for _, p := range []string{"/register/email/requestToken", "/account/3pid/email/requestToken", "/account/password/msisdn/requestToken"} {
		st, body := call(t, "POST", srv.URL+"/_matrix/client/v3"+p, cli.AccessToken, map[string]any{"client_secret": "s", "email": "a@b.c", "send_attempt": 1})
		expectError(t, p, st, body, 403, "M_THREEPID_DENIED")
	}
	st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/account/3pid/add", cli.AccessToken, map[string]any{"client_secret": "s", "sid": "x"})
	expectError(t, "3pid/add", st, body, 403, "M_THREEPID_AUTH_FAILED")
}

// UIA sessions live in the database: a flow begun on one server process
// finishes on another (a restart, or another replica).
func TestUIASessionSurvivesServerChange(t *testing.T) {
	dbPath := t.TempDir() + "/shared.db"
	useShared := func(c *config.Config) { c.Database.SQLitePath = dbPath; c.ClientAPI.Registration = "token" }
	first := testserver.Start(t, "sqlite", useShared)
	if _, err := first.HS.ClientAPI.Accounts().CreateRegistrationToken(context.Background(), "carry-over", nil, timeZero); err != nil {
		t.Fatal(err)
	}
	st, body := call(t, "POST", first.URL+"/_matrix/client/v3/register", "", map[string]any{
		"username": "moved", "auth": map[string]any{"type": "m.login.registration_token", "token": "carry-over"},
	})
	expectError(t, "token stage without password", st, body, 400, "M_MISSING_PARAM")
	st, body = call(t, "POST", first.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "moved"})
	if st != 401 {
		t.Fatalf("challenge: %d %v", st, body)
	}
	// Redo it properly: start a session on the first server, pass the token stage there.
	session := body["session"].(string)
	st, body = call(t, "POST", first.URL+"/_matrix/client/v3/register", "", map[string]any{
		"username": "moved", "auth": map[string]any{"type": "m.login.registration_token", "token": "carry-over", "session": session},
	})
	expectError(t, "token stage without password", st, body, 400, "M_MISSING_PARAM")

	second := testserver.Start(t, "sqlite", useShared)
	st, body = call(t, "POST", second.URL+"/_matrix/client/v3/register", "", map[string]any{
		"username": "moved", "password": testPassword, "auth": map[string]any{"session": session},
	})
	if st != 200 || body["user_id"] != "@moved:localhost" {
		t.Fatalf("finishing on the second server: %d %v", st, body)
	}
}
