package homeserver_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// splitCall makes a JSON request and decodes the JSON answer.
func splitCall(t *testing.T, method, u, token string, body any) (int, map[string]any) {
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
	out := map[string]any{}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// asRecorder is an application service that counts, per event ID, the
// times a transaction carried the event.
type asRecorder struct {
	mu     sync.Mutex
	seen   map[string]int
	typing int // m.typing ephemeral events received
}

func (a *asRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/_matrix/app/v1/transactions/") {
		var txn struct {
			Events []struct {
				EventID string `json:"event_id"`
			} `json:"events"`
			Ephemeral []struct {
				Type string `json:"type"`
			} `json:"ephemeral"`
		}
		_ = json.NewDecoder(r.Body).Decode(&txn)
		a.mu.Lock()
		for _, ev := range txn.Events {
			a.seen[ev.EventID]++
		}
		for _, ev := range txn.Ephemeral {
			if ev.Type == "m.typing" {
				a.typing++
			}
		}
		a.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte("{}"))
}

func (a *asRecorder) typings() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.typing
}

func (a *asRecorder) count(eventID string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[eventID]
}

// watcherService starts an application service that records what it is
// sent, and returns it with a config edit registering it (id "watcher",
// interested in every room, receive_ephemeral as asked) and fast retries.
func watcherService(t *testing.T, ephemeral bool) (*asRecorder, func(*config.Config)) {
	t.Helper()
	rec := &asRecorder{seen: map[string]int{}}
	as := httptest.NewServer(rec)
	t.Cleanup(as.Close)
	dir := t.TempDir()
	reg := `id: watcher
url: ` + as.URL + `
as_token: watcher-as-token
hs_token: watcher-hs-token
sender_localpart: watcher
receive_ephemeral: ` + strconv.FormatBool(ephemeral) + `
namespaces:
  users: []
  rooms:
    - exclusive: false
      regex: "!.*"
`
	if err := os.WriteFile(filepath.Join(dir, "watcher.yaml"), []byte(reg), 0o600); err != nil {
		t.Fatal(err)
	}
	return rec, func(c *config.Config) {
		c.AppService.ConfigFiles = []string{dir}
		c.AppService.MinBackoff = config.Duration(30 * time.Millisecond)
		c.AppService.MaxBackoff = config.Duration(100 * time.Millisecond)
	}
}

