package homeserver_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestSplitSlidingConnsDroppedWithDevice: in split mode, a device logged
// out on a client API process that runs no syncapi has its sliding sync
// connections, made on a sync process, dropped from Redis; a device
// created again with that ID does not continue them (M_UNKNOWN_POS).
func TestSplitSlidingConnsDroppedWithDevice(t *testing.T) {
	a, b := testserver.StartSplitWith(t,
		func(c *config.Config) { c.Global.Components = []string{"clientapi"} },
		func(c *config.Config) { c.Global.Components = []string{"syncapi"} })
	if a.HS.Sync != nil {
		t.Fatal("the client API process runs syncapi")
	}
	const password = "alice's long password"
	st, body := splitCall(t, "POST", a.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": password,
		"device_id": "D", "auth": map[string]any{"type": "m.login.dummy"}})
	if st != 200 {
		t.Fatalf("register: %d %v", st, body)
	}
	userID, token := body["user_id"].(string), body["access_token"].(string)
	const path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
	slide := func(token, conn, pos string) (int, map[string]any) {
		t.Helper()
		req := map[string]any{"conn_id": conn, "timeout": 0, "lists": map[string]any{"all": map[string]any{"ranges": [][]int{{0, 10}}, "timeline_limit": 1}}}
		if pos != "" {
			req["pos"] = pos
		}
		return splitCall(t, "POST", b.URL+path, token, req)
	}
	var pos string
	for _, conn := range []string{"main", "other"} {
		st, body := slide(token, conn, "")
		if st != 200 {
			t.Fatalf("sliding sync %s: %d %v", conn, st, body)
		}
		pos = body["pos"].(string)
	}
	// The connections' hashes in Redis (syncapi's key layout: the prefix,
	// "sliding:", then user and device length-prefixed, then the conn_id).
	opts, err := redis.ParseURL(a.Config.Global.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(opts)
	defer rc.Close()
	pattern := a.Config.Global.RedisPrefix + "sliding:" + strconv.Itoa(len(userID)) + ":" + userID + "1:D*"
	hashes := func() int {
		t.Helper()
		keys, err := rc.Keys(context.Background(), pattern).Result()
		if err != nil {
			t.Fatal(err)
		}
		return len(keys)
	}
	if n := hashes(); n != 2 {
		t.Fatalf("%d connection hashes in Redis before the logout, want 2", n)
	}
	if st, body := splitCall(t, "POST", a.URL+"/_matrix/client/v3/logout", token, map[string]any{}); st != 200 {
		t.Fatalf("logout: %d %v", st, body)
	}
	if n := hashes(); n != 0 {
		t.Fatalf("%d connection hashes in Redis after the logout on the client API process, want 0", n)
	}
	st, body = splitCall(t, "POST", a.URL+"/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "password": password,
		"device_id": "D", "identifier": map[string]any{"type": "m.id.user", "user": "alice"}})
	if st != 200 {
		t.Fatalf("login: %d %v", st, body)
	}
	if st, body := slide(body["access_token"].(string), "other", pos); st != 400 || body["errcode"] != "M_UNKNOWN_POS" {
		t.Fatalf("the old device's pos on the new one: %d %v, want 400 M_UNKNOWN_POS", st, body)
	}
}
