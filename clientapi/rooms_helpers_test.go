package clientapi_test

import (
	"context"
	"errors"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// user is a test user with a mautrix client.
type user struct {
	*mautrix.Client
	id    id.UserID
	token string
}

// newUser creates localpart on srv and returns a client logged in as it.
func newUser(t *testing.T, srv *testserver.Server, localpart string) *user {
	t.Helper()
	token := clientapi.InsertTestUser(t, srv.HS.DB, localpart, false)
	uid := id.UserID("@" + localpart + ":localhost")
	cli, err := mautrix.NewClient(srv.URL, uid, token)
	if err != nil {
		t.Fatal(err)
	}
	cli.DefaultHTTPRetries = 0
	return &user{Client: cli, id: uid, token: token}
}

// wantErrcode fails unless err is a Matrix error with code and status.
func wantErrcode(t *testing.T, what string, err error, status int, code string) {
	t.Helper()
	var httpErr mautrix.HTTPError
	if !errors.As(err, &httpErr) || httpErr.RespError == nil {
		t.Fatalf("%s: want %d %s, got %v", what, status, code, err)
	}
	if httpErr.RespError.ErrCode != code || httpErr.Response.StatusCode != status {
		t.Fatalf("%s: want %d %s, got %d %s (%s)", what, status, code,
			httpErr.Response.StatusCode, httpErr.RespError.ErrCode, httpErr.RespError.Err)
	}
}

// ok fails the test on err.
func ok(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

var bg = context.Background()
