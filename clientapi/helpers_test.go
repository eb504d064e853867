package clientapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

const testPassword = "correct horse battery staple"

// client returns a mautrix client for srv, logged in with token if given.
func client(t *testing.T, srv *testserver.Server, userID, token string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(srv.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	cli.UserID = id.UserID(userID)
	cli.AccessToken = token
	return cli
}

// registerUser registers name with m.login.dummy (open registration)
// and returns a client logged in as the new user.
func registerUser(t *testing.T, srv *testserver.Server, name string) *mautrix.Client {
	t.Helper()
	cli := client(t, srv, "", "")
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: name, Password: testPassword})
	if err != nil {
		t.Fatalf("registering %s: %v", name, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return cli
}

// call makes a raw request and returns the status and the decoded JSON body.
func call(t *testing.T, method, url, token string, body any, header ...string) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := map[string]any{}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: response is not a JSON object: %s", method, url, raw)
		}
	}
	return resp.StatusCode, out
}

// expectError asserts a Matrix error response.
func expectError(t *testing.T, what string, status int, body map[string]any, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus || body["errcode"] != wantCode {
		t.Fatalf("%s: got %d %v, want %d %s", what, status, body, wantStatus, wantCode)
	}
}

// passwordAuth is an m.login.password auth dict for user in session.
func passwordAuth(session, user, password string) map[string]any {
	return map[string]any{
		"type":       "m.login.password",
		"session":    session,
		"identifier": map[string]any{"type": "m.id.user", "user": user},
		"password":   password,
	}
}

// eventually retries check until it returns true or the deadline passes.
func eventually(t *testing.T, what string, check func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !check() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
