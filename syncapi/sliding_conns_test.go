package syncapi_test

import (
	"fmt"
	"testing"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// maxConnsPerDevice mirrors syncapi's bound on one device's connections.
const maxConnsPerDevice = 10

// TestSlidingSyncConnsPerDevice: a device opening one connection more
// than the bound loses its least recently used one, whose pos is then
// answered 400 M_UNKNOWN_POS (MSC4186, Connections), while its other
// connections and another device's keep working; in memory and, in
// split mode, in Redis.
func TestSlidingSyncConnsPerDevice(t *testing.T) {
	for _, mode := range []string{"memory", "redis"} {
		t.Run(mode, func(t *testing.T) {
			var edit func(*config.Config)
			if mode == "redis" {
				edit = testserver.UseRedis(t)
			}
			testserver.ForEachEngine(t, edit, func(t *testing.T, srv *testserver.Server) {
				alice := newUser(t, srv, "alice")
				bob := newUser(t, srv, "bob")
				open := func(u *user, conn, pos string) (int, map[string]any) {
					t.Helper()
					body := map[string]any{"conn_id": conn, "timeout": 0,
						"lists": map[string]any{"all": map[string]any{"range": []int{0, 5}, "timeline_limit": 1}}}
					if pos != "" {
						body["pos"] = pos
					}
					return sliding(t, srv, u, body)
				}
				pos := map[string]string{}
				for i := range maxConnsPerDevice {
					conn := fmt.Sprintf("c%d", i)
					code, resp := open(alice, conn, "")
					if code != 200 {
						t.Fatalf("opening %s: %d %v", conn, code, resp)
					}
					pos[conn] = resp["pos"].(string)
				}
				code, resp := open(bob, "c0", "")
				if code != 200 {
					t.Fatalf("bob opening c0: %d %v", code, resp)
				}
				bobPos := resp["pos"].(string)
				// c0 is used again, so c1 is now the least recently used.
				if code, resp = open(alice, "c0", pos["c0"]); code != 200 {
					t.Fatalf("continuing c0: %d %v", code, resp)
				}
				pos["c0"] = resp["pos"].(string)
				if code, resp = open(alice, "extra", ""); code != 200 {
					t.Fatalf("opening connection %d: %d %v", maxConnsPerDevice+1, code, resp)
				}
				pos["extra"] = resp["pos"].(string)
				if code, resp = open(alice, "c1", pos["c1"]); code != 400 || resp["errcode"] != "M_UNKNOWN_POS" {
					t.Fatalf("pos of the dropped connection c1: %d %v, want 400 M_UNKNOWN_POS", code, resp)
				}
				for conn, p := range pos {
					if conn == "c1" {
						continue
					}
					if code, resp = open(alice, conn, p); code != 200 {
						t.Fatalf("connection %s after the drop: %d %v, want it kept", conn, code, resp)
					}
				}
				if code, resp = open(bob, "c0", bobPos); code != 200 {
					t.Fatalf("another device's connection: %d %v, want it kept", code, resp)
				}
				// The dropped conn_id starts again without a pos.
				if code, resp = open(alice, "c1", ""); code != 200 {
					t.Fatalf("restarting c1: %d %v", code, resp)
				}
			})
		})
	}
}
