package clientapi_test

import (
	"testing"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestDeletingDeviceDeletesLocalNotificationSettings: MSC3890. Logging a
// device out (or deleting it) deletes its
// org.matrix.msc3890.local_notification_settings.<device_id> account
// data, and leaves another device's entry alone.
func TestDeletingDeviceDeletesLocalNotificationSettings(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		one := registerUser(t, srv, "alice")
		two := client(t, srv, "", "")
		login, err := two.Login(bg, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"}, Password: testPassword, StoreCredentials: true})
		ok(t, "login", err)
		const prefix = "org.matrix.msc3890.local_notification_settings."
		ok(t, "set two", one.SetAccountData(bg, prefix+string(login.DeviceID), map[string]any{"is_silenced": true}))
		ok(t, "set one", one.SetAccountData(bg, prefix+string(one.DeviceID), map[string]any{"is_silenced": false}))
		first, err := one.SyncRequest(bg, 0, "", "", false, "")
		ok(t, "sync", err)

		_, err = two.Logout(bg)
		ok(t, "logout", err)

		var got map[string]any
		wantErrcode(t, "GET the logged-out device's settings", one.GetAccountData(bg, prefix+string(login.DeviceID), &got), 404, "M_NOT_FOUND")
		ok(t, "GET the remaining device's settings", one.GetAccountData(bg, prefix+string(one.DeviceID), &got))
		if got["is_silenced"] != false {
			t.Errorf("remaining device's settings = %v", got)
		}
		next, err := one.SyncRequest(bg, 0, first.NextBatch, "", false, "")
		ok(t, "incremental sync", err)
		if !hasAccountData(next.AccountData.Events, prefix+string(login.DeviceID), `{}`) {
			t.Errorf("incremental sync does not report the deletion: %+v", next.AccountData.Events)
		}

		// Deleting a device through DELETE /devices (UIA) does the same.
		three := client(t, srv, "", "")
		login3, err := three.Login(bg, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"}, Password: testPassword, StoreCredentials: true})
		ok(t, "login 3", err)
		ok(t, "set three", one.SetAccountData(bg, prefix+string(login3.DeviceID), map[string]any{"is_silenced": true}))
		status, body := call(t, "DELETE", srv.URL+"/_matrix/client/v3/devices/"+string(login3.DeviceID), one.AccessToken, map[string]any{})
		if status != 401 {
			t.Fatalf("DELETE device without auth = %d %v", status, body)
		}
		status, body = call(t, "DELETE", srv.URL+"/_matrix/client/v3/devices/"+string(login3.DeviceID), one.AccessToken,
			map[string]any{"auth": passwordAuth(body["session"].(string), "alice", testPassword)})
		if status != 200 {
			t.Fatalf("DELETE device = %d %v", status, body)
		}
		wantErrcode(t, "GET the deleted device's settings", one.GetAccountData(bg, prefix+string(login3.DeviceID), &got), 404, "M_NOT_FOUND")
	})
}
