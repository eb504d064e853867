package appservice_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// legacyService is an application service written to an older draft of
// the spec: it serves the legacy routes (/transactions/{txnId},
// /users/{userId}, /rooms/{alias}, /_matrix/app/unstable/thirdparty/*)
// and answers every /_matrix/app/v1 path with v1Status, or, with
// v1Status 0, by closing the connection without an answer.
type legacyService struct {
	id, as, hs string
	v1Status   int
	srv        *httptest.Server
	mu         sync.Mutex
	v1, legacy []string // "METHOD path" of each request, in order
	badAuth    int
	txnEvents  []string // event IDs received on /transactions
	onUser     func(userID string) bool
	onAlias    func(alias string) bool
}

func newLegacyService(t *testing.T, id string, v1Status int) *legacyService {
	f := &legacyService{id: id, as: id + "-as", hs: id + "-hs", v1Status: v1Status}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *legacyService) serve(w http.ResponseWriter, r *http.Request) {
	path := r.URL.EscapedPath()
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	if strings.HasPrefix(path, "/_matrix/app/v1/") {
		f.v1 = append(f.v1, r.Method+" "+path)
		f.mu.Unlock()
		if f.v1Status == 0 {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		w.WriteHeader(f.v1Status)
		_, _ = fmt.Fprintf(w, `{"errcode":"M_UNRECOGNIZED","error":"status %d"}`, f.v1Status)
		return
	}
	f.legacy = append(f.legacy, r.Method+" "+path)
	// The legacy drafts authenticated with access_token; the header is
	// sent too.
	if r.URL.Query().Get("access_token") != f.hs || r.Header.Get("Authorization") != "Bearer "+f.hs {
		f.badAuth++
		f.mu.Unlock()
		w.WriteHeader(http.StatusForbidden)
		return
	}
	onUser, onAlias := f.onUser, f.onAlias
	f.mu.Unlock()
	answer := func(ok bool, body string) {
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			body = `{"errcode":"M_NOT_FOUND"}`
		}
		_, _ = w.Write([]byte(body))
	}
	tp := "/_matrix/app/unstable/thirdparty"
	q := r.URL.Query()
	switch {
	case r.Method == http.MethodPut && strings.HasPrefix(path, "/transactions/"):
		var b struct {
			Events []map[string]any `json:"events"`
		}
		_ = json.Unmarshal(body, &b)
		f.mu.Lock()
		for _, ev := range b.Events {
			f.txnEvents = append(f.txnEvents, fmt.Sprint(ev["event_id"]))
		}
		f.mu.Unlock()
		answer(true, `{}`)
	case r.Method == http.MethodGet && strings.HasPrefix(path, "/users/"):
		userID, _ := url.PathUnescape(strings.TrimPrefix(path, "/users/"))
		answer(onUser != nil && onUser(userID), `{}`)
	case r.Method == http.MethodGet && strings.HasPrefix(path, "/rooms/"):
		alias, _ := url.PathUnescape(strings.TrimPrefix(path, "/rooms/"))
		answer(onAlias != nil && onAlias(alias), `{}`)
	case path == tp+"/protocol/irc":
		answer(true, fmt.Sprintf(`{"user_fields":["nickname"],"location_fields":["channel"],"icon":"mxc://example.org/irc","field_types":{},
			"instances":[{"network_id":"%s_net","desc":"%s","fields":{}}]}`, f.id, f.id))
	case path == tp+"/user/irc":
		answer(q.Get("nickname") == "bob", fmt.Sprintf(`[{"userid":"@%s_bob:localhost","protocol":"irc","fields":{"nickname":"bob"}}]`, f.id))
	case path == tp+"/location/irc":
		answer(q.Get("channel") == "#chan", fmt.Sprintf(`[{"alias":"#%s_chan:localhost","protocol":"irc","fields":{"channel":"#chan"}}]`, f.id))
	case path == tp+"/user":
		answer(q.Get("userid") == "@"+f.id+"_bob:localhost", fmt.Sprintf(`[{"userid":"@%s_bob:localhost","protocol":"irc","fields":{"nickname":"bob"}}]`, f.id))
	case path == tp+"/location":
		answer(q.Get("alias") == "#"+f.id+"_chan:localhost", fmt.Sprintf(`[{"alias":"#%s_chan:localhost","protocol":"irc","fields":{"channel":"#chan"}}]`, f.id))
	default:
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errcode":"M_UNRECOGNIZED"}`))
	}
}

