package authn_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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
