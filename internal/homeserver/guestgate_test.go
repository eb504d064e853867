package homeserver_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// guestAllowedRoutes are the endpoints a guest may call, whichever
// component serves them: the spec's lists (client-server-api, "Guest
// Access", "Client behaviour") for the endpoints Myelin serves, and the
// additions each component's list documents (the /join/{roomIdOrAlias}
// join, /capabilities, /voip/turnServer, sliding sync, /keys/changes).
// Written here again, not read from the components, so that a list that
// grows or shrinks fails TestGuestGateEveryRoute.
var guestAllowedRoutes = map[string]bool{
	// clientapi: retrieving events.
	"GET /_matrix/client/v3/rooms/{roomId}/state":                        true,
	"GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}":            true,
	"GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}":              true,
	"GET /_matrix/client/v3/rooms/{roomId}/messages":                     true,
	"GET /_matrix/client/v3/rooms/{roomId}/members":                      true,
	"GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}":            true,
	"GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/":           true,
	"GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}": true,
	"GET /_matrix/client/v3/rooms/{roomId}/initialSync":                  true,
	"GET /_matrix/client/v3/events":                                      true,
	// clientapi: sending events.
	"POST /_matrix/client/v3/rooms/{roomId}/join":                        true,
	"POST /_matrix/client/v3/rooms/{roomId}/leave":                       true,
	"POST /_matrix/client/v3/join/{roomIdOrAlias}":                       true,
	"PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}":     true,
	"PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}":            true,
	"PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/":           true,
	"PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}": true,
	// clientapi: account maintenance, and the additions.
	"PUT /_matrix/client/v3/profile/{userId}/{keyName}":    true,
	"DELETE /_matrix/client/v3/profile/{userId}/{keyName}": true,
	"GET /_matrix/client/v3/devices":                       true,
	"GET /_matrix/client/v3/devices/{deviceId}":            true,
	"PUT /_matrix/client/v3/devices/{deviceId}":            true,
	"GET /_matrix/client/v3/account/whoami":                true,
	"GET /_matrix/client/v3/capabilities":                  true,
	"GET /_matrix/client/v3/voip/turnServer":               true,
	// syncapi.
	"GET /_matrix/client/v3/sync":                                      true,
	"POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync": true,
	// keyserver.
	"POST /_matrix/client/v3/keys/upload":                     true,
	"POST /_matrix/client/v3/keys/query":                      true,
	"POST /_matrix/client/v3/keys/claim":                      true,
	"GET /_matrix/client/v3/keys/changes":                     true,
	"PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}": true,
	// mediaapi.
	"GET /_matrix/client/v1/media/download/{serverName}/{mediaId}":            true,
	"GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}": true,
	"GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}":           true,
}

// ownTokenRoutes take a token that is not a user's and check it
// themselves; a guest's token is refused there as any user's is.
var ownTokenRoutes = map[string]string{
	// Spec: only the application service's as_token; a user's token is
	// 403 M_FORBIDDEN.
	"POST /_matrix/client/v1/appservice/{appserviceId}/ping": "M_FORBIDDEN",
}

// guestGateServer is a server with guests on and TURN open to them, a
// regular user alice, a guest, a room the guest has joined and a PNG
// alice uploaded.
type guestGateServer struct {
	srv                  *testserver.Server
	alice, guest         gateUser
	room, event, mediaID string
	aliceMediaServerName string
}

type gateUser struct{ id, token, device string }

