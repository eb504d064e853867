package clientapi_test

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"testing"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

const sharedSecret = "a shared secret for tests"

func adminMAC(secret, nonce, user, password string, admin bool) string {
	mac := hmac.New(sha1.New, []byte(secret))
	role := "notadmin"
	if admin {
		role = "admin"
	}
	mac.Write([]byte(nonce + "\x00" + user + "\x00" + password + "\x00" + role))
	return hex.EncodeToString(mac.Sum(nil))
}

func TestSharedSecretRegistration(t *testing.T) {
	testserver.ForEachEngine(t, func(c *config.Config) {
		c.ClientAPI.Registration = "closed" // works whatever the mode
		c.ClientAPI.RegistrationSharedSecret = sharedSecret
	}, func(t *testing.T, srv *testserver.Server) {
		url := srv.URL + "/_synapse/admin/v1/register"
		nonce := func() string {
			st, body := call(t, "GET", url, "", nil)
			if st != 200 || body["nonce"] == nil {
				t.Fatalf("nonce: %d %v", st, body)
			}
			return body["nonce"].(string)
		}
		n := nonce()
		st, body := call(t, "POST", url, "", map[string]any{
			"nonce": n, "username": "root", "password": testPassword, "admin": true,
			"mac": adminMAC(sharedSecret, n, "root", testPassword, true),
		})
		if st != 200 || body["user_id"] != "@root:localhost" || body["access_token"] == nil {
			t.Fatalf("admin register: %d %v", st, body)
		}
		if st, who := call(t, "GET", srv.URL+"/_matrix/client/v3/account/whoami", body["access_token"].(string), nil); st != 200 || who["user_id"] != "@root:localhost" {
			t.Fatalf("whoami: %d %v", st, who)
		}
		users, err := srv.HS.ClientAPI.Accounts().Users(t.Context())
		if err != nil || len(users) != 1 || !users[0].Admin {
			t.Fatalf("users: %+v %v", users, err)
		}
		// The nonce was spent.
		st, body = call(t, "POST", url, "", map[string]any{
			"nonce": n, "username": "root2", "password": testPassword, "admin": false,
			"mac": adminMAC(sharedSecret, n, "root2", testPassword, false),
		})
		expectError(t, "reused nonce", st, body, 400, "M_UNKNOWN")
		// A MAC with the wrong secret, or claiming admin when the MAC says notadmin.
		n = nonce()
		st, body = call(t, "POST", url, "", map[string]any{
			"nonce": n, "username": "mallory", "password": testPassword, "admin": false,
			"mac": adminMAC("wrong secret", n, "mallory", testPassword, false),
		})
		expectError(t, "bad MAC", st, body, 403, "M_FORBIDDEN")
		n = nonce()
		st, body = call(t, "POST", url, "", map[string]any{
			"nonce": n, "username": "mallory", "password": testPassword, "admin": true,
			"mac": adminMAC(sharedSecret, n, "mallory", testPassword, false),
		})
		expectError(t, "admin flag not covered by MAC", st, body, 403, "M_FORBIDDEN")
		st, body = call(t, "POST", url, "", map[string]any{"nonce": n, "username": "mallory", "password": testPassword, "mac": "00"})
		expectError(t, "bad MAC after failure (nonce spent)", st, body, 400, "M_UNKNOWN")
	})
}

func TestSharedSecretRegistrationDisabled(t *testing.T) {
	srv := testserver.Start(t, "sqlite", nil)
	st, body := call(t, "GET", srv.URL+"/_synapse/admin/v1/register", "", nil)
	expectError(t, "nonce without a shared secret", st, body, 403, "M_FORBIDDEN")
}
