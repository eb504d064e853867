package httpx

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

// discardWriter is a ResponseWriter that keeps its header map (so that
// setting the same headers again allocates nothing) and its last body.
type discardWriter struct {
	h      http.Header
	status int
	body   []byte
}

func (d *discardWriter) Header() http.Header  { return d.h }
func (d *discardWriter) WriteHeader(code int) { d.status = code }
func (d *discardWriter) Write(b []byte) (int, error) {
	d.body = append(d.body[:0], b...)
	return len(b), nil
}

// WriteJSON writes json.Marshal's bytes (compact, HTML characters
// escaped, map keys sorted, raw JSON compacted), and 500 M_UNKNOWN for a
// value JSON cannot encode.
func TestWriteJSONSameAsMarshal(t *testing.T) {
	type body struct {
		Text  string            `json:"text"`
		Raw   json.RawMessage   `json:"raw"`
		Map   map[string]int    `json:"map"`
		List  []json.RawMessage `json:"list"`
		Empty *int              `json:"empty,omitempty"`
	}
	for name, v := range map[string]any{
		"struct": &body{Text: "<a href=\"x\">&amp;</a>\u2028\n", Raw: json.RawMessage(" { \"b\" : [1, 2] ,\"a\":\"<\"} "),
			Map: map[string]int{"z": 1, "a": 2, "m": 3}, List: []json.RawMessage{json.RawMessage(`{"x":1}`), json.RawMessage(`[ ]`)}},
		"empty object": EmptyObject,
		"string":       "line\nbreak",
		"big":          bytes.Repeat([]byte("x"), 100<<10), // past the pooled size
	} {
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 { // the second time through a pooled buffer
			rec := httptest.NewRecorder()
			WriteJSON(rec, http.StatusCreated, v)
			if rec.Code != http.StatusCreated || rec.Header().Get("Content-Type") != "application/json" {
				t.Errorf("%s: status %d, Content-Type %q", name, rec.Code, rec.Header().Get("Content-Type"))
			}
			if !bytes.Equal(rec.Body.Bytes(), want) {
				t.Errorf("%s: body\n%s\nwant\n%s", name, rec.Body.Bytes(), want)
			}
		}
	}
	rec := httptest.NewRecorder()
	WriteJSON(rec, http.StatusOK, map[string]any{"c": make(chan int)})
	if rec.Code != http.StatusInternalServerError || rec.Body.String() != `{"errcode":"M_UNKNOWN","error":"internal server error"}` {
		t.Errorf("unencodable value: %d %s", rec.Code, rec.Body)
	}
	// The next response from the pool carries nothing of the failed one.
	rec = httptest.NewRecorder()
	WriteJSON(rec, http.StatusOK, EmptyObject)
	if rec.Body.String() != "{}" {
		t.Errorf("after a failed encoding: %q", rec.Body)
	}
}

// Every response goes through WriteJSON: with the writer's header map in
// place, it allocates nothing of its own (json.Marshal copied each body
// into a new slice; Header.Set made a slice per value).
func TestWriteJSONAllocations(t *testing.T) {
	w := &discardWriter{h: http.Header{}}
	v := &struct {
		NextBatch string `json:"next_batch"`
		N         int    `json:"n"`
	}{"s1_2_3", 4}
	WriteJSON(w, http.StatusOK, v)
	if n := testing.AllocsPerRun(100, func() { WriteJSON(w, http.StatusOK, v) }); n != 0 {
		t.Errorf("WriteJSON: %v allocations, want 0", n)
	}
}

// CORS sets its four headers from shared values; a handler that changes
// one changes only its own response.
func TestCORSHeaders(t *testing.T) {
	h := CORS(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/change" {
			w.Header().Add("Access-Control-Expose-Headers", "X-Other")
			w.Header().Set("Access-Control-Allow-Origin", "https://example.org")
		}
	}))
	want := map[string]string{
		"Access-Control-Allow-Origin":   "*",
		"Access-Control-Allow-Methods":  "GET, POST, PUT, DELETE, OPTIONS",
		"Access-Control-Allow-Headers":  "X-Requested-With, Content-Type, Authorization",
		"Access-Control-Expose-Headers": "Retry-After, X-Request-Id",
	}
	changed := httptest.NewRecorder()
	h.ServeHTTP(changed, httptest.NewRequest(http.MethodGet, "/change", nil))
	if got := changed.Header().Values("Access-Control-Expose-Headers"); len(got) != 2 || got[1] != "X-Other" {
		t.Errorf("changed response's expose headers: %q", got)
	}
	for _, method := range []string{http.MethodGet, http.MethodOptions} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, "/x", nil))
		for k, v := range want {
			if got := rec.Header().Values(k); len(got) != 1 || got[0] != v {
				t.Errorf("%s: %s = %q, want %q", method, k, got, v)
			}
		}
	}
	w := &discardWriter{h: http.Header{}}
	r := httptest.NewRequest(http.MethodGet, "/x", nil)
	h.ServeHTTP(w, r)
	if n := testing.AllocsPerRun(100, func() { h.ServeHTTP(w, r) }); n != 0 {
		t.Errorf("CORS: %v allocations, want 0", n)
	}
}

// A request without a body passes BodyLimit as it came; one with a body
// is still limited.
func TestBodyLimitWithoutBody(t *testing.T) {
	var body io.ReadCloser
	h := BodyLimit(4)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body = r.Body
		if _, err := ReadBody(r); err != nil {
			WriteError(w, r, err)
		}
	}))
	r := httptest.NewRequest(http.MethodGet, "/x", nil) // Body: http.NoBody
	h.ServeHTTP(httptest.NewRecorder(), r)
	if body != http.NoBody {
		t.Errorf("a bodiless request's body became %T", body)
	}
	rec := httptest.NewRecorder()
	big := httptest.NewRequest(http.MethodPost, "/x", bytes.NewReader([]byte("too long")))
	big.ContentLength = -1 // unknown: only reading can find the limit
	h.ServeHTTP(rec, big)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("a body over the limit: %d %s", rec.Code, rec.Body)
	}
}

// RequestLog's request ID is in the X-Request-Id header, RequestID, and
// the attributes of the request's logger; a request costs RequestLog
// three allocations of its own (the ID, its node, the context) besides
// the status recorder and the request copy.
func TestRequestLogIDAndAllocations(t *testing.T) {
	var seen string
	var logged bytes.Buffer
	base := slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelWarn}))
	h := RequestLog(base)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = RequestID(r.Context())
		if r.URL.Path == "/log" {
			Logger(WithLoggerAttr(r.Context(), "user", "@a:x")).Warn("hello")
		}
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/log", nil))
	id := rec.Header().Get("X-Request-Id")
	if len(id) != 16 || seen != id {
		t.Fatalf("header %q, RequestID %q", id, seen)
	}
	if want := "msg=hello req=" + id + " user=@a:x"; !bytes.Contains(logged.Bytes(), []byte(want)) {
		t.Errorf("log %q lacks %q", logged.String(), want)
	}
	w := &discardWriter{h: http.Header{}}
	r := httptest.NewRequest(http.MethodGet, "/x", nil)
	h.ServeHTTP(w, r)
	if n := testing.AllocsPerRun(100, func() { h.ServeHTTP(w, r) }); n > 5 {
		t.Errorf("RequestLog: %v allocations, want at most 5", n)
	}
}
