package httpx

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// countingHandler counts WithAttrs calls, the formatting that
// WithLoggerAttrs puts off until something logs.
type countingHandler struct {
	slog.Handler
	withs *atomic.Int64
}

func (h countingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	h.withs.Add(1)
	return countingHandler{Handler: h.Handler.WithAttrs(attrs), withs: h.withs}
}

// A request that logs nothing formats no attributes (the request ID, the
// user); one that logs carries every attribute added on its way in, each
// formatted once however often it logs, and RequestLog's own line (a 5xx)
// carries the request ID.
func TestRequestLoggerAttrsFormattedOnlyWhenLogging(t *testing.T) {
	var out bytes.Buffer
	var withs atomic.Int64
	base := slog.New(countingHandler{Handler: slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn}), withs: &withs})
	var logs bool
	h := RequestLog(base)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := WithLoggerAttrs(r.Context(), "user", "@alice:test.local")
		if logs {
			Logger(ctx).Error("first")
			Logger(ctx).Error("second")
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/x", nil))
	if n := withs.Load(); n != 0 || out.Len() != 0 {
		t.Fatalf("a request that logs nothing: %d WithAttrs calls, output %q; want none", n, out.String())
	}

	logs = true
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/x", nil))
	id := rec.Header().Get("X-Request-Id")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3:\n%s", len(lines), out.String())
	}
	for _, line := range lines[:2] {
		if !strings.Contains(line, "req="+id) || !strings.Contains(line, "user=@alice:test.local") {
			t.Errorf("handler's line lacks the request ID %s or the user: %s", id, line)
		}
	}
	if !strings.Contains(lines[2], "msg=request") || !strings.Contains(lines[2], "req="+id) || !strings.Contains(lines[2], "status=500") {
		t.Errorf("RequestLog's line: %s", lines[2])
	}
	if n := withs.Load(); n != 2 {
		t.Errorf("%d WithAttrs calls for a request that logged three lines, want 2 (request ID, user)", n)
	}
}

// Without a logger in the context, the attributes go on slog.Default().
func TestLoggerAttrsOnDefault(t *testing.T) {
	var out bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&out, nil)))
	t.Cleanup(func() { slog.SetDefault(prev) })
	Logger(WithLoggerAttrs(context.Background(), "k", "v")).Info("hello")
	if !strings.Contains(out.String(), "k=v") || !strings.Contains(out.String(), "msg=hello") {
		t.Errorf("output %q", out.String())
	}
}
