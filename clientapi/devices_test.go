package clientapi_test

import (
	"context"
	"errors"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// Spec: client-server-api, "Device management".
func TestDevices(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		cli := registerUser(t, srv, "dora")
		req := passwordLogin("dora")
		req.InitialDeviceDisplayName = "Dora's laptop"
		laptop, err := client(t, srv, "", "").Login(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		devices, err := cli.GetDevicesInfo(ctx)
		if err != nil || len(devices.Devices) != 2 {
			t.Fatalf("devices: %+v %v", devices, err)
		}
		info, err := cli.GetDeviceInfo(ctx, laptop.DeviceID)
		if err != nil || info.DisplayName != "Dora's laptop" {
			t.Fatalf("device info: %+v %v", info, err)
		}
		if err := cli.SetDeviceInfo(ctx, laptop.DeviceID, &mautrix.ReqDeviceInfo{DisplayName: "Old laptop"}); err != nil {
			t.Fatal(err)
		}
		if info, err := cli.GetDeviceInfo(ctx, laptop.DeviceID); err != nil || info.DisplayName != "Old laptop" {
			t.Fatalf("renamed device: %+v %v", info, err)
		}
		if _, err := cli.GetDeviceInfo(ctx, "NOSUCHDEVICE"); !errors.Is(err, mautrix.MNotFound) {
			t.Fatalf("unknown device: %v, want M_NOT_FOUND", err)
		}
		if err := cli.SetDeviceInfo(ctx, "NOSUCHDEVICE", &mautrix.ReqDeviceInfo{DisplayName: "x"}); !errors.Is(err, mautrix.MNotFound) {
			t.Fatalf("renaming unknown device: %v, want M_NOT_FOUND", err)
		}
		// last_seen_ip and last_seen_ts are recorded from authenticated requests.
		eventually(t, "last_seen_ip", func() bool {
			info, err := cli.GetDeviceInfo(ctx, cli.DeviceID)
			return err == nil && info.LastSeenIP == "127.0.0.1" && info.LastSeenTS > 0
		})

		// DELETE needs UIA: challenge, wrong password, right password.
		deviceURL := srv.URL + "/_matrix/client/v3/devices/" + string(laptop.DeviceID)
		st, uia := call(t, "DELETE", deviceURL, cli.AccessToken, map[string]any{})
		if st != 401 || uia["errcode"] != nil || uia["session"] == nil {
			t.Fatalf("delete without auth: %d %v", st, uia)
		}
		session := uia["session"].(string)
		bad := passwordAuth(session, "dora", "wrong password")
		st, body := call(t, "DELETE", deviceURL, cli.AccessToken, map[string]any{"auth": bad})
		if st != 401 || body["errcode"] != "M_FORBIDDEN" || body["flows"] == nil {
			t.Fatalf("delete with wrong password: %d %v", st, body)
		}
		// Another user's identifier does not authenticate this one: a
		// plain 403, not a stage to retry (Complement: "DELETE
		// /device/{deviceId} requires UI auth user to match device owner"),
		// and the device stays.
		registerUser(t, srv, "eve")
		st, body = call(t, "DELETE", deviceURL, cli.AccessToken, map[string]any{"auth": passwordAuth(session, "eve", testPassword)})
		if st != 403 || body["errcode"] != "M_FORBIDDEN" || body["flows"] != nil {
			t.Fatalf("delete with another user's password: %d %v", st, body)
		}
		if _, err := cli.GetDeviceInfo(ctx, laptop.DeviceID); err != nil {
			t.Fatalf("device after a refused delete: %v", err)
		}
		err = cli.DeleteDevice(ctx, laptop.DeviceID, &mautrix.ReqDeleteDevice[any]{Auth: passwordAuth(session, "dora", testPassword)})
		if err != nil {
			t.Fatalf("delete with password: %v", err)
		}
		if _, err := client(t, srv, string(laptop.UserID), laptop.AccessToken).Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
			t.Fatalf("deleted device's token: %v, want M_UNKNOWN_TOKEN", err)
		}
		// Deleting it again is still 200 (after UIA).
		err = cli.DeleteDevice(ctx, laptop.DeviceID, &mautrix.ReqDeleteDevice[any]{Auth: passwordAuth("", "dora", testPassword)})
		if err != nil {
			t.Fatalf("deleting a deleted device: %v", err)
		}

		// Bulk deletion.
		var ids []id.DeviceID
		for range 2 {
			resp, err := client(t, srv, "", "").Login(ctx, passwordLogin("dora"))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, resp.DeviceID)
		}
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/delete_devices", cli.AccessToken, map[string]any{"devices": ids})
		if st != 401 || body["session"] == nil {
			t.Fatalf("delete_devices without auth: %d %v", st, body)
		}
		err = cli.DeleteDevices(ctx, &mautrix.ReqDeleteDevices[any]{Devices: ids, Auth: passwordAuth(body["session"].(string), "@dora:localhost", testPassword)})
		if err != nil {
			t.Fatalf("delete_devices: %v", err)
		}
		devices, err = cli.GetDevicesInfo(ctx)
		if err != nil || len(devices.Devices) != 1 || devices.Devices[0].DeviceID != cli.DeviceID {
			t.Fatalf("devices after bulk delete: %+v %v", devices, err)
		}
	})
}

// A UIA session is bound to the operation it was created for.
func TestUIASessionBoundToPurpose(t *testing.T) {
	srv := testserver.Start(t, storage.SQLite, nil)
	cli := registerUser(t, srv, "purpose")
	st, body := call(t, "POST", srv.URL+"/_matrix/client/v1/login/get_token", cli.AccessToken, map[string]any{})
	if st != 401 {
		t.Fatalf("get_token: %d %v", st, body)
	}
	session := body["session"].(string)
	st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/account/deactivate", cli.AccessToken,
		map[string]any{"auth": passwordAuth(session, "purpose", testPassword)})
	if st != 401 || body["errcode"] != "M_FORBIDDEN" || body["session"] == session {
		t.Fatalf("deactivate with a get_token session: %d %v", st, body)
	}
	if _, err := cli.Whoami(context.Background()); err != nil {
		t.Fatalf("account must still be active: %v", err)
	}
}
