package appservice_test

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// withEphemeralServices registers three services: "bridge" (fs, users
// @_bridge_*, receive_ephemeral: true and org.matrix.msc3202: true, so
// it receives to-device messages), "plain" (plain, every room, no
// receive_ephemeral) and "legacy" (legacy, every room and the user
// @dave:localhost non-exclusively, only MSC2409's
// de.sorunome.msc2409.push_ephemeral).
func withEphemeralServices(t *testing.T, fs, plain, legacy *fakeService) func(*config.Config) {
	dir := t.TempDir()
	bridge := fmt.Sprintf(`id: bridge
url: %s
as_token: %s
hs_token: %s
sender_localpart: _bridge_bot
rate_limited: false
receive_ephemeral: true
org.matrix.msc3202: true
namespaces:
  users:
    - exclusive: true
      regex: "@_bridge_.*:localhost"
`, fs.srv.URL, asToken, hsToken)
	other := fmt.Sprintf(`id: plain
url: %s
as_token: plain-as
hs_token: %s
sender_localpart: _plain_bot
namespaces:
  rooms:
    - exclusive: false
      regex: ".*"
`, plain.srv.URL, plain.hs)
	old := fmt.Sprintf(`id: legacy
url: %s
as_token: legacy-as
hs_token: %s
sender_localpart: _legacy_bot
de.sorunome.msc2409.push_ephemeral: true
namespaces:
  users:
    - exclusive: false
      regex: "@dave:localhost"
  rooms:
    - exclusive: false
      regex: ".*"
`, legacy.srv.URL, legacy.hs)
	for name, body := range map[string]string{"bridge.yaml": bridge, "plain.yaml": other, "legacy.yaml": old} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return func(c *config.Config) {
		c.AppService.ConfigFiles = []string{dir}
		c.AppService.MinBackoff = config.Duration(30 * time.Millisecond)
		c.AppService.MaxBackoff = config.Duration(100 * time.Millisecond)
	}
}

// ephemeralOf returns the ephemeral items of txns with the given type
// for which match is true.
func ephemeralOf(txns []txn, typ string, match func(map[string]any) bool) []map[string]any {
	var out []map[string]any
	for _, tx := range txns {
		for _, e := range tx.Ephemeral {
			if e["type"] == typ && match(e) {
				out = append(out, e)
			}
		}
	}
	return out
}

// receiptOf returns the receipt of userID with type rtype on eventID in
// an m.receipt item of room roomID, or nil.
func receiptOf(txns []txn, roomID, eventID, rtype, userID string) map[string]any {
	for _, e := range ephemeralOf(txns, "m.receipt", func(e map[string]any) bool { return e["room_id"] == roomID }) {
		c, _ := e["content"].(map[string]any)
		ev, _ := c[eventID].(map[string]any)
		ty, _ := ev[rtype].(map[string]any)
		if r, ok := ty[userID].(map[string]any); ok {
			return r
		}
	}
	return nil
}

func typingIn(txns []txn, roomID string, users ...string) bool {
	return len(ephemeralOf(txns, "m.typing", func(e map[string]any) bool {
		if e["room_id"] != roomID {
			return false
		}
		got, _ := e["content"].(map[string]any)["user_ids"].([]any)
		if len(got) != len(users) {
			return false
		}
		for i, u := range users {
			if got[i] != u {
				return false
			}
		}
		return true
	})) > 0
}

func presenceOf(txns []txn, userID, presence string) bool {
	return len(ephemeralOf(txns, "m.presence", func(e map[string]any) bool {
		c, _ := e["content"].(map[string]any)
		return e["sender"] == userID && c["presence"] == presence && e["room_id"] == nil
	})) > 0
}

// Spec: application-service-api, "Pushing ephemeral data": a service
// with receive_ephemeral gets m.typing, m.receipt (m.read.private only of
// its users) and m.presence under the interest rules; a failed
// transaction is retried with the same txnId and body, also after a
// restart, and the streams resume where they were.
func TestAppServiceEphemeral(t *testing.T) {
	for _, engine := range []storage.Engine{storage.SQLite, storage.Postgres} {
		t.Run(string(engine), func(t *testing.T) { testEphemeral(t, engine) })
	}
}

