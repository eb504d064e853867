package appservice

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A service remembered as legacy is asked on the v1 path again once
// legacyRetry has passed, and one that answers there then is asked there
// from then on; a service whose legacy route fails too is never
// remembered (each request tries v1 first).
// Spec: application-service-api, "Legacy routes" ("Homeservers should
// periodically try again for the newer endpoints because the application
// service may have been updated").
func TestLegacyRouteRetried(t *testing.T) {
	var upgraded atomic.Bool
	var mu sync.Mutex
	var seen []string
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.Path)
		mu.Unlock()
		switch r.URL.Path {
		case "/_matrix/app/v1/users/@a_x:localhost":
			if upgraded.Load() {
				_, _ = w.Write([]byte(`{}`))
				return
			}
		case "/users/@a_x:localhost":
			_, _ = w.Write([]byte(`{}`))
			return
		}
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errcode":"M_UNRECOGNIZED"}`))
	}))
	defer svc.Close()
	reg, err := ParseRegistration(fmt.Appendf(nil, "id: a\nurl: %s\nas_token: a-as\nhs_token: a-hs\nsender_localpart: a_bot\nnamespaces:\n  users:\n    - exclusive: true\n      regex: \"@a_.*:localhost\"\n", svc.URL), "a")
	if err != nil {
		t.Fatal(err)
	}
	registry, err := NewRegistry([]*Registration{reg})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_000_000, 0)
	s := &Server{deps: Deps{Registry: registry}, log: slog.New(slog.DiscardHandler), client: svc.Client()}
	s.legacy.now = func() time.Time { return now }
	ask := func(userID string, want bool, wantPaths ...string) {
		t.Helper()
		mu.Lock()
		seen = nil
		mu.Unlock()
		if got := s.QueryUser(context.Background(), userID); got != want {
			t.Fatalf("QueryUser(%s) = %v, want %v", userID, got, want)
		}
		mu.Lock()
		defer mu.Unlock()
		if fmt.Sprint(seen) != fmt.Sprint(wantPaths) {
			t.Fatalf("QueryUser(%s) asked %v, want %v", userID, seen, wantPaths)
		}
	}
	// Unknown on both routes: not remembered, v1 first each time.
	ask("@a_y:localhost", false, "/_matrix/app/v1/users/@a_y:localhost", "/users/@a_y:localhost")
	ask("@a_y:localhost", false, "/_matrix/app/v1/users/@a_y:localhost", "/users/@a_y:localhost")
	// Answered on the legacy route: remembered.
	ask("@a_x:localhost", true, "/_matrix/app/v1/users/@a_x:localhost", "/users/@a_x:localhost")
	ask("@a_x:localhost", true, "/users/@a_x:localhost")
	ask("@a_y:localhost", false, "/users/@a_y:localhost")
	now = now.Add(legacyRetry - time.Second)
	ask("@a_x:localhost", true, "/users/@a_x:localhost")
	// Past the retry period, v1 first again; the service was updated.
	now = now.Add(time.Second)
	upgraded.Store(true)
	ask("@a_x:localhost", true, "/_matrix/app/v1/users/@a_x:localhost")
	ask("@a_x:localhost", true, "/_matrix/app/v1/users/@a_x:localhost")
}

// A legacy request that fails in transport (the service answered the v1
// path with 404, then dropped the connection of the legacy one) returns
// an error without the access_token query parameter it carried: the
// error is logged, and the hs_token must never be (DESIGN.md, "Errors,
// logs, config").
func TestLegacyTransportErrorHidesToken(t *testing.T) {
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/users/@a_x:localhost" {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		w.WriteHeader(http.StatusNotFound)
	}))
	defer svc.Close()
	reg, err := ParseRegistration(fmt.Appendf(nil, "id: a\nurl: %s\nas_token: a-as\nhs_token: secret-hs-token\nsender_localpart: a_bot\nnamespaces:\n  users:\n    - exclusive: true\n      regex: \"@a_.*:localhost\"\n", svc.URL), "a")
	if err != nil {
		t.Fatal(err)
	}
	registry, err := NewRegistry([]*Registration{reg})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{deps: Deps{Registry: registry}, log: slog.New(slog.DiscardHandler), client: svc.Client()}
	resp, err := s.doVersioned(context.Background(), reg, familyUsers, http.MethodGet,
		"/_matrix/app/v1/users/@a_x:localhost", "/users/@a_x:localhost", nil, nil)
	if err == nil {
		resp.Body.Close()
		t.Fatal("a dropped legacy request did not fail")
	}
	if strings.Contains(err.Error(), "secret-hs-token") {
		t.Fatalf("the error names the hs_token: %v", err)
	}
}