// take returns and forgets the requests seen on each kind of path.
func (f *legacyService) take() (v1, legacy []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v1, legacy = f.v1, f.legacy
	f.v1, f.legacy = nil, nil
	return v1, legacy
}

func (f *legacyService) events() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.txnEvents...)
}

func withLegacyServices(t *testing.T, services ...*legacyService) func(*config.Config) {
	dir := t.TempDir()
	var files []string
	for i, f := range services {
		reg := fmt.Sprintf(`id: %s
url: %s
as_token: %s
hs_token: %s
sender_localpart: %s_bot
rate_limited: false
protocols: [irc]
namespaces:
  users:
    - exclusive: true
      regex: "@%s_.*:localhost"
  aliases:
    - exclusive: true
      regex: "#%s_.*:localhost"
  rooms: []
`, f.id, f.srv.URL, f.as, f.hs, f.id, f.id, f.id)
		name := filepath.Join(dir, fmt.Sprintf("%02d_%s.yaml", i, f.id))
		if err := os.WriteFile(name, []byte(reg), 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, name)
	}
	return func(c *config.Config) {
		c.AppService.ConfigFiles = files
		c.AppService.MinBackoff = config.Duration(30 * time.Millisecond)
		c.AppService.MaxBackoff = config.Duration(100 * time.Millisecond)
	}
}

