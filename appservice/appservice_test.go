package appservice_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
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
	"github.com/myelin-chat/myelin/storage"
)

const (
	asToken = "as-token-secret"
	hsToken = "hs-token-secret"
)

// fakeService is an application service on httptest: it records what the
// homeserver sends and answers as told.
type fakeService struct {
	t   *testing.T
	srv *httptest.Server
	mu  sync.Mutex
	// txns are the transactions received, in order (retries included).
	txns []txn
	// fail makes the transaction endpoint answer 500.
	fail bool
	// onUserQuery and onAliasQuery, if set, run for a user or alias
	// query and say whether to answer 200.
	onUserQuery  func(userID string) bool
	onAliasQuery func(alias string) bool
	pings        []string
	badAuth      int
	// hs is the hs_token the service expects (hsToken unless set before
	// the homeserver starts).
	hs string
}

type txn struct {
	ID     string
	Events []map[string]any
	// Ephemeral is the body's ephemeral array; HasEphemeral says whether
	// the key was there at all.
	Ephemeral    []map[string]any
	HasEphemeral bool
	// Legacy is the body's de.sorunome.msc2409.ephemeral array.
	Legacy []map[string]any
	// ToDevice is the body's de.sorunome.msc2409.to_device array.
	ToDevice []map[string]any
	// DeviceLists, OTKCounts and Fallback are the body's MSC3202 keys
	// (org.matrix.msc3202.device_lists, …device_one_time_keys_count,
	// …device_unused_fallback_key_types); nil when absent.
	DeviceLists *deviceLists
	OTKCounts   map[string]map[string]map[string]int
	Fallback    map[string]map[string][]string
	// Body is the request body as received.
	Body string
}

func newFakeService(t *testing.T) *fakeService {
	f := &fakeService{t: t, hs: hsToken}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeService) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	if r.Header.Get("Authorization") != "Bearer "+f.hs {
		f.badAuth++
		f.mu.Unlock()
		w.WriteHeader(http.StatusForbidden)
		return
	}
	f.mu.Unlock()
	body, _ := io.ReadAll(r.Body)
	switch {
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/_matrix/app/v1/transactions/"):
		var b struct {
			Events    []map[string]any  `json:"events"`
			Ephemeral *[]map[string]any `json:"ephemeral"`
			Legacy    []map[string]any  `json:"de.sorunome.msc2409.ephemeral"`
			ToDevice  []map[string]any  `json:"de.sorunome.msc2409.to_device"`
			// MSC3202.
			DeviceLists *deviceLists                         `json:"org.matrix.msc3202.device_lists"`
			OTKCounts   map[string]map[string]map[string]int `json:"org.matrix.msc3202.device_one_time_keys_count"`
			Fallback    map[string]map[string][]string       `json:"org.matrix.msc3202.device_unused_fallback_key_types"`
		}
		if err := json.Unmarshal(body, &b); err != nil {
			f.t.Errorf("transaction body: %v", err)
		}
		tx := txn{ID: strings.TrimPrefix(r.URL.Path, "/_matrix/app/v1/transactions/"), Events: b.Events, Body: string(body), Legacy: b.Legacy, ToDevice: b.ToDevice,
			DeviceLists: b.DeviceLists, OTKCounts: b.OTKCounts, Fallback: b.Fallback}
		if b.Ephemeral != nil {
			tx.Ephemeral, tx.HasEphemeral = *b.Ephemeral, true
		}
		f.mu.Lock()
		f.txns = append(f.txns, tx)
		fail := f.fail
		f.mu.Unlock()
		if fail {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("{}"))
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/_matrix/app/v1/users/"):
		userID, _ := url.PathUnescape(strings.TrimPrefix(r.URL.EscapedPath(), "/_matrix/app/v1/users/"))
		if f.onUserQuery != nil && f.onUserQuery(userID) {
			_, _ = w.Write([]byte("{}"))
			return
		}
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errcode":"M_NOT_FOUND"}`))
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/_matrix/app/v1/rooms/"):
		alias, _ := url.PathUnescape(strings.TrimPrefix(r.URL.EscapedPath(), "/_matrix/app/v1/rooms/"))
		if f.onAliasQuery != nil && f.onAliasQuery(alias) {
			_, _ = w.Write([]byte("{}"))
			return
		}
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errcode":"M_NOT_FOUND"}`))
	case r.Method == http.MethodPost && r.URL.Path == "/_matrix/app/v1/ping":
		var b struct {
			TransactionID string `json:"transaction_id"`
		}
		_ = json.Unmarshal(body, &b)
		f.mu.Lock()
		f.pings = append(f.pings, b.TransactionID)
		f.mu.Unlock()
		_, _ = w.Write([]byte("{}"))
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

func (f *fakeService) snapshot() []txn {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]txn(nil), f.txns...)
}

