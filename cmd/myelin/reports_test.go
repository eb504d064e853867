package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestReportsCommands: `myelin reports list|show|delete` read and clear
// the queues users filled through a running server: each kind apart,
// filtered and paged; a deleted report is gone for the server's admin
// API too; bad flags and unknown IDs are errors.
func TestReportsCommands(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		configPath := cliConfigWithUsers(t, srv, "carol", "bob")
		carol, _ := loginDevice(t, srv, "carol", "s3cret-password")
		bob, _ := loginDevice(t, srv, "bob", "s3cret-password")
		roomID := mustCall(t, srv, carol, http.MethodPost, "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"})["room_id"].(string)
		room := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)
		mustCall(t, srv, bob, http.MethodPost, "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{})
		eventID := mustCall(t, srv, carol, http.MethodPut, room+"/send/m.room.message/t1", map[string]any{"msgtype": "m.text", "body": "x"})["event_id"].(string)
		mustCall(t, srv, bob, http.MethodPost, room+"/report/"+url.PathEscape(eventID), map[string]any{"reason": "rude\tremark"}) // 1
		mustCall(t, srv, carol, http.MethodPost, room+"/report/"+url.PathEscape(eventID), map[string]any{"reason": "own"})        // 2
		mustCall(t, srv, bob, http.MethodPost, room+"/report", map[string]any{"reason": "room"})                                  // 3
		mustCall(t, srv, bob, http.MethodPost, "/_matrix/client/v3/users/@carol:localhost/report", map[string]any{"reason": "u"}) // user 1

		out, err := runCLI(t, "", "reports", "list", "-config", configPath)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 4 || !strings.HasPrefix(lines[1], "2 ") || !strings.HasPrefix(lines[2], "1 ") ||
			!strings.Contains(lines[2], `"rude\tremark"`) || !strings.Contains(lines[2], eventID+" in "+roomID) ||
			lines[3] != "2 of 2 event reports" {
			t.Fatalf("reports list:\n%s", out)
		}
		out, err = runCLI(t, "", "reports", "list", "-config", configPath, "-limit", "1", "-dir", "f", "-user", "bob")
		if err != nil || !strings.Contains(out, "\n1 ") || !strings.HasSuffix(out, "1 of 1 event reports\n") {
			t.Fatalf("reports list -user bob: %q %v", out, err)
		}
		out, err = runCLI(t, "", "reports", "list", "-config", configPath, "-limit", "1")
		if err != nil || !strings.Contains(out, "\n2 ") || !strings.HasSuffix(out, "1 of 2 event reports; next page: -from 1\n") {
			t.Fatalf("reports list -limit 1: %q %v", out, err)
		}
		out, err = runCLI(t, "", "reports", "list", "-config", configPath, "-sender", "@carol:localhost")
		if err != nil || !strings.HasSuffix(out, "2 of 2 event reports\n") {
			t.Fatalf("reports list -sender @carol:localhost: %q %v", out, err)
		}
		out, err = runCLI(t, "", "reports", "list", "-config", configPath, "-sender", "@bob:localhost")
		if err != nil || !strings.HasSuffix(out, "0 of 0 event reports\n") {
			t.Fatalf("reports list -sender @bob:localhost: %q %v", out, err)
		}
		out, err = runCLI(t, "", "reports", "list", "-config", configPath, "-kind", "room")
		if err != nil || !strings.HasSuffix(out, "1 of 1 room reports\n") || !strings.Contains(out, "\n3 ") {
			t.Fatalf("reports list -kind room: %q %v", out, err)
		}
		out, err = runCLI(t, "", "reports", "show", "-config", configPath, "-kind", "user", "1")
		if err != nil || !strings.Contains(out, "user: @carol:localhost\n") || !strings.Contains(out, "reporter: @bob:localhost\n") {
			t.Fatalf("reports show -kind user 1: %q %v", out, err)
		}
		out, err = runCLI(t, "", "reports", "show", "1", "-config", configPath)
		if err != nil || !strings.Contains(out, "event: "+eventID+"\nsender: @carol:localhost\n") || !strings.Contains(out, `reason: "rude\tremark"`) {
			t.Fatalf("reports show 1: %q %v", out, err)
		}
		if _, err := runCLI(t, "", "reports", "show", "-config", configPath, "3"); err == nil || !strings.Contains(err.Error(), "M_NOT_FOUND") {
			t.Fatalf("the room report's ID as an event report: %v", err)
		}
		if _, err := runCLI(t, "", "reports", "delete", "-config", configPath, "1"); err != nil {
			t.Fatal(err)
		}
		if _, err := runCLI(t, "", "reports", "delete", "-config", configPath, "1"); err == nil || !strings.Contains(err.Error(), "M_NOT_FOUND") {
			t.Fatalf("deleting a deleted report: %v", err)
		}
		admin := cliConfigAdmin(t, srv, configPath)
		if st, body := testserver.Call(t, srv, http.MethodGet, "/_synapse/admin/v1/event_reports/1", admin, nil); st != http.StatusNotFound {
			t.Fatalf("report 1 through the admin API after reports delete: %d %v", st, body)
		}
		for _, args := range [][]string{
			{"reports", "list", "-config", configPath, "-kind", "spam"},
			{"reports", "list", "-config", configPath, "-dir", "x"},
			{"reports", "list", "-config", configPath, "-limit", "0"},
			{"reports", "show", "-config", configPath, "abc"},
			{"reports", "show", "-config", configPath},
			{"reports", "purge", "-config", configPath},
		} {
			if _, err := runCLI(t, "", args...); err == nil {
				t.Errorf("%v: no error", args)
			}
		}
	})
}

// cliConfigAdmin creates a server administrator with the CLI and logs it in.
func cliConfigAdmin(t *testing.T, srv *testserver.Server, configPath string) string {
	t.Helper()
	if _, err := runCLI(t, "", "user", "create", "-config", configPath, "-admin", "-password", "s3cret-password", "root"); err != nil {
		t.Fatal(err)
	}
	token, _ := loginDevice(t, srv, "root", "s3cret-password")
	return token
}
