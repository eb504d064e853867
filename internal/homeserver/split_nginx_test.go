package homeserver_test

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// nginxBinary finds nginx, or skips the test.
func nginxBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	t.Skip("nginx test skipped: install nginx (Debian's package; .ci/run does) to run docs/split-nginx.conf in front of a split deployment")
	return ""
}

// startNginx runs docs/split-nginx.conf with its upstream addresses
// replaced by upstreams (upstream name → host:port) in front of them, and
// returns its base URL.
func startNginx(t *testing.T, upstreams map[string]string) string {
	t.Helper()
	bin := nginxBinary(t)
	conf, err := os.ReadFile("../../docs/split-nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	text := string(conf)
	upstreamLine := regexp.MustCompile(`(?m)^upstream (\w+)\s*\{ server [^;]+; \}`)
	found := map[string]bool{}
	text = upstreamLine.ReplaceAllStringFunc(text, func(line string) string {
		name := upstreamLine.FindStringSubmatch(line)[1]
		addr, ok := upstreams[name]
		if !ok {
			t.Fatalf("docs/split-nginx.conf has upstream %s, which the test does not start", name)
		}
		found[name] = true
		return fmt.Sprintf("upstream %s { server %s; }", name, addr)
	})
	for name := range upstreams {
		if !found[name] {
			t.Fatalf("docs/split-nginx.conf has no upstream %s", name)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if !strings.Contains(text, "listen 8008;") {
		t.Fatal("docs/split-nginx.conf no longer listens on 8008")
	}
	text = strings.Replace(text, "listen 8008;", "listen "+addr+";", 1)

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "myelin.conf"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // workers write temp files in dir
	}
	main := fmt.Sprintf(`%s
worker_processes 1;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path %[2]s/client_body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    include %[2]s/myelin.conf;
}
`, user, dir)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-g", "daemon off;")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return "http://" + addr
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx did not listen on %s: %s %s", addr, out.String(), log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSplitBehindNginx runs docs/split-nginx.conf in front of one process
// per component and uses each component through it: a path routed to
// the wrong process is answered 404 M_UNRECOGNIZED (docs/split.md,
// "Routing"), which fails the test.
func TestSplitBehindNginx(t *testing.T) {
	components := []struct{ upstream, component string }{
		{"myelin_client", "clientapi"},
		{"myelin_sync", "syncapi"},
		{"myelin_keys", "keyserver"},
		{"myelin_media", "mediaapi"},
		{"myelin_push", "pushserver"},
		{"myelin_appservice", "appservice"},
		{"myelin_federation", "federationapi"},
	}
	nginxBinary(t) // skip before starting servers
	var edits []func(*config.Config)
	for _, c := range components {
		edits = append(edits, func(cfg *config.Config) {
			cfg.Global.Components = []string{c.component}
			cfg.Federation.Enabled = true
		})
	}
	procs := testserver.StartSplitN(t, edits...)
	upstreams := map[string]string{}
	for i, c := range components {
		u, err := url.Parse(procs[i].URL)
		if err != nil {
			t.Fatal(err)
		}
		upstreams[c.upstream] = u.Host
	}
	base := startNginx(t, upstreams)

	call := func(method, path, token string, body any) (int, map[string]any) {
		t.Helper()
		return splitCall(t, method, base+path, token, body)
	}
	want := func(what string, st int, body map[string]any, wantStatus int) {
		t.Helper()
		if st != wantStatus {
			t.Fatalf("%s through nginx: %d %v, want %d", what, st, body, wantStatus)
		}
	}

	// clientapi
	st, body := call("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "alice's long password", "auth": map[string]any{"type": "m.login.dummy"}})
	want("register", st, body, 200)
	token := body["access_token"].(string)
	st, body = call("POST", "/_matrix/client/v3/createRoom", token, map[string]any{"preset": "private_chat", "name": "behind nginx"})
	want("createRoom", st, body, 200)
	roomID := body["room_id"].(string)
	st, body = call("PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/n1", token, map[string]any{"msgtype": "m.text", "body": "through nginx"})
	want("send", st, body, 200)
	eventID := body["event_id"].(string)
	st, body = call("GET", "/.well-known/matrix/client", "", nil)
	if st != 200 && st != 404 || body["errcode"] == "M_UNRECOGNIZED" {
		t.Fatalf("/.well-known/matrix/client through nginx: %d %v, want the client API's answer", st, body)
	}

	// syncapi: the message, and a long poll woken by the next one.
	st, body = call("GET", "/_matrix/client/v3/sync?timeout=0", token, nil)
	want("sync", st, body, 200)
	if !timelineHas(body, roomID, eventID) {
		t.Fatalf("sync through nginx lacks %s: %v", eventID, body)
	}
	since := body["next_batch"].(string)
	type result struct {
		st   int
		body map[string]any
	}
	done := make(chan result, 1)
	go func() {
		st, body := splitCall(t, "GET", base+"/_matrix/client/v3/sync?timeout=20000&since="+url.QueryEscape(since), token, nil)
		done <- result{st, body}
	}()
	time.Sleep(300 * time.Millisecond)
	st, body = call("PUT", "/_matrix/client/r0/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/n2", token, map[string]any{"msgtype": "m.text", "body": "second"})
	want("send (r0)", st, body, 200)
	second := body["event_id"].(string)
	select {
	case r := <-done:
		if r.st != 200 || !timelineHas(r.body, roomID, second) {
			t.Fatalf("long poll through nginx: %d, lacks %s: %v", r.st, second, r.body)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the long poll through nginx did not return within 15 s of the message")
	}

	// keyserver
	st, body = call("POST", "/_matrix/client/v3/keys/upload", token, map[string]any{"one_time_keys": map[string]any{"signed_curve25519:AAAAAQ": map[string]any{"key": "aGVsbG8", "signatures": map[string]any{}}}})
	if st != 200 && (st != 400 || body["errcode"] == "M_UNRECOGNIZED") {
		t.Fatalf("keys/upload through nginx: %d %v, want the key server's answer", st, body)
	}
	st, body = call("POST", "/_matrix/client/v3/keys/query", token, map[string]any{"device_keys": map[string]any{"@alice:localhost": []string{}}})
	want("keys/query", st, body, 200)
	st, body = call("GET", "/_matrix/client/v3/room_keys/version", token, nil)
	if st != 404 || body["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("room_keys/version through nginx: %d %v, want the key server's 404 M_NOT_FOUND (no backup)", st, body)
	}

	st, body = call("PUT", "/_matrix/client/v3/sendToDevice/m.test/td1", token, map[string]any{"messages": map[string]any{}})
	want("sendToDevice", st, body, 200)
	st, body = call("GET", "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device", token, nil)
	if st != 404 || body["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("dehydrated_device through nginx: %d %v, want the key server's 404 M_NOT_FOUND (none)", st, body)
	}

	// sliding sync (syncapi)
	st, body = call("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0", token, map[string]any{})
	want("sliding sync", st, body, 200)

	// pushserver
	st, body = call("GET", "/_matrix/client/v3/pushrules/", token, nil)
	want("pushrules", st, body, 200)
	if _, ok := body["global"]; !ok {
		t.Fatalf("pushrules through nginx: %v", body)
	}
	st, body = call("GET", "/_matrix/client/v3/pushers", token, nil)
	want("pushers", st, body, 200)
	st, body = call("GET", "/_matrix/client/v3/notifications", token, nil)
	want("notifications", st, body, 200)
	st, body = call("POST", "/_matrix/client/v3/pushers/set", token, map[string]any{"kind": "http"})
	if st != 400 || body["errcode"] == "M_UNRECOGNIZED" {
		t.Fatalf("pushers/set through nginx with a bad body: %d %v, want the push API's 400", st, body)
	}

	// mediaapi: an upload and its download.
	req, err := http.NewRequest("POST", base+"/_matrix/media/v3/upload?filename=a.txt", strings.NewReader("media through nginx"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var up bytes.Buffer
	_, _ = up.ReadFrom(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(up.String(), "mxc://localhost/") {
		t.Fatalf("media upload through nginx: %d %s", resp.StatusCode, up.String())
	}
	mxc := regexp.MustCompile(`mxc://localhost/([A-Za-z0-9_-]+)`).FindStringSubmatch(up.String())[1]
	req, _ = http.NewRequest("GET", base+"/_matrix/client/v1/media/download/localhost/"+mxc, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var down bytes.Buffer
	_, _ = down.ReadFrom(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || down.String() != "media through nginx" {
		t.Fatalf("media download through nginx: %d %q", resp.StatusCode, down.String())
	}
	// The federation media endpoint reaches the media process, which
	// refuses an unsigned request (not the 404 of another process).
	st, body = call("GET", "/_matrix/federation/v1/media/download/"+mxc, "", nil)
	if st != 401 {
		t.Fatalf("federation media download through nginx without a signature: %d %v, want the media API's 401", st, body)
	}

	// appservice: the ping endpoint's process refuses a user's token
	// (not the 404 of another process).
	st, body = call("POST", "/_matrix/client/v1/appservice/none/ping", token, map[string]any{})
	if st == 404 && body["errcode"] == "M_UNRECOGNIZED" || st == 200 {
		t.Fatalf("appservice ping through nginx: %d %v, want the application service API's refusal", st, body)
	}

	// federationapi
	st, body = call("GET", "/_matrix/key/v2/server", "", nil)
	want("key/v2/server", st, body, 200)
	if body["server_name"] != "localhost" {
		t.Fatalf("key/v2/server through nginx: %v", body)
	}
	st, body = call("GET", "/_matrix/federation/v1/version", "", nil)
	want("federation version", st, body, 200)
}