func (f *fakeService) setFail(v bool) {
	f.mu.Lock()
	f.fail = v
	f.mu.Unlock()
}

// waitFor polls cond for up to 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// withService registers one service (URL from fs) in a fresh directory.
func withService(t *testing.T, fs *fakeService) func(*config.Config) {
	dir := t.TempDir()
	reg := fmt.Sprintf(`id: bridge
url: %s
as_token: %s
hs_token: %s
sender_localpart: _bridge_bot
rate_limited: false
namespaces:
  users:
    - exclusive: true
      regex: "@_bridge_.*:localhost"
  aliases:
    - exclusive: true
      regex: "#_bridge_.*:localhost"
  rooms: []
`, fs.srv.URL, asToken, hsToken)
	if err := os.WriteFile(filepath.Join(dir, "bridge.yaml"), []byte(reg), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(c *config.Config) {
		c.AppService.ConfigFiles = []string{dir}
		c.AppService.MinBackoff = config.Duration(30 * time.Millisecond)
		c.AppService.MaxBackoff = config.Duration(100 * time.Millisecond)
	}
}

// call makes a JSON request and decodes the JSON answer (callRaw).
func call(t *testing.T, method, u, token string, body any) (int, map[string]any) {
	t.Helper()
	status, raw := callRaw(t, method, u, token, body)
	out := map[string]any{}
	_ = json.Unmarshal(raw, &out)
	return status, out
}

func register(t *testing.T, srv *testserver.Server, username string) (userID, token string) {
	t.Helper()
	st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/register", "", map[string]any{
		"username": username, "password": "correct horse battery staple",
		"auth": map[string]any{"type": "m.login.dummy"},
	})
	if st != 200 {
		t.Fatalf("register %s: %d %v", username, st, body)
	}
	return body["user_id"].(string), body["access_token"].(string)
}