// TestSplitComponents runs a split deployment of two processes on one
// PostgreSQL database and Redis: A runs every component but the sync
// API, B only the sync API. A client registers, sends and types through
// A and syncs through B: B's /sync sees the message and the typing (held
// in memory per process, applied by each from the shared typing log on
// Redis). Each process answers 404
// M_UNRECOGNIZED on the routes of the components it does not run, and
// the application service senders, a singleton, run only in A: the
// service receives the event once, and the typing change once (a
// sender in B would push it too: every process applies every typing
// change).
func TestSplitComponents(t *testing.T) {
	rec, withAS := watcherService(t, true)
	a, b := testserver.StartSplitWith(t, func(c *config.Config) {
		withAS(c)
		c.Global.Components = []string{"clientapi", "federationapi", "keyserver", "mediaapi", "pushserver", "appservice"}
	}, func(c *config.Config) {
		withAS(c)
		c.Global.Components = []string{"syncapi"}
	})

	// Routes: each process serves only its components' paths.
	st, body := splitCall(t, "POST", b.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "x", "password": "a long password here", "auth": map[string]any{"type": "m.login.dummy"}})
	if st != 404 || body["errcode"] != "M_UNRECOGNIZED" {
		t.Fatalf("register on the sync-only process: %d %v, want 404 M_UNRECOGNIZED", st, body)
	}
	st, body = splitCall(t, "POST", a.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "alice's long password", "auth": map[string]any{"type": "m.login.dummy"}})
	if st != 200 {
		t.Fatalf("register on A: %d %v", st, body)
	}
	token, userID := body["access_token"].(string), body["user_id"].(string)
	st, body = splitCall(t, "GET", a.URL+"/_matrix/client/v3/sync?timeout=0", token, nil)
	if st != 404 || body["errcode"] != "M_UNRECOGNIZED" {
		t.Fatalf("sync on the process without the sync API: %d %v, want 404 M_UNRECOGNIZED", st, body)
	}
	st, body = splitCall(t, "POST", a.URL+"/_matrix/client/v3/createRoom", token, map[string]any{"preset": "private_chat"})
	if st != 200 {
		t.Fatalf("createRoom on A: %d %v", st, body)
	}
	roomID := body["room_id"].(string)

	st, body = splitCall(t, "GET", b.URL+"/_matrix/client/v3/sync?timeout=0", token, nil)
	if st != 200 {
		t.Fatalf("initial sync on B: %d %v", st, body)
	}
	since := body["next_batch"].(string)

	// Typing through A wakes and shows in B's long poll.
	type result struct {
		st   int
		body map[string]any
	}
	poll := func(since string) chan result {
		done := make(chan result, 1)
		go func() {
			st, body := splitCall(t, "GET", b.URL+"/_matrix/client/v3/sync?timeout=20000&since="+url.QueryEscape(since), token, nil)
			done <- result{st, body}
		}()
		time.Sleep(300 * time.Millisecond) // let the long poll start waiting
		return done
	}
	done := poll(since)
	st, body = splitCall(t, "PUT", a.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/typing/"+url.PathEscape(userID), token, map[string]any{"typing": true, "timeout": 30000})
	if st != 200 {
		t.Fatalf("typing on A: %d %v", st, body)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("B's long poll did not wake within 10 s of the typing on A")
	}
	if r.st != 200 {
		t.Fatalf("sync on B: %d %v", r.st, r.body)
	}
	if typers := typingIn(r.body, roomID); len(typers) != 1 || typers[0] != userID {
		t.Fatalf("B's sync shows typing %v in %s, want [%s]: %v", typers, roomID, userID, r.body)
	}
	since = r.body["next_batch"].(string)

	// A message sent through A shows in B's long poll.
	done = poll(since)
	st, body = splitCall(t, "PUT", a.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/t1", token, map[string]any{"msgtype": "m.text", "body": "hello from A"})
	if st != 200 {
		t.Fatalf("send on A: %d %v", st, body)
	}
	eventID := body["event_id"].(string)
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("B's long poll did not wake within 10 s of the message sent on A")
	}
	if !timelineHas(r.body, roomID, eventID) {
		t.Fatalf("B's sync lacks %s: %v", eventID, r.body)
	}

	// The application service gets the event once, from A's sender.
	deadline := time.Now().Add(10 * time.Second)
	for rec.count(eventID) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // room for a second sender to deliver it too
	if n := rec.count(eventID); n != 1 {
		t.Fatalf("the application service received %s %d times, want once", eventID, n)
	}
	// The typing stream is held in memory by each process (and relayed
	// to every one): a sender in each process would push each change
	// once per process.
	if n := rec.typings(); n != 1 {
		t.Fatalf("the application service received %d m.typing, want the one of the single typing change", n)
	}
}

// typingIn returns the user IDs of the m.typing event of roomID in a
// /sync response.
func typingIn(body map[string]any, roomID string) []string {
	join, _ := body["rooms"].(map[string]any)["join"].(map[string]any)
	room, _ := join[roomID].(map[string]any)
	eph, _ := room["ephemeral"].(map[string]any)
	events, _ := eph["events"].([]any)
	for _, e := range events {
		ev, _ := e.(map[string]any)
		if ev["type"] != "m.typing" {
			continue
		}
		var out []string
		ids, _ := ev["content"].(map[string]any)["user_ids"].([]any)
		for _, id := range ids {
			s, _ := id.(string)
			out = append(out, s)
		}
		return out
	}
	return nil
}

// timelineHas says whether roomID's timeline in a /sync response holds
// eventID.
func timelineHas(body map[string]any, roomID, eventID string) bool {
	join, _ := body["rooms"].(map[string]any)["join"].(map[string]any)
	room, _ := join[roomID].(map[string]any)
	tl, _ := room["timeline"].(map[string]any)
	events, _ := tl["events"].([]any)
	for _, e := range events {
		if ev, _ := e.(map[string]any); ev["event_id"] == eventID {
			return true
		}
	}
	return false
}

