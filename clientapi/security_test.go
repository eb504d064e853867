package clientapi_test

import (
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// Security case 29, path tricks: a path that only resembles an
// endpoint — an extra segment, a doubled or trailing slash, an encoded
// slash, another API prefix, a dot segment — is 404 M_UNRECOGNIZED,
// never a handler; in particular it is not a way around the login rate
// limit. (Forged X-Forwarded-For: TestRateLimitIgnoresForgedForwardedFor.)
func TestPathTricksAre404(t *testing.T) {
	srv := testserver.Start(t, "sqlite", limited())
	login := map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "x"}, "password": "y"}
	// Use up the login bucket on the real path.
	var st int
	var body map[string]any
	for range 3 {
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/login", "", login)
	}
	expectError(t, "third login", st, body, 429, "M_LIMIT_EXCEEDED")
	for _, path := range []string{
		"/_matrix/client/v3/login/extra",
		"/_matrix/client/v3/login/",
		"/_matrix//client/v3/login",
		"/_matrix/client//v3/login",
		"/_matrix/client/v3//login",
		"/_matrix/client/v3%2Flogin",
		"/_matrix/client%2Fv3%2Flogin",
		"/_matrix/client/v3/./login",
		"/_matrix/client/v3/x/../login",
		"/_matrix/X/v3/login",
		"/_matrix/client/v3/LOGIN",
		"/_matrix/client/v3/register/extra",
		"/_matrix/client/v3/account/whoami/extra",
	} {
		st, body := call(t, "POST", srv.URL+path, "", login)
		if st != 404 || body["errcode"] != "M_UNRECOGNIZED" {
			t.Errorf("POST %s: %d %v, want 404 M_UNRECOGNIZED", path, st, body)
		}
	}
}