// TestAppServiceLegacyRoutes: services that answer the /_matrix/app/v1
// paths with an error status (404 and 500: any status that is not a
// success) are asked again on the legacy routes, for transactions, user
// and alias queries and every third-party lookup, with the hs_token as
// the legacy access_token parameter too; once a legacy route answered, the
// service's next requests of that family go there directly. A service
// whose v1 path gives no HTTP answer at all (connection closed) is never
// asked on a legacy route, and the ping has no legacy route.
// Spec: application-service-api, "Legacy routes".
func TestAppServiceLegacyRoutes(t *testing.T) {
	old404 := newLegacyService(t, "oldnf", http.StatusNotFound)
	old500 := newLegacyService(t, "oldie", http.StatusInternalServerError)
	cut := newLegacyService(t, "cut", 0)
	all := []*legacyService{old404, old500, cut}
	testserver.ForEachEngine(t, withLegacyServices(t, all...), func(t *testing.T, srv *testserver.Server) {
		v3 := srv.URL + "/_matrix/client/v3"
		tp := v3 + "/thirdparty"
		_, alice := register(t, srv, "alice")
		for _, f := range all {
			f.take()
			f.mu.Lock()
			f.txnEvents, f.onUser, f.onAlias = nil, nil, nil
			f.mu.Unlock()
		}

		// Third-party protocols: both legacy services' instances.
		st, raw := callRaw(t, "GET", tp+"/protocols", alice, nil)
		var protocols map[string]struct {
			Instances []map[string]any `json:"instances"`
		}
		if st != 200 || json.Unmarshal(raw, &protocols) != nil {
			t.Fatalf("protocols: %d %s", st, raw)
		}
		var ids []string
		for _, inst := range protocols["irc"].Instances {
			ids = append(ids, fmt.Sprint(inst["instance_id"]))
		}
		if fmt.Sprint(ids) != "[oldnf|oldnf_net oldie|oldie_net]" {
			t.Fatalf("irc instances %v (%s)", ids, raw)
		}
		for _, f := range []*legacyService{old404, old500} {
			v1, legacy := f.take()
			if fmt.Sprint(v1) != "[GET /_matrix/app/v1/thirdparty/protocol/irc]" || fmt.Sprint(legacy) != "[GET /_matrix/app/unstable/thirdparty/protocol/irc]" {
				t.Fatalf("%s was asked %v, then %v", f.id, v1, legacy)
			}
		}
		// No HTTP status: no fallback.
		if v1, legacy := cut.take(); len(v1) != 1 || len(legacy) != 0 {
			t.Fatalf("cut was asked %v, then %v", v1, legacy)
		}

		// Each lookup, answered from the legacy routes only now.
		for _, c := range []struct{ path, key, want string }{
			{"/user/irc?nickname=bob", "userid", "[@oldnf_bob:localhost @oldie_bob:localhost]"},
			{"/location/irc?channel=%23chan", "alias", "[#oldnf_chan:localhost #oldie_chan:localhost]"},
			{"/user?userid=" + url.QueryEscape("@oldie_bob:localhost"), "userid", "[@oldie_bob:localhost]"},
			{"/location?alias=" + url.QueryEscape("#oldnf_chan:localhost"), "alias", "[#oldnf_chan:localhost]"},
		} {
			st, raw := callRaw(t, "GET", tp+c.path, alice, nil)
			var results []map[string]any
			if st != 200 || json.Unmarshal(raw, &results) != nil {
				t.Fatalf("%s: %d %s", c.path, st, raw)
			}
			var got []string
			for _, r := range results {
				got = append(got, fmt.Sprint(r[c.key]))
			}
			if fmt.Sprint(got) != c.want {
				t.Fatalf("%s: %v, want %v", c.path, got, c.want)
			}
			want := "/_matrix/app/unstable/thirdparty" + strings.SplitN(c.path, "?", 2)[0]
			for _, f := range []*legacyService{old404, old500} {
				v1, legacy := f.take()
				if len(v1) != 0 || fmt.Sprint(legacy) != "[GET "+want+"]" {
					t.Fatalf("%s: %s was asked %v, then %v", c.path, f.id, v1, legacy)
				}
			}
			if v1, legacy := cut.take(); len(v1) != 1 || len(legacy) != 0 {
				t.Fatalf("%s: cut was asked %v, then %v", c.path, v1, legacy)
			}
		}

		// A user query falls back to /users/{userId}; the service creates
		// the user there, and the profile lookup finds it.
		old404.mu.Lock()
		old404.onUser = func(userID string) bool {
			if userID != "@oldnf_lazy:localhost" {
				return false
			}
			st, body := call(t, "POST", v3+"/register", old404.as, map[string]any{
				"type": "m.login.application_service", "username": "oldnf_lazy", "inhibit_login": true})
			return st == 200 || body["errcode"] == "M_USER_IN_USE"
		}
		old404.mu.Unlock()
		if st, body := call(t, "GET", v3+"/profile/"+url.PathEscape("@oldnf_lazy:localhost"), alice, nil); st != 200 {
			t.Fatalf("profile of a user created on the legacy route: %d %v", st, body)
		}
		if v1, legacy := old404.take(); fmt.Sprint(v1) != "[GET /_matrix/app/v1/users/@oldnf_lazy:localhost]" ||
			fmt.Sprint(legacy) != "[GET /users/@oldnf_lazy:localhost]" {
			t.Fatalf("user query: asked %v, then %v", v1, legacy)
		}
		// An alias query falls back to /rooms/{roomAlias} (500 on v1).
		old500.mu.Lock()
		old500.onAlias = func(alias string) bool {
			if alias != "#oldie_room:localhost" {
				return false
			}
			st, _ := call(t, "POST", v3+"/createRoom", old500.as, map[string]any{"room_alias_name": "oldie_room", "preset": "public_chat"})
			return st == 200
		}
		old500.mu.Unlock()
		st, body := call(t, "GET", v3+"/directory/room/"+url.PathEscape("#oldie_room:localhost"), alice, nil)
		if st != 200 || body["room_id"] == nil {
			t.Fatalf("alias created on the legacy route: %d %v", st, body)
		}

		// Transactions: the room's creation reaches old500 on
		// /transactions/{txnId}. A message in a room of old404's user
		// reaches old404 the same way.
		waitFor(t, "the room's events on the legacy transaction route", func() bool {
			return len(old500.events()) > 0
		})
		st, body = call(t, "POST", v3+"/createRoom?user_id="+url.QueryEscape("@oldnf_lazy:localhost"), old404.as, map[string]any{})
		if st != 200 {
			t.Fatalf("createRoom as oldnf_lazy: %d %v", st, body)
		}
		st, body = call(t, "PUT", v3+"/rooms/"+url.PathEscape(body["room_id"].(string))+"/send/m.room.message/t1?user_id="+url.QueryEscape("@oldnf_lazy:localhost"),
			old404.as, map[string]any{"msgtype": "m.text", "body": "hi"})
		if st != 200 {
			t.Fatalf("send: %d %v", st, body)
		}
		eventID := body["event_id"].(string)
		waitFor(t, "the message on the legacy transaction route", func() bool {
			return strings.Contains(fmt.Sprint(old404.events()), eventID)
		})
		for _, f := range []*legacyService{old404, old500} {
			v1, legacy := f.take()
			if f == old500 {
				// The alias query, on both paths; then the transactions.
				if len(v1) == 0 || v1[0] != "GET /_matrix/app/v1/rooms/%23oldie_room:localhost" ||
					len(legacy) == 0 || legacy[0] != "GET /rooms/%23oldie_room:localhost" {
					t.Fatalf("alias query: asked %v, then %v", v1, legacy)
				}
				v1, legacy = v1[1:], legacy[1:]
			}
			// The first transaction was tried on v1, then every one went
			// to the legacy route.
			if len(v1) != 1 || !strings.HasPrefix(v1[0], "PUT /_matrix/app/v1/transactions/") {
				t.Fatalf("%s: v1 requests %v", f.id, v1)
			}
			if len(legacy) == 0 || strings.TrimPrefix(legacy[0], "PUT /transactions/") != strings.TrimPrefix(v1[0], "PUT /_matrix/app/v1/transactions/") {
				t.Fatalf("%s: legacy requests %v after %v", f.id, legacy, v1)
			}
			for _, l := range legacy {
				if !strings.HasPrefix(l, "PUT /transactions/") {
					t.Fatalf("%s: legacy requests %v", f.id, legacy)
				}
			}
		}

		// The service that closes the connection on v1 gets its room's
		// events never on a legacy route: its sender retries v1.
		if st, body := call(t, "POST", v3+"/createRoom", cut.as, map[string]any{}); st != 200 {
			t.Fatalf("createRoom as cut's bot: %d %v", st, body)
		}
		waitFor(t, "cut's transaction retried on v1", func() bool {
			cut.mu.Lock()
			defer cut.mu.Unlock()
			n := 0
			for _, r := range cut.v1 {
				if strings.HasPrefix(r, "PUT /_matrix/app/v1/transactions/") {
					n++
				}
			}
			return n >= 2
		})
		if _, legacy := cut.take(); len(legacy) != 0 {
			t.Fatalf("cut was asked on legacy routes: %v", legacy)
		}

		// The ping has no legacy route.
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v1/appservice/oldnf/ping", old404.as, map[string]any{})
		if st != 502 || body["errcode"] != "M_BAD_STATUS" {
			t.Fatalf("ping: %d %v", st, body)
		}
		if v1, legacy := old404.take(); fmt.Sprint(v1) != "[POST /_matrix/app/v1/ping]" || len(legacy) != 0 {
			t.Fatalf("ping: asked %v, then %v", v1, legacy)
		}
		for _, f := range all {
			f.mu.Lock()
			bad := f.badAuth
			f.mu.Unlock()
			if bad != 0 {
				t.Fatalf("%s saw %d legacy requests without its hs_token", f.id, bad)
			}
		}
	})
}
