package homeserver_test

import (
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// redisCut is a TCP proxy to the test Redis that a test can cut (every
// connection closed, new ones refused) and restore on the same address,
// so that one process of a split deployment loses Redis while the
// others, and other tests, keep it.
type redisCut struct {
	t      *testing.T
	target string
	addr   string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
}

func newRedisCut(t *testing.T, target string) *redisCut {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &redisCut{t: t, target: target, addr: ln.Addr().String()}
	p.serve(ln)
	t.Cleanup(p.cut)
	return p
}

func (p *redisCut) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close(); c.Close() }()
			go func() { _, _ = io.Copy(c, up); up.Close(); c.Close() }()
		}
	}()
}

// cut closes the listener and every connection through it.
func (p *redisCut) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// restore listens again on the same address.
func (p *redisCut) restore() {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatalf("listening again on %s: %v", p.addr, err)
	}
	p.serve(ln)
}

// typingField returns the typing position of a sync token (syncapi/token.go).
func typingField(t *testing.T, token string) string {
	t.Helper()
	f := strings.Split(strings.TrimPrefix(token, "s"), "_")
	if len(f) < 4 {
		t.Fatalf("sync token %q has no typing position", token)
	}
	return f[3]
}

func withTypingField(token string, pos string) string {
	f := strings.Split(strings.TrimPrefix(token, "s"), "_")
	f[3] = pos
	return "s" + strings.Join(f, "_")
}

// TestSplitTypingAheadWhileRedisDown: a sync process cut off from Redis
// cannot read the shared typing counter, so a /sync token with a typing
// position it has not applied (given out by another process meanwhile, or
// never given out) is answered as of its own position: 200, no typing
// change, and a next_batch carrying its own typing position, never the
// token's. Once Redis is back, the change it missed reaches the client
// from that token (a forged position taken as caught up with used to
// hide it, and then to be refused as a token from the future).
func TestSplitTypingAheadWhileRedisDown(t *testing.T) {
	var cut *redisCut
	a, b := testserver.StartSplitWith(t, func(c *config.Config) {}, func(c *config.Config) {
		c.Global.Components = []string{"syncapi"}
		u, err := url.Parse(c.Global.RedisURL)
		if err != nil {
			t.Fatal(err)
		}
		cut = newRedisCut(t, u.Host)
		u.Host = cut.addr
		c.Global.RedisURL = u.String()
	})
	st, body := splitCall(t, "POST", a.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "alice's long password", "auth": map[string]any{"type": "m.login.dummy"}})
	if st != 200 {
		t.Fatalf("register: %d %v", st, body)
	}
	alice, aliceID := body["access_token"].(string), body["user_id"].(string)
	st, body = splitCall(t, "POST", a.URL+"/_matrix/client/v3/createRoom", alice, map[string]any{"preset": "public_chat"})
	if st != 200 {
		t.Fatalf("createRoom: %d %v", st, body)
	}
	roomID := body["room_id"].(string)
	typing := func(on bool) {
		t.Helper()
		st, body := splitCall(t, "PUT", a.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/typing/"+url.PathEscape(aliceID), alice, map[string]any{"typing": on, "timeout": 60000})
		if st != 200 {
			t.Fatalf("typing %v: %d %v", on, st, body)
		}
	}
	syncB := func(since string, timeoutMS int) map[string]any {
		t.Helper()
		st, body := splitCall(t, "GET", b.URL+"/_matrix/client/v3/sync?timeout="+strconv.Itoa(timeoutMS)+"&since="+url.QueryEscape(since), alice, nil)
		if st != 200 {
			t.Fatalf("sync on B: %d %v", st, body)
		}
		return body
	}
	// untilTyping syncs on B from since until the room's typing shows.
	untilTyping := func(since string) (string, []string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			body := syncB(since, 2000)
			since = body["next_batch"].(string)
			if typingShown(body, roomID) {
				return since, typingIn(body, roomID)
			}
			if time.Now().After(deadline) {
				t.Fatal("B never showed the room's typing")
			}
		}
	}
	st, body = splitCall(t, "GET", b.URL+"/_matrix/client/v3/sync?timeout=0", alice, nil)
	if st != 200 {
		t.Fatalf("initial sync on B: %d %v", st, body)
	}
	typing(true)
	onB, typers := untilTyping(body["next_batch"].(string))
	if len(typers) != 1 || typers[0] != aliceID {
		t.Fatalf("B shows typing %v, want [%s]", typers, aliceID)
	}
	applied := typingField(t, onB) // B's typing position

	cut.cut()
	typing(false) // taken in by A; B cannot read it
	st, body = splitCall(t, "GET", a.URL+"/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(onB), alice, nil)
	if st != 200 {
		t.Fatalf("sync on A: %d %v", st, body)
	}
	fromA := body["next_batch"].(string)
	if p, _ := strconv.ParseInt(typingField(t, fromA), 10, 64); p <= mustInt(t, applied) {
		t.Fatalf("A's token has typing position %d, not past B's %s", p, applied)
	}
	forged := withTypingField(onB, strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10))
	var next string
	for _, tc := range []struct{ what, since string }{{"a token of A", fromA}, {"a forged typing position", forged}} {
		body := syncB(tc.since, 0)
		if typingShown(body, roomID) {
			t.Fatalf("sync on B with %s while B has no Redis showed typing %v", tc.what, typingIn(body, roomID))
		}
		next = body["next_batch"].(string)
		if got := typingField(t, next); got != applied {
			t.Fatalf("sync on B with %s while B has no Redis gave typing position %s, want B's own %s", tc.what, got, applied)
		}
	}

	cut.restore()
	_, typers = untilTyping(next)
	if len(typers) != 0 {
		t.Fatalf("after Redis came back B shows typing %v, want the change B missed (nobody typing)", typers)
	}
}

func mustInt(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