// Spec: application-service-api, "Server admin style permissions" and
// "Identity assertion".
func TestAppServiceRegistrationAndIdentityAssertion(t *testing.T) {
	fs := newFakeService(t)
	testserver.ForEachEngine(t, withService(t, fs), func(t *testing.T, srv *testserver.Server) {
		v3 := srv.URL + "/_matrix/client/v3"
		// The service registers a user of its namespace: no UIA, no password.
		st, body := call(t, "POST", v3+"/register", asToken, map[string]any{
			"type": "m.login.application_service", "username": "_bridge_alice"})
		if st != 200 || body["user_id"] != "@_bridge_alice:localhost" || body["access_token"] == nil {
			t.Fatalf("AS registration: %d %v", st, body)
		}
		st, body = call(t, "POST", v3+"/register", asToken, map[string]any{
			"type": "m.login.application_service", "username": "_bridge_bob", "inhibit_login": true})
		if st != 200 || body["user_id"] != "@_bridge_bob:localhost" || body["access_token"] != nil {
			t.Fatalf("AS registration with inhibit_login: %d %v", st, body)
		}
		// Outside its namespace: M_EXCLUSIVE.
		st, body = call(t, "POST", v3+"/register", asToken, map[string]any{
			"type": "m.login.application_service", "username": "carol"})
		if st != 400 || body["errcode"] != "M_EXCLUSIVE" {
			t.Fatalf("AS registration outside namespace: %d %v", st, body)
		}
		// Without or with a wrong as_token: 401.
		st, body = call(t, "POST", v3+"/register", "", map[string]any{
			"type": "m.login.application_service", "username": "_bridge_x"})
		if st != 401 || body["errcode"] != "M_MISSING_TOKEN" {
			t.Fatalf("AS registration without token: %d %v", st, body)
		}
		st, body = call(t, "POST", v3+"/register", "nope", map[string]any{
			"type": "m.login.application_service", "username": "_bridge_x"})
		if st != 401 || body["errcode"] != "M_UNKNOWN_TOKEN" {
			t.Fatalf("AS registration with a wrong token: %d %v", st, body)
		}
		// Others may not take a name of an exclusive namespace.
		st, body = call(t, "POST", v3+"/register", "", map[string]any{
			"username": "_bridge_mallory", "password": "correct horse battery staple",
			"auth": map[string]any{"type": "m.login.dummy"}})
		if st != 400 || body["errcode"] != "M_EXCLUSIVE" {
			t.Fatalf("user registration in exclusive namespace: %d %v", st, body)
		}
		st, body = call(t, "GET", v3+"/register/available?username=_bridge_mallory", "", nil)
		if st != 400 || body["errcode"] != "M_EXCLUSIVE" {
			t.Fatalf("availability in exclusive namespace: %d %v", st, body)
		}

		// Login as a user of the namespace, without a password.
		login := func(token, user string) (int, map[string]any) {
			return call(t, "POST", v3+"/login", token, map[string]any{"type": "m.login.application_service",
				"identifier": map[string]any{"type": "m.id.user", "user": user}})
		}
		if st, body := login(asToken, "_bridge_bob"); st != 200 || body["user_id"] != "@_bridge_bob:localhost" || body["access_token"] == nil {
			t.Fatalf("AS login: %d %v", st, body)
		}
		if st, body := login(asToken, "someone"); st != 400 || body["errcode"] != "M_EXCLUSIVE" {
			t.Fatalf("AS login outside namespace: %d %v", st, body)
		}
		if st, body := login("", "_bridge_bob"); st != 401 || body["errcode"] != "M_MISSING_TOKEN" {
			t.Fatalf("AS login without token: %d %v", st, body)
		}
		if st, body := login(asToken, "_bridge_ghost"); st != 403 || body["errcode"] != "M_FORBIDDEN" {
			t.Fatalf("AS login of an unregistered user: %d %v", st, body)
		}

		// Identity assertion.
		for _, tc := range []struct {
			query, user, errcode string
			status               int
		}{
			{"", "@_bridge_bot:localhost", "", 200},
			{"?user_id=@_bridge_bob:localhost", "@_bridge_bob:localhost", "", 200},
			{"?user_id=@someone:localhost", "", "M_EXCLUSIVE", 403},
			{"?user_id=@_bridge_ghost:localhost", "", "M_FORBIDDEN", 403},
			{"?user_id=@_bridge_bob:localhost&device_id=NOPE", "", "M_UNKNOWN_DEVICE", 400},
			{"?user_id=@_bridge_bob:localhost&org.matrix.msc3202.device_id=NOPE", "", "M_UNKNOWN_DEVICE", 400},
		} {
			st, body := call(t, "GET", v3+"/account/whoami"+tc.query, asToken, nil)
			if st != tc.status || tc.user != "" && body["user_id"] != tc.user || tc.errcode != "" && body["errcode"] != tc.errcode {
				t.Errorf("whoami%s: %d %v, want %d %s %s", tc.query, st, body, tc.status, tc.user, tc.errcode)
			}
		}
		// Without device_id there is no device: whoami leaves it out, and
		// keys cannot be uploaded.
		if st, body := call(t, "GET", v3+"/account/whoami", asToken, nil); st != 200 || body["device_id"] != nil {
			t.Fatalf("whoami without device: %d %v", st, body)
		}
		if st, body := call(t, "POST", v3+"/keys/upload", asToken, map[string]any{}); st != 400 || body["errcode"] != "M_INVALID_PARAM" {
			t.Fatalf("keys/upload without device: %d %v", st, body)
		}
		// A device of the user may be named.
		st, body = call(t, "POST", v3+"/register", asToken, map[string]any{
			"type": "m.login.application_service", "username": "_bridge_dev", "device_id": "DEV1"})
		if st != 200 {
			t.Fatalf("AS registration with device: %d %v", st, body)
		}
		st, body = call(t, "GET", v3+"/account/whoami?user_id=@_bridge_dev:localhost&device_id=DEV1", asToken, nil)
		if st != 200 || body["user_id"] != "@_bridge_dev:localhost" || body["device_id"] != "DEV1" {
			t.Fatalf("whoami with device: %d %v", st, body)
		}

		// v1.17 device management: the service creates (201) and deletes
		// (no UIA) its users' devices, and replaces cross-signing keys
		// without UIA.
		asDev := "?user_id=" + url.QueryEscape("@_bridge_dev:localhost")
		if st, body := call(t, "PUT", v3+"/devices/NEWDEV"+asDev, asToken, map[string]any{"display_name": "bridge"}); st != 201 {
			t.Fatalf("device creation: %d %v", st, body)
		}
		if st, body := call(t, "PUT", v3+"/devices/NEWDEV"+asDev, asToken, map[string]any{"display_name": "renamed"}); st != 200 {
			t.Fatalf("device update: %d %v", st, body)
		}
		if st, body := call(t, "GET", v3+"/devices/NEWDEV"+asDev, asToken, nil); st != 200 || body["display_name"] != "renamed" {
			t.Fatalf("created device: %d %v", st, body)
		}
		if st, body := call(t, "DELETE", v3+"/devices/NEWDEV"+asDev, asToken, map[string]any{}); st != 200 {
			t.Fatalf("device deletion without UIA: %d %v", st, body)
		}
		if st, body := call(t, "GET", v3+"/account/whoami"+asDev+"&device_id=NEWDEV", asToken, nil); st != 400 || body["errcode"] != "M_UNKNOWN_DEVICE" {
			t.Fatalf("deleted device still usable: %d %v", st, body)
		}
		for i := range 2 {
			pub, _, _ := ed25519.GenerateKey(nil)
			key := base64.RawStdEncoding.EncodeToString(pub)
			st, body := call(t, "POST", v3+"/keys/device_signing/upload"+asDev, asToken, map[string]any{
				"master_key": map[string]any{"user_id": "@_bridge_dev:localhost", "usage": []string{"master"},
					"keys": map[string]string{"ed25519:" + key: key}}})
			if st != 200 {
				t.Fatalf("cross-signing upload %d without UIA: %d %v", i, st, body)
			}
		}

		// Exclusive aliases: refused to others, allowed to the service.
		_, aliceToken := register(t, srv, "alice")
		st, body = call(t, "POST", v3+"/createRoom", aliceToken, map[string]any{})
		if st != 200 {
			t.Fatalf("createRoom: %d %v", st, body)
		}
		roomID := body["room_id"].(string)
		st, body = call(t, "PUT", v3+"/directory/room/"+url.PathEscape("#_bridge_room:localhost"), aliceToken, map[string]any{"room_id": roomID})
		if st != 400 || body["errcode"] != "M_EXCLUSIVE" {
			t.Fatalf("alias in exclusive namespace by a user: %d %v", st, body)
		}
		st, body = call(t, "POST", v3+"/createRoom", aliceToken, map[string]any{"room_alias_name": "_bridge_other"})
		if st != 400 || body["errcode"] != "M_EXCLUSIVE" {
			t.Fatalf("createRoom with an exclusive alias: %d %v", st, body)
		}
		st, body = call(t, "POST", v3+"/createRoom", asToken, map[string]any{"room_alias_name": "_bridge_room"})
		if st != 200 {
			t.Fatalf("createRoom with its alias by the service: %d %v", st, body)
		}
		st, body = call(t, "POST", v3+"/createRoom", asToken, map[string]any{"room_alias_name": "general"})
		if st != 400 || body["errcode"] != "M_EXCLUSIVE" {
			t.Fatalf("createRoom with an alias outside the service's namespace: %d %v", st, body)
		}
	})
}