// TestSplitSingletonLease runs two processes with the same components,
// the application service among them, on one PostgreSQL database and
// Redis: the senders run in one process at a time (they hold the
// appservice lease), so the service gets each event once; once the
// process holding the lease stops, the other takes over and delivers the
// next event.
func TestSplitSingletonLease(t *testing.T) {
	rec, withAS := watcherService(t, false)
	edit := func(c *config.Config) {
		withAS(c)
		c.Global.Components = []string{"clientapi", "appservice"}
	}
	a, b := testserver.StartSplitWith(t, edit, edit)
	holds := func(s *testserver.Server) bool { return slices.Contains(s.HS.HeldLeases(), "appservice") }
	deadline := time.Now().Add(5 * time.Second)
	for !holds(a) && !holds(b) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if holds(a) == holds(b) {
		t.Fatalf("A holds the appservice lease: %v, B: %v; want exactly one", holds(a), holds(b))
	}
	leader, standby := a, b
	if holds(b) {
		leader, standby = b, a
	}

	st, body := splitCall(t, "POST", standby.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "alice's long password", "auth": map[string]any{"type": "m.login.dummy"}})
	if st != 200 {
		t.Fatalf("register: %d %v", st, body)
	}
	token := body["access_token"].(string)
	st, body = splitCall(t, "POST", standby.URL+"/_matrix/client/v3/createRoom", token, map[string]any{"preset": "private_chat"})
	if st != 200 {
		t.Fatalf("createRoom: %d %v", st, body)
	}
	roomID := body["room_id"].(string)
	send := func(base, txn string) string {
		t.Helper()
		st, body := splitCall(t, "PUT", base+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+txn, token, map[string]any{"msgtype": "m.text", "body": txn})
		if st != 200 {
			t.Fatalf("send %s: %d %v", txn, st, body)
		}
		return body["event_id"].(string)
	}
	waitDelivered := func(eventID string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for rec.count(eventID) == 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if rec.count(eventID) == 0 {
			t.Fatalf("the application service never received %s", eventID)
		}
	}
	first := []string{send(leader.URL, "leader1"), send(standby.URL, "standby1")}
	for _, id := range first {
		waitDelivered(id)
	}
	time.Sleep(2 * time.Second) // room for a second sender to deliver them too
	for _, id := range first {
		if n := rec.count(id); n != 1 {
			t.Fatalf("the application service received %s %d times, want once", id, n)
		}
	}

	// The lease holder stops; the standby takes over.
	leader.Stop()
	next := send(standby.URL, "standby2")
	waitDelivered(next)
	time.Sleep(time.Second)
	if n := rec.count(next); n != 1 {
		t.Fatalf("after the takeover the application service received %s %d times, want once", next, n)
	}
	if !holds(standby) {
		t.Fatal("the standby delivered without holding the lease")
	}
}

