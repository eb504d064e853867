package authn_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
)

type oneToken struct{ d *authn.Device }

func (v oneToken) VerifyAccessToken(_ context.Context, token string, _ *http.Request) (*authn.Device, error) {
	if token != "good" {
		return nil, context.Canceled // any error: the test sends only the good token
	}
	return v.d, nil
}

// TestMiddlewareCallerAndLogger: behind Middleware the handler finds the
// caller, a logger carrying the request ID and then the user, the
// request ID, and a context still cancelled with the request's.
func TestMiddlewareCallerAndLogger(t *testing.T) {
	var logs bytes.Buffer
	base := slog.New(slog.NewTextHandler(&logs, nil))
	dev := &authn.Device{UserID: "@alice:example.org", DeviceID: "D"}
	ctx, cancel := context.WithCancel(context.Background())
	h := httpx.RequestLog(base)(authn.Middleware(oneToken{dev}, nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := authn.FromContext(r.Context()); got != dev {
			t.Errorf("FromContext: %+v", got)
		}
		if httpx.RequestID(r.Context()) == "" {
			t.Error("no request ID")
		}
		httpx.Logger(r.Context()).Info("inside")
		inner, stop := context.WithCancel(r.Context())
		defer stop()
		cancel()
		<-inner.Done() // the request's cancellation reaches contexts made from it
	})))
	req := httptest.NewRequest(http.MethodGet, "/x", nil).WithContext(ctx)
	req.Header.Set("Authorization", "Bearer good")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	line := logs.String()
	id := rec.Header().Get("X-Request-Id")
	if !strings.Contains(line, "msg=inside req="+id+" user=@alice:example.org") {
		t.Errorf("log line %q (request %s)", line, id)
	}
}

// TestMiddlewareAllocations: authenticating a request costs the request
// copy and one context node for the caller and its log attribute (main:
// 4 — a value, a logger node, another value and the copy).
func TestMiddlewareAllocations(t *testing.T) {
	dev := &authn.Device{UserID: "@alice:example.org", DeviceID: "D"}
	h := authn.Middleware(oneToken{dev}, nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if authn.FromContext(r.Context()) != dev {
			t.Fatal("no caller")
		}
	}))
	req := httptest.NewRequest(http.MethodGet, "/x", nil)
	req.Header.Set("Authorization", "Bearer good")
	allocs := testing.AllocsPerRun(100, func() { h.ServeHTTP(nil, req) })
	if allocs > 2 {
		t.Errorf("%.0f allocations, want at most 2", allocs)
	}
}

// TestMiddlewareGuests: behind Middleware on a chi group, a guest
// reaches only the endpoints its Guests list names (by method and
// pattern, a trailing '/' included) and is answered 403
// M_GUEST_ACCESS_FORBIDDEN elsewhere without the handler running; a
// regular user reaches every endpoint; Optional serves guests; and
// Middleware used where no route is matched yet refuses guests.
func TestMiddlewareGuests(t *testing.T) {
	guest := &authn.Device{UserID: "@guest:example.org", DeviceID: "G", IsGuest: true}
	user := &authn.Device{UserID: "@alice:example.org", DeviceID: "A"}
	var guests authn.Guests
	guests.Allow(http.MethodGet, "/open", "/open/{id}/")
	ran := 0
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { ran++ })
	router := func(d *authn.Device) http.Handler {
		r := chi.NewRouter()
		r.Group(func(r chi.Router) {
			r.Use(authn.Middleware(oneToken{d}, &guests))
			for _, p := range []string{"/open", "/open/{id}", "/open/{id}/", "/closed"} {
				r.Get(p, ok)
				r.Post(p, ok)
			}
		})
		r.With(authn.Optional(oneToken{d})).Get("/optional", ok)
		return r
	}
	do := func(h http.Handler, method, path string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, nil)
		req.Header.Set("Authorization", "Bearer good")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	for _, tc := range []struct {
		method, path string
		guestOK      bool
	}{
		{"GET", "/open", true},
		{"GET", "/open/x/", true},
		{"GET", "/open/x", false},
		{"POST", "/open", false},
		{"GET", "/closed", false},
		{"GET", "/optional", true},
	} {
		ran = 0
		rec := do(router(guest), tc.method, tc.path)
		if tc.guestOK && (rec.Code != 200 || ran != 1) {
			t.Errorf("guest %s %s: %d, handler ran %d times; want 200", tc.method, tc.path, rec.Code, ran)
		}
		if !tc.guestOK && (rec.Code != 403 || !strings.Contains(rec.Body.String(), `"M_GUEST_ACCESS_FORBIDDEN"`) || ran != 0) {
			t.Errorf("guest %s %s: %d %s, handler ran %d times; want 403 M_GUEST_ACCESS_FORBIDDEN", tc.method, tc.path, rec.Code, rec.Body, ran)
		}
		ran = 0
		if rec := do(router(user), tc.method, tc.path); rec.Code != 200 || ran != 1 {
			t.Errorf("alice %s %s: %d, handler ran %d times", tc.method, tc.path, rec.Code, ran)
		}
	}
	// On the root router chi runs the middleware before routing: no
	// pattern is known, so the guest is refused even where listed.
	root := chi.NewRouter()
	root.Use(authn.Middleware(oneToken{guest}, &guests))
	root.Get("/open", ok)
	if rec := do(root, "GET", "/open"); rec.Code != 403 {
		t.Errorf("guest behind root middleware: %d, want 403", rec.Code)
	}
}