// Spec: application-service-api, "Timestamp massaging".
func TestAppServiceTimestampMassaging(t *testing.T) {
	fs := newFakeService(t)
	testserver.ForEachEngine(t, withService(t, fs), func(t *testing.T, srv *testserver.Server) {
		v3 := srv.URL + "/_matrix/client/v3"
		st, body := call(t, "POST", v3+"/createRoom", asToken, map[string]any{"preset": "public_chat"})
		if st != 200 {
			t.Fatalf("createRoom: %d %v", st, body)
		}
		roomID := url.PathEscape(body["room_id"].(string))
		const ts = 1234567890123
		st, body = call(t, "PUT", fmt.Sprintf("%s/rooms/%s/send/m.room.message/t1?ts=%d", v3, roomID, ts), asToken, map[string]any{"msgtype": "m.text", "body": "old"})
		if st != 200 {
			t.Fatalf("send with ts: %d %v", st, body)
		}
		eventID := body["event_id"].(string)
		st, body = call(t, "GET", v3+"/rooms/"+roomID+"/event/"+url.PathEscape(eventID), asToken, nil)
		if st != 200 || body["origin_server_ts"] != float64(ts) {
			t.Fatalf("massaged event: %d %v", st, body)
		}
		st, body = call(t, "PUT", fmt.Sprintf("%s/rooms/%s/state/m.room.topic/?ts=%d", v3, roomID, ts+1), asToken, map[string]any{"topic": "t"})
		if st != 200 {
			t.Fatalf("state with ts: %d %v", st, body)
		}
		st, body = call(t, "GET", v3+"/rooms/"+roomID+"/event/"+url.PathEscape(body["event_id"].(string)), asToken, nil)
		if st != 200 || body["origin_server_ts"] != float64(ts+1) {
			t.Fatalf("massaged state event: %d %v", st, body)
		}
		st, body = call(t, "PUT", v3+"/rooms/"+roomID+"/send/m.room.message/t2?ts=yesterday", asToken, map[string]any{"msgtype": "m.text", "body": "x"})
		if st != 400 || body["errcode"] != "M_INVALID_PARAM" {
			t.Fatalf("bad ts: %d %v", st, body)
		}
		// A user's ts is ignored: the event has the server's time.
		_, aliceToken := register(t, srv, "alice")
		if st, body := call(t, "POST", v3+"/rooms/"+roomID+"/join", aliceToken, map[string]any{}); st != 200 {
			t.Fatalf("join: %d %v", st, body)
		}
		before := time.Now().UnixMilli()
		st, body = call(t, "PUT", fmt.Sprintf("%s/rooms/%s/send/m.room.message/t3?ts=%d", v3, roomID, ts), aliceToken, map[string]any{"msgtype": "m.text", "body": "now"})
		if st != 200 {
			t.Fatalf("user send with ts: %d %v", st, body)
		}
		st, body = call(t, "GET", v3+"/rooms/"+roomID+"/event/"+url.PathEscape(body["event_id"].(string)), aliceToken, nil)
		if got, _ := body["origin_server_ts"].(float64); st != 200 || int64(got) < before {
			t.Fatalf("user event ts: %d %v (want >= %d)", st, body, before)
		}
	})
}

