package appservice_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// tpService is an application service bridging third-party networks: it
// answers the /_matrix/app/v1/thirdparty/* requests from a table (path →
// status and body, by path and query or by path alone; 404 for the
// rest) and records each request.
type tpService struct {
	id, as, hs string
	protocols  []string
	srv        *httptest.Server
	mu         sync.Mutex
	answers    map[string]tpAnswer
	seen       []tpRequest
	badAuth    int
}

type tpAnswer struct {
	status int
	body   string
}

type tpRequest struct {
	path  string
	query url.Values
}

func newTPService(t *testing.T, id string, protocols []string, answers map[string]tpAnswer) *tpService {
	f := &tpService{id: id, as: id + "-as", hs: id + "-hs", protocols: protocols, answers: answers}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+f.hs {
			f.badAuth++
			w.WriteHeader(http.StatusForbidden)
			return
		}
		if r.Method == http.MethodPut { // transactions: accepted, not recorded
			_, _ = w.Write([]byte("{}"))
			return
		}
		f.seen = append(f.seen, tpRequest{path: r.URL.EscapedPath(), query: r.URL.Query()})
		a, ok := f.answers[r.URL.EscapedPath()+"?"+r.URL.RawQuery]
		if !ok {
			a, ok = f.answers[r.URL.EscapedPath()]
		}
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errcode":"M_NOT_FOUND"}`))
			return
		}
		w.WriteHeader(a.status)
		_, _ = w.Write([]byte(a.body))
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// requests returns the requests seen so far on /_matrix/app/v1 paths, and
// forgets every request seen. The others are the spec's fallbacks to the
// legacy routes after a v1 answer that is not a success (this service
// answers them 404, knowing none; legacy_test.go tests them).
func (f *tpService) requests() []tpRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []tpRequest
	for _, r := range f.seen {
		if strings.HasPrefix(r.path, "/_matrix/app/v1/") {
			out = append(out, r)
		}
	}
	f.seen = nil
	return out
}

// withTPServices registers the services, one file each, in this order.
func withTPServices(t *testing.T, services ...*tpService) func(*config.Config) {
	dir := t.TempDir()
	var files []string
	for i, f := range services {
		protocols, _ := json.Marshal(f.protocols)
		reg := fmt.Sprintf(`id: %s
url: %s
as_token: %s
hs_token: %s
sender_localpart: %s_bot
protocols: %s
namespaces:
  users:
    - exclusive: true
      regex: "@%s_.*:localhost"
  aliases: []
  rooms: []
`, f.id, f.srv.URL, f.as, f.hs, f.id, protocols, f.id)
		name := filepath.Join(dir, fmt.Sprintf("%02d_%s.yaml", i, f.id))
		if err := os.WriteFile(name, []byte(reg), 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, name)
	}
	return func(c *config.Config) {
		c.AppService.ConfigFiles = files
		c.ClientAPI.GuestAccess = true
	}
}

