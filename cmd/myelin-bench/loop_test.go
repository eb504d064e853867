package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// A server that stalls must be charged for the requests that queued behind
// the stall: with one worker, messages due every 10 ms and each taking
// 50 ms, message i starts at about 50i ms but was due at 10i ms, so the
// latencies grow. A closed loop would report ~50 ms for every message.
func TestOpenLoopMeasuresFromTheDueTime(t *testing.T) {
	rec := newRecorder()
	openLoop(context.Background(), 5, 100, 1, rec, func(ctx context.Context, worker, i int) error {
		time.Sleep(50 * time.Millisecond)
		return nil
	})
	s := summarize(rec.samples)
	if s == nil || s.N != 5 {
		t.Fatalf("summary %+v, want 5 samples", s)
	}
	// The last message was due at 40 ms and finished at about 250 ms.
	if s.Max < 200 {
		t.Errorf("max latency %.1f ms, want >= 200 ms (measured from the due time)", s.Max)
	}
	if s.Min < 50 {
		t.Errorf("min latency %.1f ms, want >= 50 ms", s.Min)
	}
}

func TestClosedLoopCountsUnrunOperations(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	rec := newRecorder()
	closedLoop(ctx, 10, 1, rec, func(ctx context.Context, worker, i int) error {
		if i == 2 {
			cancel()
		}
		return nil
	})
	ok, failed := rec.count()
	if ok != 3 || failed != 7 || rec.errors["not run: -timeout reached"] != 7 {
		t.Errorf("ok %d, failed %d (%v); want 3 ok and 7 not run", ok, failed, rec.errors)
	}
}

// The m.login.dummy flow: a 401 with a session, then the same request with
// the dummy auth for that session.
// Spec: client-server-api, "User-Interactive Authentication API".
func TestRegisterDummyFollowsUIA(t *testing.T) {
	var calls int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		if r.URL.Path != "/_matrix/client/v3/register" || body["username"] != "alice" {
			http.Error(w, `{"errcode":"M_UNRECOGNIZED"}`, http.StatusNotFound)
			return
		}
		auth, _ := body["auth"].(map[string]any)
		if auth == nil {
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"session":"s1","flows":[{"stages":["m.login.recaptcha"]},{"stages":["m.login.dummy"]}],"params":{}}`))
			return
		}
		if auth["type"] != "m.login.dummy" || auth["session"] != "s1" {
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"errcode":"M_FORBIDDEN"}`))
			return
		}
		w.Write([]byte(`{"user_id":"@alice:localhost","access_token":"tok","device_id":"D"}`))
	}))
	defer srv.Close()
	c, err := registration{mode: "dummy"}.register(context.Background(), srv.Client(), srv.URL, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if c.userID != "@alice:localhost" || c.token != "tok" || calls != 2 {
		t.Errorf("user %q token %q after %d calls; want @alice:localhost, tok, 2 calls", c.userID, c.token, calls)
	}
}

func TestRegisterReportsMissingEndpoint(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`))
	}))
	defer srv.Close()
	_, err := registration{mode: "dummy"}.register(context.Background(), srv.Client(), srv.URL, "alice")
	if !isUnrecognized(err) || errorKey(err) != "register: HTTP 404 M_UNRECOGNIZED" {
		t.Errorf("err = %v (key %q), want register: HTTP 404 M_UNRECOGNIZED", err, errorKey(err))
	}
}

// initialsync reports the user's first sync apart from the repeats: a
// server whose first full sync takes 80 ms and every later one none must
// show first_ms >= 80 and later syncs well under it, while the
// percentiles still cover all five.
func TestInitialSyncReportsTheFirstSyncApart(t *testing.T) {
	var syncs int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/_matrix/client/v3/register":
			w.Write([]byte(`{"user_id":"@i:localhost","access_token":"tok","device_id":"D"}`))
		case r.URL.Path == "/_matrix/client/v3/createRoom":
			w.Write([]byte(`{"room_id":"!r:localhost"}`))
		case r.URL.Path == "/_matrix/client/v3/sync":
			if syncs++; syncs == 1 {
				time.Sleep(80 * time.Millisecond)
			}
			w.Write([]byte(`{"next_batch":"s1","rooms":{"join":{"!r:localhost":{}}}}`))
		default:
			w.Write([]byte(`{"event_id":"$e"}`))
		}
	}))
	defer srv.Close()
	e := &env{opts: options{url: srv.URL, auth: registration{mode: "dummy"}, rooms: 1, perRoom: 1, repeat: 5, setupConcurrency: 1},
		hc: srv.Client(), runID: "t", prefix: "t"}
	res := &Result{Params: map[string]any{}}
	if err := runInitialSync(context.Background(), e, res); err != nil {
		t.Fatal(err)
	}
	later := res.Other["later_syncs"]
	if res.OK != 5 || later == nil || later.N != 4 {
		t.Fatalf("ok %d, later syncs %+v; want 5 syncs, 4 of them later", res.OK, later)
	}
	if first := res.Notes["first_ms"]; first < 80 || later.Max >= 80 || res.Latency.Max < 80 {
		t.Errorf("first %.1f ms, later max %.1f ms, all max %.1f; want the 80 ms sync first and in all",
			first, later.Max, res.Latency.Max)
	}
}