// TestSplitTypingAcrossSyncProcesses runs two processes that both serve
// /sync and take typing changes (clientapi and syncapi in each) on one
// PostgreSQL database and Redis, as behind a load balancer: a client
// whose successive /sync requests alternate between them sees each
// typing change exactly once, whichever process took it in, and each
// process accepts the tokens the other issued. A timeout ends a
// notification once for everyone.
func TestSplitTypingAcrossSyncProcesses(t *testing.T) {
	both := func(c *config.Config) { c.Global.Components = []string{"clientapi", "syncapi"} }
	a, b := testserver.StartSplitWith(t, func(c *config.Config) {}, both)
	register := func(name string) (token, userID string) {
		t.Helper()
		st, body := splitCall(t, "POST", a.URL+"/_matrix/client/v3/register", "", map[string]any{"username": name, "password": name + "'s long password", "auth": map[string]any{"type": "m.login.dummy"}})
		if st != 200 {
			t.Fatalf("register %s: %d %v", name, st, body)
		}
		return body["access_token"].(string), body["user_id"].(string)
	}
	alice, aliceID := register("alice")
	bob, bobID := register("bob")
	st, body := splitCall(t, "POST", a.URL+"/_matrix/client/v3/createRoom", alice, map[string]any{"preset": "public_chat"})
	if st != 200 {
		t.Fatalf("createRoom: %d %v", st, body)
	}
	roomID := body["room_id"].(string)
	if st, body := splitCall(t, "POST", b.URL+"/_matrix/client/v3/join/"+url.PathEscape(roomID), bob, map[string]any{}); st != 200 {
		t.Fatalf("bob joining: %d %v", st, body)
	}
	servers := map[string]string{"A": a.URL, "B": b.URL}
	typing := func(on, token, userID string, typing bool, timeoutMS int) {
		t.Helper()
		st, body := splitCall(t, "PUT", servers[on]+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/typing/"+url.PathEscape(userID), token, map[string]any{"typing": typing, "timeout": timeoutMS})
		if st != 200 {
			t.Fatalf("typing on %s: %d %v", on, st, body)
		}
	}
	// The client is alice's; since is her token.
	st, body = splitCall(t, "GET", b.URL+"/_matrix/client/v3/sync?timeout=0", alice, nil)
	if st != 200 {
		t.Fatalf("initial sync on B: %d %v", st, body)
	}
	since := body["next_batch"].(string)
	// syncUntil syncs on one process with since until the room's typing
	// shows (or the long poll ends), and returns what it showed.
	sync := func(on string, timeoutMS int) (typers []string, shown bool) {
		t.Helper()
		st, body := splitCall(t, "GET", servers[on]+"/_matrix/client/v3/sync?timeout="+strconv.Itoa(timeoutMS)+"&since="+url.QueryEscape(since), alice, nil)
		if st != 200 {
			t.Fatalf("sync on %s with a token of the other process: %d %v", on, st, body)
		}
		since = body["next_batch"].(string)
		typers = typingIn(body, roomID)
		return typers, typingShown(body, roomID)
	}
	// expect syncs on process on until the change shows, then once on
	// the other process, which must not show it again.
	expect := func(step, on string, want ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, shown := sync(on, 2000)
			if shown {
				if strings.Join(got, ",") != strings.Join(want, ",") {
					t.Fatalf("%s: sync on %s shows typing %v, want %v", step, on, got, want)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: sync on %s never showed the typing change", step, on)
			}
		}
		other := map[string]string{"A": "B", "B": "A"}[on]
		if got, shown := sync(other, 500); shown {
			t.Fatalf("%s: the next sync, on %s, shows the typing change again: %v", step, other, got)
		}
	}
	typing("A", alice, aliceID, true, 30000)
	expect("alice starts on A", "B", aliceID)
	typing("B", bob, bobID, true, 30000)
	expect("bob starts on B", "A", aliceID, bobID)
	typing("B", alice, aliceID, false, 0)
	expect("alice stops on B", "B", bobID)
	typing("A", bob, bobID, true, 1500) // renewed with a short timeout
	typing("A", alice, aliceID, true, 30000)
	expect("alice starts again on A", "B", aliceID, bobID)
	expect("bob's notification times out", "A", aliceID)
	// B would end bob's notification itself typingExpiryGrace later had
	// A not: its stop of the ended entry changes nothing, on neither.
	time.Sleep(3 * time.Second)
	for _, on := range []string{"B", "A"} {
		if got, shown := sync(on, 0); shown {
			t.Fatalf("after the timeout, a sync on %s shows typing %v again", on, got)
		}
	}
}

// typingShown says whether a /sync response holds an m.typing event for
// roomID.
func typingShown(body map[string]any, roomID string) bool {
	join, _ := body["rooms"].(map[string]any)["join"].(map[string]any)
	room, _ := join[roomID].(map[string]any)
	eph, _ := room["ephemeral"].(map[string]any)
	events, _ := eph["events"].([]any)
	for _, e := range events {
		if ev, _ := e.(map[string]any); ev["type"] == "m.typing" {
			return true
		}
	}
	return false
}

// TestSplitSyncPresenceAcrossProcesses: a /sync's set_presence=online on
// one process marks the user online even when another process stored
// another presence since this one last stored online (it used to trust
// its memory of that write for a minute and skip the write).
func TestSplitSyncPresenceAcrossProcesses(t *testing.T) {
	a, b := testserver.StartSplitWith(t, func(c *config.Config) {}, func(c *config.Config) {
		c.Global.Components = []string{"clientapi", "syncapi"}
	})
	st, body := splitCall(t, "POST", a.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "alice's long password", "auth": map[string]any{"type": "m.login.dummy"}})
	if st != 200 {
		t.Fatalf("register: %d %v", st, body)
	}
	token, userID := body["access_token"].(string), body["user_id"].(string)
	status := a.URL + "/_matrix/client/v3/presence/" + url.PathEscape(userID) + "/status"
	presence := func() string {
		t.Helper()
		st, body := splitCall(t, "GET", status, token, nil)
		if st != 200 {
			t.Fatalf("GET presence: %d %v", st, body)
		}
		p, _ := body["presence"].(string)
		return p
	}
	syncOnB := func() {
		t.Helper()
		if st, body := splitCall(t, "GET", b.URL+"/_matrix/client/v3/sync?timeout=0&set_presence=online", token, nil); st != 200 {
			t.Fatalf("sync on B: %d %v", st, body)
		}
	}
	syncOnB()
	if p := presence(); p != "online" {
		t.Fatalf("presence after a sync with set_presence=online: %q", p)
	}
	if st, body := splitCall(t, "PUT", status, token, map[string]any{"presence": "unavailable"}); st != 200 {
		t.Fatalf("PUT presence on A: %d %v", st, body)
	}
	if p := presence(); p != "unavailable" {
		t.Fatalf("presence after PUT unavailable: %q", p)
	}
	// Spec: client-server-api, "GET /_matrix/client/v3/sync",
	// set_presence: the client is marked online.
	syncOnB()
	if p := presence(); p != "online" {
		t.Fatalf("presence after a sync on B with set_presence=online: %q, want online", p)
	}
}

