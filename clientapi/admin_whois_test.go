package clientapi_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestAdminWhois: GET /admin/whois/{userId} answers a user about
// themselves and a server administrator about any local user, with each
// device's session and its last connection (IP, time, user agent, as
// recorded when the access token was last checked); anyone else is 403
// M_FORBIDDEN whether or not the user exists; an administrator asking of
// an unknown local user gets 404 M_NOT_FOUND, of another server's user
// 400 M_INVALID_PARAM. Spec: client-server-api, "GET
// /_matrix/client/v3/admin/whois/{userId}".
func TestAdminWhois(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		_, err := srv.HS.ClientAPI.Accounts().CreateUser(bg, "root", testPassword, true)
		ok(t, "create admin", err)
		login, err := client(t, srv, "", "").Login(bg, passwordLogin("root"))
		ok(t, "admin login", err)
		admin := login.AccessToken

		whois := func(token, userID string) (int, map[string]any) {
			return call(t, "GET", srv.URL+"/_matrix/client/v3/admin/whois/"+url.PathEscape(userID), token, nil,
				"User-Agent", "whois-test/1.0")
		}
		// alice's first request records her device's last connection (off
		// the request path): wait for it.
		var body map[string]any
		deadline := time.Now().Add(10 * time.Second)
		for {
			var st int
			st, body = whois(alice.token, alice.id.String())
			if st != 200 {
				t.Fatalf("alice about herself: %d %v", st, body)
			}
			if conns := connections(body, "TESTDEVICE"); len(conns) > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		check := func(who string, body map[string]any) {
			t.Helper()
			if body["user_id"] != alice.id.String() {
				t.Errorf("%s: user_id %v", who, body["user_id"])
			}
			if devices, _ := body["devices"].(map[string]any); len(devices) != 1 {
				t.Errorf("%s: devices %v, want alice's one", who, body["devices"])
			}
			conns := connections(body, "TESTDEVICE")
			if len(conns) != 1 {
				t.Fatalf("%s: connections %v, want one", who, conns)
			}
			c, _ := conns[0].(map[string]any)
			if c["ip"] != "127.0.0.1" || c["user_agent"] != "whois-test/1.0" {
				t.Errorf("%s: connection %v, want ip 127.0.0.1 and user agent whois-test/1.0", who, c)
			}
			if seen, _ := c["last_seen"].(float64); seen < float64(time.Now().Add(-time.Minute).UnixMilli()) {
				t.Errorf("%s: last_seen %v, want the last minute", who, c["last_seen"])
			}
		}
		check("alice about herself", body)
		st, body := whois(admin, alice.id.String())
		if st != 200 {
			t.Fatalf("admin about alice: %d %v", st, body)
		}
		check("admin about alice", body)

		for _, c := range []struct {
			name, token, userID string
			status              int
			errcode             string
		}{
			{"bob about alice", bob.token, alice.id.String(), 403, "M_FORBIDDEN"},
			{"bob about the admin", bob.token, "@root:localhost", 403, "M_FORBIDDEN"},
			{"bob about nobody", bob.token, "@nobody:localhost", 403, "M_FORBIDDEN"},
			{"bob about a remote user", bob.token, "@alice:elsewhere.example", 403, "M_FORBIDDEN"},
			{"admin about nobody", admin, "@nobody:localhost", 404, "M_NOT_FOUND"},
			{"admin about a remote user", admin, "@alice:elsewhere.example", 400, "M_INVALID_PARAM"},
		} {
			st, body := whois(c.token, c.userID)
			if st != c.status || body["errcode"] != c.errcode {
				t.Errorf("%s: %d %v, want %d %s", c.name, st, body, c.status, c.errcode)
			}
		}
		// A device never seen has its session and no connection.
		st, body = whois(admin, "@root:localhost")
		if devices, _ := body["devices"].(map[string]any); st != 200 || len(devices) != 1 {
			t.Fatalf("admin about themselves: %d %v", st, body)
		}
	})
}

// connections returns the first session's connections of deviceID in a
// whois answer.
func connections(body map[string]any, deviceID string) []any {
	devices, _ := body["devices"].(map[string]any)
	device, _ := devices[deviceID].(map[string]any)
	sessions, _ := device["sessions"].([]any)
	if len(sessions) == 0 {
		return nil
	}
	session, _ := sessions[0].(map[string]any)
	conns, _ := session["connections"].([]any)
	return conns
}