func startGuestGateServer(t *testing.T, engine storage.Engine) *guestGateServer {
	t.Helper()
	srv := testserver.Start(t, engine, func(c *config.Config) {
		c.ClientAPI.GuestAccess = true
		c.ClientAPI.TURN.AllowGuests = true
	})
	g := &guestGateServer{srv: srv, aliceMediaServerName: "localhost"}
	g.alice = g.register(t, "", map[string]any{"username": "alice", "password": "alice's long password", "auth": map[string]any{"type": "m.login.dummy"}})
	g.guest = g.register(t, "?kind=guest", map[string]any{})
	_, body := g.call(t, "POST", "/_matrix/client/v3/createRoom", g.alice.token, `{"preset": "public_chat"}`, 200)
	g.room = body["room_id"].(string)
	rp := "/_matrix/client/v3/rooms/" + url.PathEscape(g.room)
	_, body = g.call(t, "PUT", rp+"/state/m.room.guest_access/", g.alice.token, `{"guest_access": "can_join"}`, 200)
	g.event = body["event_id"].(string)
	g.call(t, "POST", rp+"/join", g.guest.token, `{}`, 200)
	status, body := g.raw(t, "POST", "/_matrix/media/v3/upload?filename=a.png", g.alice.token, "image/png", pngBytes(t))
	if status != 200 {
		t.Fatalf("alice's upload: %d %v", status, body)
	}
	mxc, _ := body["content_uri"].(string)
	g.mediaID = mxc[strings.LastIndex(mxc, "/")+1:]
	return g
}

func (g *guestGateServer) register(t *testing.T, query string, req map[string]any) gateUser {
	t.Helper()
	raw, _ := json.Marshal(req)
	_, body := g.call(t, "POST", "/_matrix/client/v3/register"+query, "", string(raw), 200)
	return gateUser{id: body["user_id"].(string), token: body["access_token"].(string), device: body["device_id"].(string)}
}

// call makes a JSON request and fails the test unless the status is
// want (0: any).
func (g *guestGateServer) call(t *testing.T, method, path, token, body string, want int) (int, map[string]any) {
	t.Helper()
	status, out := g.raw(t, method, path, token, "application/json", []byte(body))
	if want != 0 && status != want {
		t.Fatalf("%s %s: %d %v, want %d", method, path, status, out, want)
	}
	return status, out
}

