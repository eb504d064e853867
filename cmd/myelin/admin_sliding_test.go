package main

import (
	"context"
	"net/http"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestUserPasswdDropsSlidingConns: `user passwd` logs every device out;
// a device created again with the same ID does not continue the old
// device's sliding sync connection (400 M_UNKNOWN_POS). In split mode
// (Redis) the command drops the connections itself; a single server
// holding them in memory drops them when the device is created again.
func TestUserPasswdDropsSlidingConns(t *testing.T) {
	for _, mode := range []string{"memory", "redis"} {
		t.Run(mode, func(t *testing.T) {
			var edit func(*config.Config)
			if mode == "redis" {
				edit = testserver.UseRedis(t)
			}
			testserver.ForEachEngine(t, edit, func(t *testing.T, srv *testserver.Server) {
				configPath := cliConfigWithUsers(t, srv, "carol")
				const carolID, device = "@carol:localhost", "SLIDINGDEVICE"
				login := func(password string) string {
					out := mustCall(t, srv, "", http.MethodPost, "/_matrix/client/v3/login", map[string]any{
						"type": "m.login.password", "password": password, "device_id": device,
						"identifier": map[string]any{"type": "m.id.user", "user": "carol"},
					})
					return out["access_token"].(string)
				}
				const path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
				slide := func(token, pos string) (int, map[string]any) {
					req := map[string]any{"conn_id": "c", "timeout": 0, "lists": map[string]any{"all": map[string]any{"ranges": [][]int{{0, 5}}, "timeline_limit": 1}}}
					if pos != "" {
						req["pos"] = pos
					}
					return testserver.Call(t, srv, http.MethodPost, path, token, req)
				}
				token := login("s3cret-password")
				st, out := slide(token, "")
				if st != 200 {
					t.Fatalf("sliding sync: %d %v", st, out)
				}
				pos := out["pos"].(string)
				// In Redis, syncapi's key of the connection's hash.
				held := func() int64 { return -1 }
				if mode == "redis" {
					opts, err := redis.ParseURL(srv.Config.Global.RedisURL)
					if err != nil {
						t.Fatal(err)
					}
					rc := redis.NewClient(opts)
					defer rc.Close()
					key := srv.Config.Global.RedisPrefix + "sliding:" + strconv.Itoa(len(carolID)) + ":" + carolID +
						strconv.Itoa(len(device)) + ":" + device + "c"
					held = func() int64 {
						n, err := rc.Exists(context.Background(), key).Result()
						if err != nil {
							t.Fatal(err)
						}
						return n
					}
					if n := held(); n != 1 {
						t.Fatalf("the connection's hash before user passwd: %d, want 1", n)
					}
				}
				if _, err := runCLI(t, "", "user", "passwd", "-config", configPath, "-password", "another-s3cret", "carol"); err != nil {
					t.Fatal(err)
				}
				if mode == "redis" {
					if n := held(); n != 0 {
						t.Fatalf("the connection's hash after user passwd: %d, want gone", n)
					}
				}
				token = login("another-s3cret")
				if st, out := slide(token, pos); st != 400 || out["errcode"] != "M_UNKNOWN_POS" {
					t.Fatalf("the old device's pos on the device created again: %d %v, want 400 M_UNKNOWN_POS", st, out)
				}
			})
		})
	}
}
