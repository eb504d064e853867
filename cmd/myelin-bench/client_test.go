package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The expected value was computed independently:
// printf 'abc\0alice\0pw\0notadmin' | openssl dgst -sha1 -hmac secret
func TestSharedSecretMAC(t *testing.T) {
	got := sharedSecretMAC("secret", "abc", "alice", "pw", false)
	if want := "42e32623fe124933c326f9d2d67ff7c617915a10"; got != want {
		t.Errorf("mac = %s, want %s", got, want)
	}
}

// sendConn must send what client.send sends (method, path, headers, JSON
// body), over one kept-alive connection, read every answer in full, and
// keep working when the server closes the connection.
func TestSendConnMatchesClient(t *testing.T) {
	type seen struct {
		method, path, auth, ctype, ua string
		body                          map[string]any
		remote                        string
	}
	var mu sync.Mutex
	var got []seen
	var n int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		mu.Lock()
		got = append(got, seen{r.Method, r.URL.EscapedPath(), r.Header.Get("Authorization"), r.Header.Get("Content-Type"), r.Header.Get("User-Agent"), body, r.RemoteAddr})
		n++
		i := n
		mu.Unlock()
		switch {
		case i == 3:
			// The server ends the connection after this answer.
			w.Header().Set("Connection", "close")
		case i == 5:
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"errcode":"M_FORBIDDEN","error":"no"}`))
			return
		}
		_, _ = w.Write([]byte(`{"event_id":"$e` + strconv.Itoa(i) + `"}`))
	}))
	defer srv.Close()
	c := &client{base: srv.URL, hc: srv.Client(), token: "tok", userID: "@a:x"}
	sc := newSendConn(c)
	if sc == nil {
		t.Fatal("no sendConn for an http URL")
	}
	defer sc.close()
	ctx := context.Background()
	content := map[string]any{"msgtype": "m.text", "body": "hi \"there\" ü", "myelin_bench": map[string]any{"seq": 1}}
	for i := 1; i <= 6; i++ {
		err := sc.send(ctx, "!r/oom:x", content)
		var re *requestError
		if i == 5 {
			if !errors.As(err, &re) || re.Status != http.StatusForbidden || re.Errcode != "M_FORBIDDEN" {
				t.Fatalf("send %d: %v, want the 403 M_FORBIDDEN", i, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if err := c.send(ctx, "!r/oom:x", content); err != nil {
		t.Fatal(err)
	}
	if len(got) != 7 {
		t.Fatalf("%d requests, want 7", len(got))
	}
	ref := got[6] // net/http's
	for i, s := range got[:6] {
		if s.method != http.MethodPut || s.auth != "Bearer tok" || s.ctype != "application/json" ||
			!strings.HasPrefix(s.path, "/_matrix/client/v3/rooms/%21r%2Foom:x/send/m.room.message/bench-") ||
			!reflect.DeepEqual(s.body, ref.body) {
			t.Errorf("request %d = %+v, want the same as net/http's %+v", i+1, s, ref)
		}
		if s.path == got[0].path && i > 0 {
			t.Errorf("request %d reused the transaction ID", i+1)
		}
	}
	// Requests 1–3 share a connection; the server closed it after 3, so 4–6 use another.
	if got[0].remote != got[1].remote || got[1].remote != got[2].remote {
		t.Errorf("requests 1–3 came from %s, %s, %s: want one kept-alive connection", got[0].remote, got[1].remote, got[2].remote)
	}
	if got[3].remote == got[2].remote || got[3].remote != got[5].remote {
		t.Errorf("requests 3–6 came from %s, %s, %s, %s: want a new connection after the close", got[2].remote, got[3].remote, got[4].remote, got[5].remote)
	}
}

// A kept-alive connection that the server closed while idle is replaced
// and the request is sent again on the new one.
func TestSendConnRedialsAfterIdleClose(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"event_id":"$e"}`))
	}))
	defer srv.Close()
	sc := newSendConn(&client{base: srv.URL, token: "tok"})
	defer sc.close()
	ctx := context.Background()
	if err := sc.send(ctx, "!r:x", map[string]any{"body": "a"}); err != nil {
		t.Fatal(err)
	}
	srv.CloseClientConnections()
	time.Sleep(50 * time.Millisecond)
	if err := sc.send(ctx, "!r:x", map[string]any{"body": "b"}); err != nil {
		t.Fatalf("send after the server closed the idle connection: %v", err)
	}
}