// raw makes a request and returns its status and, when the answer is a
// JSON object, the object (else nil).
func (g *guestGateServer) raw(t *testing.T, method, path, token, contentType string, body []byte) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, g.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func pngBytes(t *testing.T) []byte {
	img := image.NewRGBA(image.Rect(0, 0, 64, 48))
	for x := range 64 {
		img.Set(x, x%48, color.RGBA{R: 200, A: 255})
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// writes returns the number of rows in every table, and on SQLite the
// writer's commit count, to show that requests wrote nothing.
func (g *guestGateServer) writes(t *testing.T) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	db := g.srv.HS.DB
	list := "SELECT name FROM sqlite_master WHERE type = 'table'"
	if db.Engine() == storage.Postgres {
		list = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
	}
	// Less the idle checkpointer's own commits, which may come at any time.
	out := map[string]int64{"(sqlite commits)": db.CommitCount() - db.WALRestarts()}
	rows, err := db.Reader().Query(ctx, list)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, name)
	}
	rows.Close()
	if len(tables) < 20 {
		t.Fatalf("only %d tables found: %v", len(tables), tables)
	}
	for _, name := range tables {
		var n int64
		if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM "`+name+`"`).Scan(&n); err != nil {
			t.Fatalf("counting %s: %v", name, err)
		}
		out[name] = n
	}
	return out
}

func sameWrites(t *testing.T, what string, before, after map[string]int64) {
	t.Helper()
	for name, n := range after {
		if before[name] != n {
			t.Errorf("%s: %s went from %d to %d", what, name, before[name], n)
		}
	}
}

// paramValue fills a route parameter for user u's request number i.
func (g *guestGateServer) paramValue(name string, u gateUser, i int) string {
	switch name {
	case "roomId", "roomIdOrAlias":
		return url.PathEscape(g.room)
	case "eventId":
		return url.PathEscape(g.event)
	case "userId":
		return url.PathEscape(u.id)
	case "keyName":
		return "displayname"
	case "eventType":
		return "m.room.message"
	case "txnId":
		return fmt.Sprintf("walk%d", i)
	case "deviceId":
		return "NOSUCHDEVICE"
	case "serverName":
		return g.aliceMediaServerName
	case "mediaId":
		return g.mediaID
	case "fileName":
		return "a.png"
	case "roomAlias":
		return url.PathEscape("#nosuchalias:localhost")
	}
	return "x"
}

var routeParam = regexp.MustCompile(`\{([^}:]+)(:[^}]*)?\}`)

// path fills the route's parameters; a request gets a few harmless
// query parameters (thumbnail size, no long poll).
func (g *guestGateServer) path(route string, u gateUser, i int) string {
	p := routeParam.ReplaceAllStringFunc(route, func(m string) string {
		return g.paramValue(routeParam.FindStringSubmatch(m)[1], u, i)
	})
	return p + "?timeout=0&width=32&height=32&dir=b"
}

type walkedRoute struct{ method, pattern string }

// clientRoutes walks the server's router: every endpoint a client might
// call (the federation and key APIs, which serve servers, left out).
func clientRoutes(t *testing.T, srv *testserver.Server) []walkedRoute {
	t.Helper()
	routes, ok := srv.HS.Handler().(chi.Routes)
	if !ok {
		t.Fatalf("the handler is a %T, not a chi router", srv.HS.Handler())
	}
	var out []walkedRoute
	err := chi.Walk(routes, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if strings.HasPrefix(route, "/_matrix/federation/") || strings.HasPrefix(route, "/_matrix/key/") || route == "/metrics" {
			return nil
		}
		out = append(out, walkedRoute{method, route})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(out, func(a, b walkedRoute) int { return strings.Compare(a.method+a.pattern, b.method+b.pattern) })
	return out
}

func errcode(body map[string]any) string {
	c, _ := body["errcode"].(string)
	return c
}

// TestGuestGateEveryRoute walks every client endpoint the server's router
// serves. An endpoint that needs a user's access token (one that answers
// a request without a token 401 M_MISSING_TOKEN) must answer a guest 403
// M_GUEST_ACCESS_FORBIDDEN, writing nothing, unless it is in
// guestAllowedRoutes (then it must not) or ownTokenRoutes; an endpoint
// added to any component is thus refused to guests until it is listed
// here and in its component's list. A regular user is never answered
// M_GUEST_ACCESS_FORBIDDEN.
// Spec: client-server-api, "Guest Access", "Client behaviour".
func TestGuestGateEveryRoute(t *testing.T) {
	for _, engine := range []storage.Engine{storage.SQLite, storage.Postgres} {
		t.Run(string(engine), func(t *testing.T) {
			g := startGuestGateServer(t, engine)
			routes := clientRoutes(t, g.srv)
			if len(routes) < 150 {
				t.Fatalf("only %d routes walked", len(routes))
			}
			var guarded, allowed, refused []walkedRoute
			for i, r := range routes {
				status, body := g.call(t, r.method, g.path(r.pattern, g.alice, i), "", `{}`, 0)
				if status == http.StatusUnauthorized && errcode(body) == "M_MISSING_TOKEN" {
					guarded = append(guarded, r)
				}
			}
			seen := map[string]bool{}
			for _, r := range guarded {
				seen[r.method+" "+r.pattern] = true
			}
			for key := range guestAllowedRoutes {
				if !seen[key] {
					t.Errorf("%s is listed as open to guests but is not served behind an access token", key)
				}
			}

			// The refused endpoints first, and nothing may be written.
			before := g.writes(t)
			for i, r := range guarded {
				key := r.method + " " + r.pattern
				if guestAllowedRoutes[key] {
					allowed = append(allowed, r)
					continue
				}
				status, body := g.call(t, r.method, g.path(r.pattern, g.guest, i), g.guest.token, `{}`, 0)
				want := "M_GUEST_ACCESS_FORBIDDEN"
				if code, ok := ownTokenRoutes[key]; ok {
					want = code
				}
				if status != http.StatusForbidden || errcode(body) != want {
					t.Errorf("guest: %s: %d %v, want 403 %s (list it in guestAllowedRoutes if guests may call it)", key, status, body, want)
				}
				refused = append(refused, r)
			}
			sameWrites(t, "the guest's refused requests", before, g.writes(t))

			for i, r := range allowed {
				status, body := g.call(t, r.method, g.path(r.pattern, g.guest, i), g.guest.token, `{}`, 0)
				if errcode(body) == "M_GUEST_ACCESS_FORBIDDEN" || status == http.StatusUnauthorized || status >= 500 {
					t.Errorf("guest: %s %s: %d %v, want the handler's answer", r.method, r.pattern, status, body)
				}
			}
			for i, r := range guarded {
				if r.pattern == "/_matrix/client/v3/logout" || r.pattern == "/_matrix/client/v3/logout/all" {
					continue // alice's token must outlive the walk
				}
				status, body := g.call(t, r.method, g.path(r.pattern, g.alice, i), g.alice.token, `{}`, 0)
				if errcode(body) == "M_GUEST_ACCESS_FORBIDDEN" || errcode(body) == "M_UNKNOWN_TOKEN" || status >= 500 {
					t.Errorf("alice: %s %s: %d %v", r.method, r.pattern, status, body)
				}
			}
			t.Logf("%d client routes, %d need a token: %d open to guests, %d refused", len(routes), len(guarded), len(allowed), len(refused))
		})
	}
}

// TestGuestGateComponents: on the endpoints of syncapi, keyserver,
// mediaapi and pushserver (and clientapi's filters) outside the guest
// lists, a guest's well-formed request is answered 403
// M_GUEST_ACCESS_FORBIDDEN and writes nothing (no filter, pusher, push
// rule, backup version or media row; on SQLite not even a commit),
// while alice's same request succeeds; on the endpoints the lists open,
// the guest succeeds.
// Spec: client-server-api, "Guest Access", "Client behaviour".
func TestGuestGateComponents(t *testing.T) {
	for _, engine := range []storage.Engine{storage.SQLite, storage.Postgres} {
		t.Run(string(engine), func(t *testing.T) {
			g := startGuestGateServer(t, engine)
			const v3 = "/_matrix/client/v3"
			curveKey := base64.RawStdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
			type request struct {
				method, path, contentType, body string
			}
			pusher := `{"kind": "http", "app_id": "org.example.app", "pushkey": "key", "app_display_name": "App",
				"device_display_name": "Phone", "lang": "en", "data": {"url": "https://push.example.org/_matrix/push/v1/notify"}}`
			refused := func(u gateUser) []request {
				me := url.PathEscape(u.id)
				return []request{
					{"POST", v3 + "/user/" + me + "/filter", "application/json", `{"room": {"timeline": {"limit": 10}}}`},
					{"POST", v3 + "/pushers/set", "application/json", pusher},
					{"PUT", v3 + "/pushrules/global/override/myrule", "application/json", `{"actions": ["notify"], "conditions": []}`},
					{"PUT", v3 + "/pushrules/global/override/.m.rule.master/enabled", "application/json", `{"enabled": true}`},
					{"GET", v3 + "/pushrules/", "", ""},
					{"GET", v3 + "/notifications", "", ""},
					{"POST", v3 + "/room_keys/version", "application/json", `{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "` + curveKey + `"}}`},
					{"POST", "/_matrix/media/v3/upload?filename=b.png", "image/png", string(pngBytes(t))},
					{"POST", "/_matrix/media/v1/create", "application/json", `{}`},
					{"GET", "/_matrix/client/v1/media/config", "", ""},
					// An old client's r0 path reaches the same gate.
					{"POST", "/_matrix/client/r0/room_keys/version", "application/json", `{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "` + curveKey + `"}}`},
				}
			}
			before := g.writes(t)
			for _, r := range refused(g.guest) {
				status, body := g.raw(t, r.method, r.path, g.guest.token, r.contentType, []byte(r.body))
				if status != http.StatusForbidden || errcode(body) != "M_GUEST_ACCESS_FORBIDDEN" {
					t.Errorf("guest: %s %s: %d %v, want 403 M_GUEST_ACCESS_FORBIDDEN", r.method, r.path, status, body)
				}
			}
			sameWrites(t, "the guest's refused requests", before, g.writes(t))
			for _, r := range refused(g.alice) {
				if status, body := g.raw(t, r.method, r.path, g.alice.token, r.contentType, []byte(r.body)); status != http.StatusOK {
					t.Errorf("alice: %s %s: %d %v, want 200", r.method, r.path, status, body)
				}
			}
			after := g.writes(t)
			for _, table := range []string{"filters", "pushers", "push_rules", "keyserver_backup_versions", "media"} {
				if _, ok := after[table]; !ok {
					t.Errorf("no table %s (renamed?)", table)
				} else if after[table] <= before[table] {
					t.Errorf("alice's requests left %s at %d rows", table, after[table])
				}
			}

			// The endpoints open to guests.
			_, body := g.call(t, "GET", v3+"/sync?timeout=0", g.guest.token, "", 200)
			since, _ := body["next_batch"].(string)
			if _, ok := body["rooms"].(map[string]any)["join"].(map[string]any)[g.room]; !ok {
				t.Errorf("the guest's /sync has no joined room %s: %v", g.room, body["rooms"])
			}
			g.call(t, "POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0", g.guest.token,
				`{"lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 1}}}`, 200)
			_, body = g.call(t, "POST", v3+"/keys/upload", g.guest.token, `{"one_time_keys": {"curve25519:AAAAAQ": "`+curveKey+`"}}`, 200)
			if n, _ := body["one_time_key_counts"].(map[string]any)["curve25519"].(float64); n != 1 {
				t.Errorf("the guest's key upload: %v", body)
			}
			_, body = g.call(t, "POST", v3+"/keys/claim", g.alice.token,
				`{"one_time_keys": {"`+g.guest.id+`": {"`+g.guest.device+`": "curve25519"}}}`, 200)
			if !strings.Contains(fmt.Sprint(body), curveKey) {
				t.Errorf("alice cannot claim the guest's one-time key: %v", body)
			}
			g.call(t, "POST", v3+"/keys/query", g.guest.token, `{"device_keys": {"`+g.alice.id+`": []}}`, 200)
			g.call(t, "POST", v3+"/keys/claim", g.guest.token, `{"one_time_keys": {"`+g.alice.id+`": {"`+g.alice.device+`": "signed_curve25519"}}}`, 200)
			g.call(t, "GET", v3+"/keys/changes?from="+url.QueryEscape(since)+"&to="+url.QueryEscape(since), g.guest.token, "", 200)
			g.call(t, "PUT", v3+"/sendToDevice/m.test/guest1", g.guest.token, `{"messages": {"`+g.alice.id+`": {"*": {"hello": "alice"}}}}`, 200)
			_, body = g.call(t, "GET", v3+"/sync?timeout=0", g.alice.token, "", 200)
			if !strings.Contains(fmt.Sprint(body["to_device"]), "hello:alice") {
				t.Errorf("alice did not receive the guest's to-device message: %v", body["to_device"])
			}
			media := "/_matrix/client/v1/media"
			for _, p := range []string{"/download/localhost/" + g.mediaID, "/download/localhost/" + g.mediaID + "/a.png", "/thumbnail/localhost/" + g.mediaID + "?width=32&height=32"} {
				req, _ := http.NewRequest("GET", g.srv.URL+media+p, nil)
				req.Header.Set("Authorization", "Bearer "+g.guest.token)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				raw, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if _, err := png.Decode(bytes.NewReader(raw)); resp.StatusCode != 200 || err != nil {
					t.Errorf("guest: GET %s: %d, %d bytes (%v)", media+p, resp.StatusCode, len(raw), err)
				}
			}
		})
	}
}
