package clientapi_test

import (
	"context"
	"os"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/homeserver"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// Every way this server ends a token's validity takes effect for the very
// next request, although the token was used (and cached) just before:
// logout, logout/all, device deletion, a login reusing the device ID, a
// password change with logout, a refresh, deactivation; so do the
// deactivation and password change of another process on the same
// database (the `myelin user` commands rewrite the revocation mark). A
// raw SQL change is seen within the cache's maximum age; a command killed
// after its commit, before its final write of the mark, at once.
func TestTokenCacheInvalidation(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		whoami := srv.URL + "/_matrix/client/v3/account/whoami"
		// used checks the token works (and so is cached now).
		used := func(what, token string) {
			t.Helper()
			for range 2 {
				if st, body := call(t, "GET", whoami, token, nil); st != 200 {
					t.Fatalf("%s: token refused before the change: %d %v", what, st, body)
				}
			}
		}
		refused := func(what, token string) {
			t.Helper()
			st, body := call(t, "GET", whoami, token, nil)
			expectError(t, what, st, body, 401, "M_UNKNOWN_TOKEN")
		}
		login := func(user string, edit func(*mautrix.ReqLogin)) *mautrix.RespLogin {
			t.Helper()
			req := passwordLogin(user)
			if edit != nil {
				edit(req)
			}
			resp, err := client(t, srv, "", "").Login(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			return resp
		}

		cli := registerUser(t, srv, "cached")
		keep := cli.AccessToken

		// logout
		a := login("cached", nil)
		used("logout", a.AccessToken)
		if st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/logout", a.AccessToken, map[string]any{}); st != 200 {
			t.Fatalf("logout: %d %v", st, body)
		}
		refused("token after logout", a.AccessToken)

		// device deletion by another device
		b := login("cached", nil)
		used("device deletion", b.AccessToken)
		st, body := call(t, "DELETE", srv.URL+"/_matrix/client/v3/devices/"+string(b.DeviceID), keep,
			map[string]any{"auth": passwordAuth("", "cached", testPassword)})
		if st != 200 {
			t.Fatalf("delete device: %d %v", st, body)
		}
		refused("token of a deleted device", b.AccessToken)

		// a new login with the same device ID replaces the session
		c := login("cached", nil)
		used("login reusing the device ID", c.AccessToken)
		login("cached", func(r *mautrix.ReqLogin) { r.DeviceID = c.DeviceID })
		refused("token replaced by a login with its device ID", c.AccessToken)

		// refresh replaces the access token
		d := login("cached", func(r *mautrix.ReqLogin) { r.RefreshToken = true })
		used("refresh", d.AccessToken)
		if st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/refresh", "", map[string]any{"refresh_token": d.RefreshToken}); st != 200 {
			t.Fatalf("refresh: %d %v", st, body)
		}
		refused("access token replaced by a refresh", d.AccessToken)

		// password change with logout_devices (the default)
		e := login("cached", nil)
		used("password change", e.AccessToken)
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/account/password", keep, map[string]any{
			"new_password": testPassword + " again", "auth": passwordAuth("", "cached", testPassword)})
		if st != 200 {
			t.Fatalf("password change: %d %v", st, body)
		}
		refused("other device after a password change", e.AccessToken)
		used("the device that changed the password", keep)

		// logout/all
		other := registerUser(t, srv, "cached2")
		f := login("cached2", nil)
		used("logout/all", f.AccessToken)
		used("logout/all", other.AccessToken)
		if st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/logout/all", other.AccessToken, map[string]any{}); st != 200 {
			t.Fatalf("logout/all: %d %v", st, body)
		}
		refused("token after logout/all", f.AccessToken)
		refused("caller's token after logout/all", other.AccessToken)

		// deactivation
		third := registerUser(t, srv, "cached3")
		g := login("cached3", nil)
		used("deactivation", g.AccessToken)
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/account/deactivate", third.AccessToken,
			map[string]any{"auth": passwordAuth("", "cached3", testPassword)})
		if st != 200 {
			t.Fatalf("deactivate: %d %v", st, body)
		}
		refused("token after deactivation", g.AccessToken)

		// Another process on the same database (the `myelin user`
		// commands): its deactivation and password change take effect
		// for the very next request, although the tokens were cached.
		db2, err := storage.Open(ctx, homeserver.StorageOptions(srv.Config.Database))
		if err != nil {
			t.Fatal(err)
		}
		defer db2.Close()
		outside, err := clientapi.OpenAccounts(ctx, srv.Config, db2)
		if err != nil {
			t.Fatal(err)
		}
		registerUser(t, srv, "cached4")
		h := login("cached4", nil)
		used("deactivation by another process", h.AccessToken)
		if err := outside.Deactivate(ctx, "cached4"); err != nil {
			t.Fatal(err)
		}
		refused("token after deactivation by another process", h.AccessToken)
		registerUser(t, srv, "cached5")
		k := login("cached5", nil)
		used("password change by another process", k.AccessToken)
		if err := outside.SetPassword(ctx, "cached5", "a new passw0rd"); err != nil {
			t.Fatal(err)
		}
		refused("token after a password change by another process", k.AccessToken)

		// A command killed after its commit, before its final write of
		// the mark: its pending mark (written before the commit) ends the
		// entries read before it, and a request served while it runs
		// (between the pending mark and the commit) is not kept.
		if srv.Config.Database.Engine == "sqlite" {
			registerUser(t, srv, "cached6")
			m := login("cached6", nil)
			used("a killed command", m.AccessToken)
			if err := os.WriteFile(srv.Config.Database.SQLitePath+"-sessions", []byte("pending-killed"), 0o600); err != nil {
				t.Fatal(err)
			}
			used("a killed command, while it runs", m.AccessToken)
			if srv.HS.ClientAPI.TokenCached(m.AccessToken) {
				t.Fatal("a token read under a pending mark was cached")
			}
			if err := db2.Write(ctx, func(tx storage.Tx) error {
				_, err := tx.Exec(ctx, `DELETE FROM sessions WHERE localpart = 'cached6'`)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			refused("token after a command killed before its final mark", m.AccessToken)
		}

		// A session deleted behind the server's back by something that
		// does not write the revocation mark (a manual SQL statement) is
		// refused once the entry is the cache's maximum age old (shortened
		// here from clientapi.MaxTokenAge).
		if srv.Config.Database.Engine == "sqlite" {
			if err := os.WriteFile(srv.Config.Database.SQLitePath+"-sessions", []byte("settled"), 0o600); err != nil {
				t.Fatal(err)
			}
			srv.HS.ClientAPI.SetMaxTokenAge(time.Second)
		}
		used("an outside change", keep)
		if err := srv.HS.DB.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `DELETE FROM sessions WHERE localpart = 'cached'`)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second + 50*time.Millisecond)
		refused("token whose session was deleted by another process", keep)
	})
}