func testEphemeral(t *testing.T, engine storage.Engine) {
	fs, plain, legacy := newFakeService(t), newFakeService(t), newFakeService(t)
	plain.hs, legacy.hs = "plain-hs", "legacy-hs"
	srv := testserver.Start(t, engine, withEphemeralServices(t, fs, plain, legacy))
	v3 := srv.URL + "/_matrix/client/v3"
	st, body := call(t, "POST", v3+"/register", asToken, map[string]any{
		"type": "m.login.application_service", "username": "_bridge_alice"})
	if st != 200 {
		t.Fatalf("AS registration: %d %v", st, body)
	}
	alice, aliceToken := body["user_id"].(string), body["access_token"].(string)
	bob, bobToken := register(t, srv, "bob")
	carol, carolToken := register(t, srv, "carol")
	_, daveToken := register(t, srv, "dave")

	create := func(token string) string {
		st, body := call(t, "POST", v3+"/createRoom", token, map[string]any{"preset": "public_chat"})
		if st != 200 {
			t.Fatalf("createRoom: %d %v", st, body)
		}
		return body["room_id"].(string)
	}
	join := func(token, roomID string) {
		if st, body := call(t, "POST", v3+"/rooms/"+url.PathEscape(roomID)+"/join", token, map[string]any{}); st != 200 {
			t.Fatalf("join: %d %v", st, body)
		}
	}
	n := 0
	send := func(token, roomID string) string {
		n++
		st, body := call(t, "PUT", fmt.Sprintf("%s/rooms/%s/send/m.room.message/e%d", v3, url.PathEscape(roomID), n), token,
			map[string]any{"msgtype": "m.text", "body": "hi"})
		if st != 200 {
			t.Fatalf("send: %d %v", st, body)
		}
		return body["event_id"].(string)
	}
	typing := func(token, userID, roomID string, on bool) {
		if st, body := call(t, "PUT", v3+"/rooms/"+url.PathEscape(roomID)+"/typing/"+url.PathEscape(userID), token,
			map[string]any{"typing": on, "timeout": 30000}); st != 200 {
			t.Fatalf("typing: %d %v", st, body)
		}
	}
	receipt := func(token, roomID, rtype, eventID string, body map[string]any) {
		if st, b := call(t, "POST", v3+"/rooms/"+url.PathEscape(roomID)+"/receipt/"+rtype+"/"+url.PathEscape(eventID), token, body); st != 200 {
			t.Fatalf("receipt %s: %d %v", rtype, st, b)
		}
	}
	presence := func(token, userID, p string) {
		if st, b := call(t, "PUT", v3+"/presence/"+url.PathEscape(userID)+"/status", token, map[string]any{"presence": p}); st != 200 {
			t.Fatalf("presence: %d %v", st, b)
		}
	}

	// Room A holds the bridged alice and bob; room B only carol and
	// dave (no user of the service): not its business.
	roomA := create(aliceToken)
	join(bobToken, roomA)
	roomB := create(carolToken)
	join(daveToken, roomB)
	evA := send(bobToken, roomA)
	evB := send(carolToken, roomB)

	// Typing: B first, then A; once A's arrives, B's was read and dropped.
	typing(carolToken, carol, roomB, true)
	typing(bobToken, bob, roomA, true)
	waitFor(t, "bob typing in A", func() bool { return typingIn(fs.snapshot(), roomA, bob) })
	if got := ephemeralOf(fs.snapshot(), "m.typing", func(e map[string]any) bool { return e["room_id"] == roomB }); len(got) != 0 {
		t.Fatalf("typing of a room without interest pushed: %v", got)
	}
	typing(bobToken, bob, roomA, false)
	waitFor(t, "bob stopped typing in A", func() bool { return typingIn(fs.snapshot(), roomA) })
	// The service registered with MSC2409's name only reads MSC2409's key.
	waitFor(t, "bob typing in A under the MSC2409 key", func() bool {
		for _, tx := range legacy.snapshot() {
			if typingIn([]txn{{Ephemeral: tx.Legacy}}, roomA, bob) {
				return true
			}
		}
		return false
	})
	for _, tx := range legacy.snapshot() {
		if tx.HasEphemeral {
			t.Fatalf("stable ephemeral key sent to a service registered with MSC2409's name: %s", tx.Body)
		}
	}
	for _, tx := range fs.snapshot() {
		if len(tx.Legacy) > 0 {
			t.Fatalf("MSC2409 key sent to a service registered with receive_ephemeral: %s", tx.Body)
		}
	}

	// Receipts: bob's private one (bob is not the service's) and one in
	// B are dropped; bob's public and threaded ones and alice's private
	// one are sent.
	receipt(bobToken, roomA, "m.read.private", evA, map[string]any{})
	receipt(carolToken, roomB, "m.read", evB, map[string]any{})
	receipt(bobToken, roomA, "m.read", evA, map[string]any{})
	receipt(bobToken, roomA, "m.read", evA, map[string]any{"thread_id": "main"})
	receipt(aliceToken, roomA, "m.read.private", evA, map[string]any{})
	waitFor(t, "alice's private receipt", func() bool { return receiptOf(fs.snapshot(), roomA, evA, "m.read.private", alice) != nil })
	txns := fs.snapshot()
	if r := receiptOf(txns, roomA, evA, "m.read.private", bob); r != nil {
		t.Fatalf("private receipt of a user outside the namespaces pushed: %v", r)
	}
	if got := ephemeralOf(txns, "m.receipt", func(e map[string]any) bool { return e["room_id"] == roomB }); len(got) != 0 {
		t.Fatalf("receipt of a room without interest pushed: %v", got)
	}
	if r := receiptOf(txns, roomA, evA, "m.read", bob); r == nil || r["ts"] == nil {
		t.Fatalf("bob's public receipt: %v", r)
	}
	threaded := false
	for _, e := range ephemeralOf(txns, "m.receipt", func(e map[string]any) bool { return e["room_id"] == roomA }) {
		c, _ := e["content"].(map[string]any)
		ev, _ := c[evA].(map[string]any)
		ty, _ := ev["m.read"].(map[string]any)
		r, _ := ty[bob].(map[string]any)
		threaded = threaded || r["thread_id"] == "main"
	}
	if !threaded {
		t.Fatalf("bob's threaded receipt not pushed: %v", ephemeralOf(txns, "m.receipt", func(map[string]any) bool { return true }))
	}

	// Presence: carol shares no room with the service; bob does; alice
	// is in its namespace.
	presence(carolToken, carol, "online")
	presence(bobToken, bob, "online")
	presence(aliceToken, alice, "unavailable")
	waitFor(t, "alice's presence", func() bool { return presenceOf(fs.snapshot(), alice, "unavailable") })
	if !presenceOf(fs.snapshot(), bob, "online") {
		t.Fatal("bob's presence not pushed")
	}
	if got := ephemeralOf(fs.snapshot(), "m.presence", func(e map[string]any) bool { return e["sender"] == carol }); len(got) != 0 {
		t.Fatalf("presence of a user sharing no room with the service pushed: %v", got)
	}

	// The service without receive_ephemeral got events, never ephemeral data.
	waitFor(t, "plain service's events", func() bool { return findEvent(plain.snapshot(), evB) != "" })
	for _, tx := range plain.snapshot() {
		if tx.HasEphemeral {
			t.Fatalf("ephemeral data pushed to a service without receive_ephemeral: %s", tx.Body)
		}
	}

	// The service fails: the transaction holding bob's typing is retried
	// with the same txnId and the very same body, though more happens.
	fs.setFail(true)
	typing(bobToken, bob, roomA, true)
	var failedID, failedBody string
	waitFor(t, "a failed transaction with bob's typing", func() bool {
		last := fs.snapshot()
		tx := last[len(last)-1]
		if typingIn([]txn{tx}, roomA, bob) {
			failedID, failedBody = tx.ID, tx.Body
			return true
		}
		return false
	})
	presence(bobToken, bob, "unavailable")
	evLater := send(bobToken, roomA)
	receipt(bobToken, roomA, "m.read", evLater, map[string]any{})
	k := len(fs.snapshot())
	waitFor(t, "two more attempts", func() bool { return len(fs.snapshot()) >= k+2 })
	for _, tx := range fs.snapshot() {
		if tx.ID == failedID && tx.Body != failedBody {
			t.Fatalf("retry of %s altered:\nfirst %s\nretry %s", failedID, failedBody, tx.Body)
		}
	}
	for _, tx := range fs.snapshot()[k:] {
		if tx.ID != failedID {
			t.Fatalf("a new transaction %s was sent while %s was unacknowledged", tx.ID, failedID)
		}
	}

	// Restart: the pending transaction comes again, identical; then the
	// receipt and presence written while the service was down, which no
	// transaction held yet, are delivered once.
	srv.Restart(t)
	v3 = srv.URL + "/_matrix/client/v3"
	fs.mu.Lock()
	fs.txns = nil
	fs.mu.Unlock()
	fs.setFail(false)
	waitFor(t, "the pending transaction after restart", func() bool { return len(fs.snapshot()) > 0 })
	if first := fs.snapshot()[0]; first.ID != failedID || first.Body != failedBody {
		t.Fatalf("after restart first came %s %s, want %s %s", first.ID, first.Body, failedID, failedBody)
	}
	waitFor(t, "the later receipt", func() bool { return receiptOf(fs.snapshot(), roomA, evLater, "m.read", bob) != nil })
	waitFor(t, "the later presence", func() bool { return presenceOf(fs.snapshot(), bob, "unavailable") })
	// And nothing is sent twice.
	presence(aliceToken, alice, "online")
	waitFor(t, "a marker presence", func() bool { return presenceOf(fs.snapshot(), alice, "online") })
	seen := map[string]bool{}
	for _, tx := range fs.snapshot() {
		if seen[tx.ID] {
			t.Fatalf("txnId %s sent twice after it was acknowledged", tx.ID)
		}
		seen[tx.ID] = true
	}
	if got := ephemeralOf(fs.snapshot(), "m.presence", func(e map[string]any) bool { return e["sender"] == bob }); len(got) != 1 {
		t.Fatalf("bob's later presence pushed %d times: %v", len(got), got)
	}
}