// TestSplitTypingTokenPositions: in split mode a token's typing position
// is valid when the shared counter has given it out — also one a single
// process issued before the deployment was split (its clock in
// milliseconds at start, plus its changes: the counter starts at the
// clock) — and refused as from the future (M_INVALID_PARAM) when it has
// not.
func TestSplitTypingTokenPositions(t *testing.T) {
	a, b := testserver.StartSplitWith(t, func(c *config.Config) {}, func(c *config.Config) {
		c.Global.Components = []string{"syncapi"}
	})
	st, body := splitCall(t, "POST", a.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "alice's long password", "auth": map[string]any{"type": "m.login.dummy"}})
	if st != 200 {
		t.Fatalf("register: %d %v", st, body)
	}
	token := body["access_token"].(string)
	st, body = splitCall(t, "GET", b.URL+"/_matrix/client/v3/sync?timeout=0", token, nil)
	if st != 200 {
		t.Fatalf("initial sync: %d %v", st, body)
	}
	fields := strings.Split(strings.TrimPrefix(body["next_batch"].(string), "s"), "_")
	withTyping := func(pos int64) string {
		f := slices.Clone(fields)
		f[3] = strconv.FormatInt(pos, 10) // the typing position (syncapi/token.go)
		return "s" + strings.Join(f, "_")
	}
	earlier := withTyping(time.Now().Add(-time.Hour).UnixMilli())
	st, body = splitCall(t, "GET", b.URL+"/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(earlier), token, nil)
	if st != 200 {
		t.Fatalf("sync with a typing position from before the split: %d %v", st, body)
	}
	future := withTyping(time.Now().Add(24 * time.Hour).UnixMilli())
	st, body = splitCall(t, "GET", b.URL+"/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(future), token, nil)
	if st != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("sync with a typing position never given out: %d %v, want 400 M_INVALID_PARAM", st, body)
	}
}