// Spec: application-service-api, "Pushing events": transactions carry the
// events of the service's namespaces with the hs_token, and a failed one
// is retried with the same txnId, also after a restart.
func TestAppServiceTransactions(t *testing.T) {
	for _, engine := range []storage.Engine{storage.SQLite, storage.Postgres} {
		t.Run(string(engine), func(t *testing.T) { testTransactions(t, engine) })
	}
}

func testTransactions(t *testing.T, engine storage.Engine) {
	fs := newFakeService(t)
	srv := testserver.Start(t, engine, withService(t, fs))
	{
		v3 := srv.URL + "/_matrix/client/v3"
		st, body := call(t, "POST", v3+"/register", asToken, map[string]any{
			"type": "m.login.application_service", "username": "_bridge_alice"})
		if st != 200 {
			t.Fatalf("AS registration: %d %v", st, body)
		}
		bridged := body["access_token"].(string)
		_, bobToken := register(t, srv, "bob")
		// A room of bob's that no bridged user is in: not the service's business.
		st, body = call(t, "POST", v3+"/createRoom", bobToken, map[string]any{})
		if st != 200 {
			t.Fatalf("createRoom: %d %v", st, body)
		}
		private := body["room_id"].(string)
		call(t, "PUT", v3+"/rooms/"+url.PathEscape(private)+"/send/m.room.message/p1", bobToken, map[string]any{"msgtype": "m.text", "body": "private"})

		st, body = call(t, "POST", v3+"/createRoom", bridged, map[string]any{"preset": "public_chat"})
		if st != 200 {
			t.Fatalf("createRoom: %d %v", st, body)
		}
		roomID := body["room_id"].(string)
		if st, body := call(t, "POST", v3+"/rooms/"+url.PathEscape(roomID)+"/join", bobToken, map[string]any{}); st != 200 {
			t.Fatalf("join: %d %v", st, body)
		}
		// Bob is not in a namespace, but a bridged user is in the room.
		st, body = call(t, "PUT", v3+"/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/m1", bobToken, map[string]any{"msgtype": "m.text", "body": "hello bridge"})
		if st != 200 {
			t.Fatalf("send: %d %v", st, body)
		}
		hello := body["event_id"].(string)
		waitFor(t, "bob's message in a transaction", func() bool { return findEvent(fs.snapshot(), hello) != "" })
		for _, tx := range fs.snapshot() {
			for _, ev := range tx.Events {
				if ev["room_id"] == private {
					t.Fatalf("event of an unrelated room pushed: %v", ev)
				}
			}
		}
		ev := eventIn(fs.snapshot(), hello)
		if ev["sender"] != "@bob:localhost" || ev["type"] != "m.room.message" ||
			ev["content"].(map[string]any)["body"] != "hello bridge" || ev["origin_server_ts"] == nil {
			t.Fatalf("pushed event %v", ev)
		}
		if fs.badAuth != 0 {
			t.Fatalf("%d requests without the hs_token", fs.badAuth)
		}

		// The service fails: the same transaction is retried.
		fs.setFail(true)
		st, body = call(t, "PUT", v3+"/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/m2", bobToken, map[string]any{"msgtype": "m.text", "body": "retry me"})
		if st != 200 {
			t.Fatalf("send: %d %v", st, body)
		}
		retried := body["event_id"].(string)
		waitFor(t, "two attempts", func() bool { return countEvent(fs.snapshot(), retried) >= 2 })
		txnID := findEvent(fs.snapshot(), retried)
		for _, tx := range fs.snapshot() {
			if eventInTxn(tx, retried) && tx.ID != txnID {
				t.Fatalf("retry used txnId %s, first attempt %s", tx.ID, txnID)
			}
		}
		if txnID == findEvent(fs.snapshot(), hello) {
			t.Fatal("a new transaction reused an acknowledged txnId")
		}

		// Restart: nothing in memory survives; the pending transaction is
		// sent again with the same txnId once the service recovers.
		srv.Restart(t)
		fs.mu.Lock()
		fs.txns = nil
		fs.mu.Unlock()
		fs.setFail(false)
		waitFor(t, "redelivery after restart", func() bool { return findEvent(fs.snapshot(), retried) != "" })
		if got := findEvent(fs.snapshot(), retried); got != txnID {
			t.Fatalf("after restart the event came in txnId %s, want %s", got, txnID)
		}
		// And acknowledged: it is not sent again.
		n := countEvent(fs.snapshot(), retried)
		st, body = call(t, "PUT", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/m3", bobToken, map[string]any{"msgtype": "m.text", "body": "after"})
		if st != 200 {
			t.Fatalf("send: %d %v", st, body)
		}
		after := body["event_id"].(string)
		waitFor(t, "the next message", func() bool { return findEvent(fs.snapshot(), after) != "" })
		if countEvent(fs.snapshot(), retried) != n {
			t.Fatal("an acknowledged transaction was sent again")
		}
	}
}

func eventInTxn(tx txn, eventID string) bool {
	for _, ev := range tx.Events {
		if ev["event_id"] == eventID {
			return true
		}
	}
	return false
}

// findEvent returns the txnId of the first transaction carrying eventID.
func findEvent(txns []txn, eventID string) string {
	for _, tx := range txns {
		if eventInTxn(tx, eventID) {
			return tx.ID
		}
	}
	return ""
}

func eventIn(txns []txn, eventID string) map[string]any {
	for _, tx := range txns {
		for _, ev := range tx.Events {
			if ev["event_id"] == eventID {
				return ev
			}
		}
	}
	return nil
}

func countEvent(txns []txn, eventID string) int {
	n := 0
	for _, tx := range txns {
		if eventInTxn(tx, eventID) {
			n++
		}
	}
	return n
}

// Spec: client-server-api, "POST /_matrix/client/v1/appservice/{appserviceId}/ping",
// and application-service-api "GET /_matrix/app/v1/users/{userId}".
func TestAppServicePingAndUserQuery(t *testing.T) {
	fs := newFakeService(t)
	testserver.ForEachEngine(t, withService(t, fs), func(t *testing.T, srv *testserver.Server) {
		ping := srv.URL + "/_matrix/client/v1/appservice/bridge/ping"
		st, body := call(t, "POST", ping, asToken, map[string]any{"transaction_id": "p1"})
		if st != 200 || body["duration_ms"] == nil {
			t.Fatalf("ping: %d %v", st, body)
		}
		fs.mu.Lock()
		got := append([]string(nil), fs.pings...)
		fs.mu.Unlock()
		if len(got) == 0 || got[len(got)-1] != "p1" {
			t.Fatalf("service saw pings %v", got)
		}
		if st, body := call(t, "POST", srv.URL+"/_matrix/client/v1/appservice/other/ping", asToken, map[string]any{}); st != 403 || body["errcode"] != "M_FORBIDDEN" {
			t.Fatalf("ping of another service: %d %v", st, body)
		}
		_, aliceToken := register(t, srv, "alice")
		if st, body := call(t, "POST", ping, aliceToken, map[string]any{}); st != 403 || body["errcode"] != "M_FORBIDDEN" {
			t.Fatalf("ping with a user's token: %d %v", st, body)
		}

		// An unknown user of the namespace: the service is asked, creates
		// it, and the profile lookup then succeeds.
		v3 := srv.URL + "/_matrix/client/v3"
		var queried []string
		fs.mu.Lock()
		fs.onUserQuery = func(userID string) bool {
			queried = append(queried, userID)
			if userID != "@_bridge_lazy:localhost" {
				return false
			}
			st, body := call(t, "POST", v3+"/register", asToken, map[string]any{
				"type": "m.login.application_service", "username": "_bridge_lazy", "inhibit_login": true})
			return st == 200 || body["errcode"] == "M_USER_IN_USE"
		}
		fs.mu.Unlock()
		if st, body := call(t, "GET", v3+"/profile/"+url.PathEscape("@_bridge_lazy:localhost"), aliceToken, nil); st != 200 {
			t.Fatalf("profile of a lazily created user: %d %v", st, body)
		}
		if st, body := call(t, "GET", v3+"/profile/"+url.PathEscape("@_bridge_nobody:localhost"), aliceToken, nil); st != 404 {
			t.Fatalf("profile of a user the service does not know: %d %v", st, body)
		}
		if st, _ := call(t, "GET", v3+"/profile/"+url.PathEscape("@stranger:localhost"), aliceToken, nil); st != 404 {
			t.Fatalf("profile of an unknown user outside namespaces: %d", st)
		}
		if len(queried) != 2 || queried[0] != "@_bridge_lazy:localhost" || queried[1] != "@_bridge_nobody:localhost" {
			t.Fatalf("queried %v", queried)
		}

		// An unknown alias of the namespace: the service creates the room.
		var aliasQueries []string
		fs.mu.Lock()
		fs.onAliasQuery = func(alias string) bool {
			aliasQueries = append(aliasQueries, alias)
			if alias != "#_bridge_lazyroom:localhost" {
				return false
			}
			st, _ := call(t, "POST", v3+"/createRoom", asToken, map[string]any{"room_alias_name": "_bridge_lazyroom", "preset": "public_chat"})
			return st == 200
		}
		fs.mu.Unlock()
		st, body = call(t, "GET", v3+"/directory/room/"+url.PathEscape("#_bridge_lazyroom:localhost"), aliceToken, nil)
		if st != 200 || body["room_id"] == nil {
			t.Fatalf("lazily created alias: %d %v", st, body)
		}
		if st, body := call(t, "GET", v3+"/directory/room/"+url.PathEscape("#_bridge_none:localhost"), aliceToken, nil); st != 404 {
			t.Fatalf("alias the service does not know: %d %v", st, body)
		}
		if st, _ := call(t, "GET", v3+"/directory/room/"+url.PathEscape("#elsewhere:localhost"), aliceToken, nil); st != 404 {
			t.Fatalf("unknown alias outside namespaces: %d", st)
		}
		if len(aliasQueries) != 2 || aliasQueries[0] != "#_bridge_lazyroom:localhost" || aliasQueries[1] != "#_bridge_none:localhost" {
			t.Fatalf("alias queries %v", aliasQueries)
		}
	})
}

// rate_limited: false exempts the service's users from the message limit
// that still applies to everyone else.
func TestAppServiceNotRateLimited(t *testing.T) {
	fs := newFakeService(t)
	withAS := withService(t, fs)
	testserver.ForEachEngine(t, func(c *config.Config) {
		withAS(c)
		c.ClientAPI.RateLimits.Enabled = true
		c.ClientAPI.RateLimits.Message.PerSecond = 0.01
		c.ClientAPI.RateLimits.Message.Burst = 2
	}, func(t *testing.T, srv *testserver.Server) {
		v3 := srv.URL + "/_matrix/client/v3"
		_, aliceToken := register(t, srv, "alice")
		st, body := call(t, "POST", v3+"/createRoom", asToken, map[string]any{"preset": "public_chat"})
		if st != 200 {
			t.Fatalf("createRoom: %d %v", st, body)
		}
		roomID := url.PathEscape(body["room_id"].(string))
		if st, body := call(t, "POST", v3+"/rooms/"+roomID+"/join", aliceToken, map[string]any{}); st != 200 {
			t.Fatalf("join: %d %v", st, body)
		}
		for i := range 10 {
			if st, body := call(t, "PUT", fmt.Sprintf("%s/rooms/%s/send/m.room.message/as%d", v3, roomID, i), asToken, map[string]any{"msgtype": "m.text", "body": "x"}); st != 200 {
				t.Fatalf("service message %d: %d %v", i, st, body)
			}
		}
		limited := false
		for i := range 5 {
			st, _ := call(t, "PUT", fmt.Sprintf("%s/rooms/%s/send/m.room.message/u%d", v3, roomID, i), aliceToken, map[string]any{"msgtype": "m.text", "body": "x"})
			limited = limited || st == 429
		}
		if !limited {
			t.Fatal("a user's messages were not rate limited; the test proves nothing")
		}
	})
}

// A service registered with url: null uses the client-server API only:
// nothing is pushed to it and ping answers M_URL_NOT_SET.
// Spec: application-service-api, "Registration" (url) and client-server-api
// "POST /_matrix/client/v1/appservice/{appserviceId}/ping".
func TestAppServiceWithoutURL(t *testing.T) {
	dir := t.TempDir()
	reg := `id: nourl
url: null
as_token: nourl-as
hs_token: nourl-hs
sender_localpart: nourl_bot
namespaces:
  users: []
`
	if err := os.WriteFile(filepath.Join(dir, "nourl.yml"), []byte(reg), 0o600); err != nil {
		t.Fatal(err)
	}
	testserver.ForEachEngine(t, func(c *config.Config) { c.AppService.ConfigFiles = []string{filepath.Join(dir, "nourl.yml")} },
		func(t *testing.T, srv *testserver.Server) {
			st, body := call(t, "POST", srv.URL+"/_matrix/client/v1/appservice/nourl/ping", "nourl-as", map[string]any{})
			if st != 400 || body["errcode"] != "M_URL_NOT_SET" {
				t.Fatalf("ping without url: %d %v", st, body)
			}
			st, body = call(t, "GET", srv.URL+"/_matrix/client/v3/account/whoami", "nourl-as", nil)
			if st != 200 || body["user_id"] != "@nourl_bot:localhost" {
				t.Fatalf("whoami: %d %v", st, body)
			}
			var n int
			if err := srv.HS.DB.Reader().QueryRow(context.Background(), `SELECT COUNT(*) FROM appservice_positions`).Scan(&n); err != nil || n != 0 {
				t.Fatalf("a sender was set up for a service without url: %d %v", n, err)
			}
		})
}