// A backlog of ephemeral data goes out in transactions of at most 100
// receipts and 100 presence changes, every item once.
func TestAppServiceEphemeralBatches(t *testing.T) {
	fs, plain, legacy := newFakeService(t), newFakeService(t), newFakeService(t)
	plain.hs, legacy.hs = "plain-hs", "legacy-hs"
	testserver.ForEachEngine(t, withEphemeralServices(t, fs, plain, legacy), func(t *testing.T, srv *testserver.Server) {
		fs.mu.Lock()
		fs.txns = nil
		fs.fail = false
		fs.mu.Unlock()
		v3 := srv.URL + "/_matrix/client/v3"
		st, body := call(t, "POST", v3+"/createRoom", asToken, map[string]any{"preset": "public_chat"})
		if st != 200 {
			t.Fatalf("createRoom: %d %v", st, body)
		}
		roomID := body["room_id"].(string)
		room := url.PathEscape(roomID)
		st, body = call(t, "PUT", v3+"/rooms/"+room+"/send/m.room.message/b1", asToken, map[string]any{"msgtype": "m.text", "body": "x"})
		if st != 200 {
			t.Fatalf("send: %d %v", st, body)
		}
		eventID := body["event_id"].(string)
		const users = 130
		as := func(userID string) string { return "?user_id=" + url.QueryEscape(userID) }
		for i := range users {
			user := fmt.Sprintf("@_bridge_u%d:localhost", i)
			if st, body := call(t, "POST", v3+"/register", asToken, map[string]any{
				"type": "m.login.application_service", "username": fmt.Sprintf("_bridge_u%d", i), "inhibit_login": true}); st != 200 {
				t.Fatalf("register: %d %v", st, body)
			}
			if st, body := call(t, "POST", v3+"/rooms/"+room+"/join"+as(user), asToken, map[string]any{}); st != 200 {
				t.Fatalf("join: %d %v", st, body)
			}
		}
		// The service fails while every user reads and comes online: the
		// receipts and presence pile up behind the unacknowledged
		// transaction.
		fs.setFail(true)
		before := len(fs.snapshot())
		sb := fmt.Sprintf(`@_bridge_u%d:localhost`, 0)
		if st, body := call(t, "PUT", v3+"/rooms/"+room+"/typing/"+url.PathEscape(sb)+as(sb), asToken, map[string]any{"typing": true, "timeout": 30000}); st != 200 {
			t.Fatalf("typing: %d %v", st, body)
		}
		waitFor(t, "a failed transaction retried", func() bool {
			seen := map[string]bool{}
			for _, tx := range fs.snapshot()[before:] {
				if seen[tx.ID] {
					return true
				}
				seen[tx.ID] = true
			}
			return false
		})
		for i := range users {
			user := fmt.Sprintf("@_bridge_u%d:localhost", i)
			if st, body := call(t, "POST", v3+"/rooms/"+room+"/receipt/m.read/"+url.PathEscape(eventID)+as(user), asToken, map[string]any{}); st != 200 {
				t.Fatalf("receipt: %d %v", st, body)
			}
			if st, body := call(t, "PUT", v3+"/presence/"+url.PathEscape(user)+"/status"+as(user), asToken, map[string]any{"presence": "online"}); st != 200 {
				t.Fatalf("presence: %d %v", st, body)
			}
		}
		fs.setFail(false)
		count := func() (receipts, presence map[string]int) {
			receipts, presence = map[string]int{}, map[string]int{}
			for _, e := range ephemeralOf(distinct(t, fs.snapshot()), "m.receipt", func(map[string]any) bool { return true }) {
				c, _ := e["content"].(map[string]any)
				ev, _ := c[eventID].(map[string]any)
				for u := range ev["m.read"].(map[string]any) {
					receipts[u]++
				}
			}
			for _, e := range ephemeralOf(distinct(t, fs.snapshot()), "m.presence", func(map[string]any) bool { return true }) {
				presence[e["sender"].(string)]++
			}
			return receipts, presence
		}
		waitFor(t, "every receipt and presence", func() bool {
			r, p := count()
			return len(r) == users && len(p) == users
		})
		r, p := count()
		for u, n := range r {
			if n != 1 {
				t.Fatalf("receipt of %s pushed %d times", u, n)
			}
		}
		for u, n := range p {
			if n != 1 {
				t.Fatalf("presence of %s pushed %d times", u, n)
			}
		}
		full := false
		for _, tx := range fs.snapshot() {
			nr, np := 0, 0
			for _, e := range tx.Ephemeral {
				switch e["type"] {
				case "m.receipt":
					for _, types := range e["content"].(map[string]any) {
						for _, us := range types.(map[string]any) {
							nr += len(us.(map[string]any))
						}
					}
				case "m.presence":
					np++
				}
			}
			if nr > 100 || np > 100 {
				t.Fatalf("transaction %s holds %d receipts and %d presence changes", tx.ID, nr, np)
			}
			full = full || nr == 100 && np == 100
		}
		if !full {
			t.Fatal("no transaction reached the bound: the backlog did not pile up, the test proves nothing")
		}
	})
}

// distinct drops the retries from txns (checking that each repeats its
// first attempt exactly).
func distinct(t *testing.T, txns []txn) []txn {
	t.Helper()
	first := map[string]string{}
	var out []txn
	for _, tx := range txns {
		if body, seen := first[tx.ID]; seen {
			if body != tx.Body {
				t.Fatalf("retry of %s altered:\nfirst %s\nretry %s", tx.ID, body, tx.Body)
			}
			continue
		}
		first[tx.ID] = tx.Body
		out = append(out, tx)
	}
	return out
}