// callRaw makes a request and returns the status and the raw body.
func callRaw(t *testing.T, method, u, token string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// wantError checks an error answer.
func wantError(t *testing.T, what string, st int, body []byte, wantStatus int, wantCode string) {
	t.Helper()
	var e struct {
		Errcode string `json:"errcode"`
	}
	_ = json.Unmarshal(body, &e)
	if st != wantStatus || e.Errcode != wantCode {
		t.Fatalf("%s: %d %s, want %d %s", what, st, body, wantStatus, wantCode)
	}
}

// The IRC protocol object as the first IRC bridge describes it.
const ircProtocol = `{"user_fields":["network","nickname"],"location_fields":["network","channel"],"icon":"mxc://example.org/irc",
"field_types":{"network":{"regexp":"[a-z.]+","placeholder":"irc.example.org"},"nickname":{"regexp":"[^\\s]+","placeholder":"bob"},"channel":{"regexp":"#[^\\s]+","placeholder":"#chan"}},
"instances":[{"network_id":"freenode","desc":"Freenode","fields":{"network":"freenode.net"}},{"network_id":"libera","desc":"Libera","fields":{"network":"libera.chat"}}]}`

// TestThirdPartyLookups: the protocols of every service merged, with
// instance IDs unique per service; lookups asked of the services of that
// protocol only, with the client's fields and without its access token,
// a failing service skipped; reverse lookups asked of every bridge; the
// spec's errors; guests refused.
// Spec: client-server-api, "Third-party Networks"; application-service-api,
// "Third-party Networks".
func TestThirdPartyLookups(t *testing.T) {
	irc1 := newTPService(t, "irc1", []string{"irc", "gitter"}, map[string]tpAnswer{
		"/_matrix/app/v1/thirdparty/protocol/irc": {200, ircProtocol},
		// gitter: registered but unknown to the service (404).
		"/_matrix/app/v1/thirdparty/user/irc":                            {200, `[{"userid":"@irc1_bob:localhost","protocol":"irc","fields":{"network":"freenode","nickname":"bob"}}]`},
		"/_matrix/app/v1/thirdparty/location/irc":                        {200, `[]`},
		"/_matrix/app/v1/thirdparty/location":                            {200, `[{"alias":"#irc1_chan:localhost","protocol":"irc","fields":{"network":"freenode","channel":"#chan"}}]`},
		"/_matrix/app/v1/thirdparty/user?userid=%40irc1_bob%3Alocalhost": {200, `[{"userid":"@irc1_bob:localhost","protocol":"irc","fields":{"nickname":"bob"}}]`},
	})
	irc2 := newTPService(t, "irc2", []string{"irc"}, map[string]tpAnswer{
		"/_matrix/app/v1/thirdparty/protocol/irc": {200, `{"user_fields":["other"],"location_fields":[],"icon":"mxc://example.org/other","field_types":{},
			"instances":[{"network_id":"freenode","desc":"Freenode too","fields":{}},{"desc":"no network_id","fields":{}}]}`},
		// The second result lacks its userid: dropped.
		"/_matrix/app/v1/thirdparty/user/irc":     {200, `[{"userid":"@irc2_bob:localhost","protocol":"irc","fields":{"nickname":"bob"}},{"protocol":"irc","fields":{}}]`},
		"/_matrix/app/v1/thirdparty/location/irc": {200, `[]`},
		"/_matrix/app/v1/thirdparty/location":     {200, `[{"alias":"#irc2_chan:localhost","protocol":"irc","fields":{"channel":"#chan"}}]`},
	})
	// A broken IRC bridge: every answer is a 500 or not JSON.
	broken := newTPService(t, "broken", []string{"irc"}, map[string]tpAnswer{
		"/_matrix/app/v1/thirdparty/protocol/irc":  {500, `{"errcode":"M_UNKNOWN"}`},
		"/_matrix/app/v1/thirdparty/user/irc":      {200, `not json`},
		"/_matrix/app/v1/thirdparty/location/irc":  {500, `{}`},
		"/_matrix/app/v1/thirdparty/location":      {500, `{}`},
		"/_matrix/app/v1/thirdparty/user":          {200, `{"not":"an array"}`},
		"/_matrix/app/v1/thirdparty/protocol/none": {200, `{}`},
	})
	slack := newTPService(t, "slack", []string{"slack"}, map[string]tpAnswer{
		"/_matrix/app/v1/thirdparty/protocol/slack": {200, `{"user_fields":["team","user"],"location_fields":["team","channel"],"icon":"mxc://example.org/slack","field_types":{},
			"instances":[{"network_id":"acme","desc":"ACME","fields":{"team":"acme"}}]}`},
	})
	// A service bridging nothing is never asked.
	plain := newTPService(t, "plain", nil, map[string]tpAnswer{})
	all := []*tpService{irc1, irc2, broken, slack, plain}
	testserver.ForEachEngine(t, withTPServices(t, all...), func(t *testing.T, srv *testserver.Server) {
		tp := srv.URL + "/_matrix/client/v3/thirdparty"
		_, alice := register(t, srv, "alice")
		for _, f := range all {
			f.requests()
		}

		st, raw := callRaw(t, "GET", tp+"/protocols", alice, nil)
		if st != 200 {
			t.Fatalf("protocols: %d %s", st, raw)
		}
		var protocols map[string]struct {
			UserFields []string         `json:"user_fields"`
			Icon       string           `json:"icon"`
			FieldTypes map[string]any   `json:"field_types"`
			Instances  []map[string]any `json:"instances"`
		}
		if err := json.Unmarshal(raw, &protocols); err != nil {
			t.Fatal(err)
		}
		if len(protocols) != 2 {
			t.Fatalf("protocols (want irc and slack; gitter unanswered): %s", raw)
		}
		irc := protocols["irc"]
		// The first answering service's fields (irc1, loaded first), the
		// instances of every answering one, each with an instance_id of
		// its own even where two services share a network_id.
		if !slices.Equal(irc.UserFields, []string{"network", "nickname"}) || irc.Icon != "mxc://example.org/irc" || irc.FieldTypes["channel"] == nil {
			t.Fatalf("irc metadata: %s", raw)
		}
		var ids []string
		for _, inst := range irc.Instances {
			ids = append(ids, fmt.Sprint(inst["instance_id"], "=", inst["network_id"], "=", inst["desc"]))
		}
		if want := []string{"irc1|freenode=freenode=Freenode", "irc1|libera=libera=Libera", "irc2|freenode=freenode=Freenode too"}; !slices.Equal(ids, want) {
			t.Fatalf("irc instances %v, want %v", ids, want)
		}
		if s := protocols["slack"]; len(s.Instances) != 1 || s.Instances[0]["instance_id"] != "slack|acme" || s.Instances[0]["fields"].(map[string]any)["team"] != "acme" {
			t.Fatalf("slack: %s", raw)
		}
		// Each service was asked about its own protocols only.
		for f, want := range map[*tpService][]string{
			irc1:   {"/_matrix/app/v1/thirdparty/protocol/gitter", "/_matrix/app/v1/thirdparty/protocol/irc"},
			irc2:   {"/_matrix/app/v1/thirdparty/protocol/irc"},
			broken: {"/_matrix/app/v1/thirdparty/protocol/irc"},
			slack:  {"/_matrix/app/v1/thirdparty/protocol/slack"},
			plain:  nil,
		} {
			var paths []string
			for _, r := range f.requests() {
				paths = append(paths, r.path)
			}
			slices.Sort(paths)
			if !slices.Equal(paths, want) {
				t.Fatalf("%s was asked %v, want %v", f.id, paths, want)
			}
		}

		st, raw = callRaw(t, "GET", tp+"/protocol/irc", alice, nil)
		var one struct {
			Instances []map[string]any `json:"instances"`
		}
		if st != 200 || json.Unmarshal(raw, &one) != nil || len(one.Instances) != 3 {
			t.Fatalf("protocol/irc: %d %s", st, raw)
		}
		st, raw = callRaw(t, "GET", tp+"/protocol/nosuch", alice, nil)
		wantError(t, "unknown protocol", st, raw, 404, "M_NOT_FOUND")
		st, raw = callRaw(t, "GET", tp+"/protocol/gitter", alice, nil)
		wantError(t, "protocol no service answers for", st, raw, 404, "M_NOT_FOUND")

		// A user lookup: the fields go to the IRC services only, without
		// the caller's access token; the results are concatenated, the
		// broken service and the invalid result left out.
		for _, f := range all {
			f.requests()
		}
		st, raw = callRaw(t, "GET", tp+"/user/irc?network=freenode&nickname=bob&access_token="+url.QueryEscape(alice), "", nil)
		var users []map[string]any
		if st != 200 || json.Unmarshal(raw, &users) != nil {
			t.Fatalf("user/irc: %d %s", st, raw)
		}
		if len(users) != 2 || users[0]["userid"] != "@irc1_bob:localhost" || users[1]["userid"] != "@irc2_bob:localhost" {
			t.Fatalf("user/irc results: %s", raw)
		}
		for _, f := range []*tpService{irc1, irc2, broken} {
			reqs := f.requests()
			if len(reqs) != 1 || reqs[0].path != "/_matrix/app/v1/thirdparty/user/irc" {
				t.Fatalf("%s was asked %v", f.id, reqs)
			}
			if q := reqs[0].query; q.Get("network") != "freenode" || q.Get("nickname") != "bob" || len(q) != 2 {
				t.Fatalf("%s got the query %v", f.id, q)
			}
		}
		for _, f := range []*tpService{slack, plain} {
			if reqs := f.requests(); len(reqs) != 0 {
				t.Fatalf("%s (not an IRC bridge) was asked %v", f.id, reqs)
			}
		}
		// Nothing found: 404, as the spec has it.
		st, raw = callRaw(t, "GET", tp+"/location/irc?channel=%23none", alice, nil)
		wantError(t, "location with no result", st, raw, 404, "M_NOT_FOUND")
		st, raw = callRaw(t, "GET", tp+"/location/nosuch", alice, nil)
		wantError(t, "location of an unknown protocol", st, raw, 404, "M_NOT_FOUND")
		st, raw = callRaw(t, "GET", tp+"/user/nosuch?x=1", alice, nil)
		wantError(t, "user of an unknown protocol", st, raw, 404, "M_NOT_FOUND")

		// Reverse lookups go to every service that bridges a protocol.
		for _, f := range all {
			f.requests()
		}
		st, raw = callRaw(t, "GET", tp+"/location?alias="+url.QueryEscape("#irc1_chan:localhost"), alice, nil)
		var locations []map[string]any
		if st != 200 || json.Unmarshal(raw, &locations) != nil || len(locations) != 2 ||
			locations[0]["alias"] != "#irc1_chan:localhost" || locations[1]["alias"] != "#irc2_chan:localhost" {
			t.Fatalf("location?alias: %d %s", st, raw)
		}
		for _, f := range []*tpService{irc1, irc2, broken, slack} {
			reqs := f.requests()
			if len(reqs) != 1 || reqs[0].path != "/_matrix/app/v1/thirdparty/location" || reqs[0].query.Get("alias") != "#irc1_chan:localhost" || len(reqs[0].query) != 1 {
				t.Fatalf("%s was asked %v", f.id, reqs)
			}
		}
		if reqs := plain.requests(); len(reqs) != 0 {
			t.Fatalf("a service bridging nothing was asked %v", reqs)
		}
		st, raw = callRaw(t, "GET", tp+"/user?userid="+url.QueryEscape("@irc1_bob:localhost"), alice, nil)
		if st != 200 || json.Unmarshal(raw, &users) != nil || len(users) != 1 || users[0]["fields"].(map[string]any)["nickname"] != "bob" {
			t.Fatalf("user?userid: %d %s", st, raw)
		}
		if reqs := irc1.requests(); len(reqs) != 1 || reqs[0].query.Get("userid") != "@irc1_bob:localhost" {
			t.Fatalf("irc1 was asked %v", reqs)
		}
		st, raw = callRaw(t, "GET", tp+"/user?userid="+url.QueryEscape("@nobody:localhost"), alice, nil)
		wantError(t, "reverse user lookup with no result", st, raw, 404, "M_NOT_FOUND")
		st, raw = callRaw(t, "GET", tp+"/location", alice, nil)
		wantError(t, "location without alias", st, raw, 400, "M_MISSING_PARAM")
		st, raw = callRaw(t, "GET", tp+"/user", alice, nil)
		wantError(t, "user without userid", st, raw, 400, "M_MISSING_PARAM")
		st, raw = callRaw(t, "GET", tp+"/user?userid=bob", alice, nil)
		wantError(t, "user with a bad userid", st, raw, 400, "M_INVALID_PARAM")
		st, raw = callRaw(t, "GET", tp+"/location?alias="+url.QueryEscape("!room:localhost"), alice, nil)
		wantError(t, "location with a bad alias", st, raw, 400, "M_INVALID_PARAM")

		// Without a token: 401; a guest: refused.
		st, raw = callRaw(t, "GET", tp+"/protocols", "", nil)
		wantError(t, "protocols without a token", st, raw, 401, "M_MISSING_TOKEN")
		st, guest := call(t, "POST", srv.URL+"/_matrix/client/v3/register?kind=guest", "", map[string]any{})
		if st != 200 {
			t.Fatalf("guest registration: %d %v", st, guest)
		}
		for _, p := range []string{"/protocols", "/protocol/irc", "/user/irc?nickname=bob", "/location?alias=%23a:localhost"} {
			st, raw = callRaw(t, "GET", tp+p, guest["access_token"].(string), nil)
			wantError(t, "guest "+p, st, raw, 403, "M_GUEST_ACCESS_FORBIDDEN")
		}
		for _, f := range all {
			if f.badAuth != 0 {
				t.Fatalf("%s saw %d requests without its hs_token", f.id, f.badAuth)
			}
		}
	})
}

// TestThirdPartyRoomDirectory: a service publishes rooms in its networks'
// directories with its as_token; /publicRooms lists them for their
// instance (third_party_instance_id), with the homeserver's own list
// (include_all_networks), and never otherwise; the errors.
// Spec: client-server-api, "PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}"
// and "POST /_matrix/client/v3/publicRooms".
func TestThirdPartyRoomDirectory(t *testing.T) {
	irc1 := newTPService(t, "irc1", []string{"irc"}, map[string]tpAnswer{})
	irc2 := newTPService(t, "irc2", []string{"irc"}, map[string]tpAnswer{})
	plain := newTPService(t, "plain", nil, map[string]tpAnswer{})
	testserver.ForEachEngine(t, withTPServices(t, irc1, irc2, plain), func(t *testing.T, srv *testserver.Server) {
		v3 := srv.URL + "/_matrix/client/v3"
		_, alice := register(t, srv, "alice")
		newRoom := func(name string) string {
			st, body := call(t, "POST", v3+"/createRoom", alice, map[string]any{"preset": "public_chat", "name": name})
			if st != 200 {
				t.Fatalf("createRoom: %d %v", st, body)
			}
			return body["room_id"].(string)
		}
		ordinary, bridged, other := newRoom("ordinary"), newRoom("bridged"), newRoom("other")
		if st, body := call(t, "PUT", v3+"/directory/list/room/"+url.PathEscape(ordinary), alice, map[string]any{"visibility": "public"}); st != 200 {
			t.Fatalf("publish: %d %v", st, body)
		}
		publish := func(token, network, roomID string, body any) (int, []byte) {
			return callRaw(t, "PUT", v3+"/directory/list/appservice/"+url.PathEscape(network)+"/"+url.PathEscape(roomID), token, body)
		}
		if st, raw := publish(irc1.as, "freenode", bridged, map[string]any{"visibility": "public"}); st != 200 || string(raw) != "{}" {
			t.Fatalf("network publish: %d %s", st, raw)
		}
		if st, raw := publish(irc1.as, "libera", other, map[string]any{"visibility": "public"}); st != 200 {
			t.Fatalf("network publish: %d %s", st, raw)
		}
		// Twice is fine.
		if st, raw := publish(irc1.as, "freenode", bridged, map[string]any{"visibility": "public"}); st != 200 {
			t.Fatalf("network publish again: %d %s", st, raw)
		}
		st, raw := publish(alice, "freenode", other, map[string]any{"visibility": "public"})
		wantError(t, "a user publishing in a network", st, raw, 403, "M_FORBIDDEN")
		st, raw = publish(irc1.as, "freenode", other, map[string]any{})
		wantError(t, "no visibility", st, raw, 400, "M_MISSING_PARAM")
		st, raw = publish(irc1.as, "freenode", other, map[string]any{"visibility": "hidden"})
		wantError(t, "bad visibility", st, raw, 400, "M_INVALID_PARAM")
		st, raw = publish(irc1.as, "freenode", "!unknown:localhost", map[string]any{"visibility": "public"})
		wantError(t, "unknown room", st, raw, 404, "M_NOT_FOUND")
		st, raw = publish(irc1.as, "freenode", "not-a-room", map[string]any{"visibility": "public"})
		wantError(t, "bad room ID", st, raw, 400, "M_INVALID_PARAM")
		st, raw = publish("", "freenode", other, map[string]any{"visibility": "public"})
		wantError(t, "no token", st, raw, 401, "M_MISSING_TOKEN")

		list := func(method string, q map[string]any) []string {
			t.Helper()
			var st int
			var body map[string]any
			if method == "GET" {
				v := url.Values{}
				for k, x := range q {
					v.Set(k, fmt.Sprint(x))
				}
				st, body = call(t, "GET", v3+"/publicRooms?"+v.Encode(), alice, nil)
			} else {
				st, body = call(t, "POST", v3+"/publicRooms", alice, q)
			}
			if st != 200 {
				t.Fatalf("publicRooms %v: %d %v", q, st, body)
			}
			var names []string
			for _, r := range body["chunk"].([]any) {
				names = append(names, r.(map[string]any)["name"].(string))
			}
			slices.Sort(names)
			return names
		}
		for _, method := range []string{"GET", "POST"} {
			for _, c := range []struct {
				q    map[string]any
				want []string
			}{
				{map[string]any{}, []string{"ordinary"}},
				{map[string]any{"include_all_networks": false}, []string{"ordinary"}},
				{map[string]any{"third_party_instance_id": "irc1|freenode"}, []string{"bridged"}},
				{map[string]any{"third_party_instance_id": "irc1|libera"}, []string{"other"}},
				// Another service's instance of the same network: its own list.
				{map[string]any{"third_party_instance_id": "irc2|freenode"}, nil},
				{map[string]any{"include_all_networks": true}, []string{"bridged", "ordinary", "other"}},
			} {
				if got := list(method, c.q); !slices.Equal(got, c.want) {
					t.Fatalf("%s publicRooms %v = %v, want %v", method, c.q, got, c.want)
				}
			}
		}
		for _, q := range []map[string]any{
			{"third_party_instance_id": "nosuch|freenode"},
			{"third_party_instance_id": "irc1"},
			{"third_party_instance_id": "irc1|"},
			{"third_party_instance_id": "plain|freenode"}, // bridges no protocol
			{"third_party_instance_id": "irc1|freenode", "include_all_networks": true},
		} {
			st, raw := callRaw(t, "POST", v3+"/publicRooms", alice, q)
			wantError(t, fmt.Sprint("POST publicRooms ", q), st, raw, 400, "M_INVALID_PARAM")
		}
		st, raw = callRaw(t, "GET", v3+"/publicRooms?third_party_instance_id=nosuch%7Cx", "", nil)
		wantError(t, "GET publicRooms with an unknown instance", st, raw, 400, "M_INVALID_PARAM")
		st, raw = callRaw(t, "GET", v3+"/publicRooms?include_all_networks=maybe", "", nil)
		wantError(t, "GET publicRooms with a bad include_all_networks", st, raw, 400, "M_INVALID_PARAM")

		// The network lists are the services' own: the homeserver's
		// visibility of the room is untouched, and unpublishing empties
		// the network's list.
		if st, body := call(t, "GET", v3+"/directory/list/room/"+url.PathEscape(bridged), alice, nil); st != 200 || body["visibility"] != "private" {
			t.Fatalf("homeserver visibility of the bridged room: %d %v", st, body)
		}
		if st, raw := publish(irc1.as, "freenode", bridged, map[string]any{"visibility": "private"}); st != 200 {
			t.Fatalf("network unpublish: %d %s", st, raw)
		}
		if got := list("POST", map[string]any{"third_party_instance_id": "irc1|freenode"}); got != nil {
			t.Fatalf("after unpublishing: %v", got)
		}
		if got := list("POST", map[string]any{"include_all_networks": true}); !slices.Equal(got, []string{"ordinary", "other"}) {
			t.Fatalf("all networks after unpublishing: %v", got)
		}

		// Upgrading a room moves its network listings to the new room.
		st, body := call(t, "POST", v3+"/rooms/"+url.PathEscape(other)+"/upgrade", alice, map[string]any{"new_version": "11"})
		if st != 200 {
			t.Fatalf("upgrade: %d %v", st, body)
		}
		st, body = call(t, "POST", v3+"/publicRooms", alice, map[string]any{"third_party_instance_id": "irc1|libera"})
		chunk, _ := body["chunk"].([]any)
		if st != 200 || len(chunk) != 1 || chunk[0].(map[string]any)["room_id"] != replacementRoom(t, v3, alice, other) {
			t.Fatalf("network listing after the upgrade: %d %v", st, body)
		}
	})
}

// replacementRoom is the room that replaced roomID (its m.room.tombstone's
// replacement_room).
func replacementRoom(t *testing.T, v3, token, roomID string) string {
	t.Helper()
	st, body := call(t, "GET", v3+"/rooms/"+url.PathEscape(roomID)+"/state/m.room.tombstone/", token, nil)
	if st != 200 || body["replacement_room"] == nil {
		t.Fatalf("tombstone of %s: %d %v", roomID, st, body)
	}
	return body["replacement_room"].(string)
}
