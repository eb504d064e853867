// Package httpx holds the HTTP plumbing every component shares: handlers
// that return errors, JSON bodies in and out, and the middleware chain
// (request IDs, logging, CORS, body limits, metrics, panic recovery).
//
// A handler is a func(w, r) error. Returning an *mxerr.Error writes the
// Matrix error body with its status; returning any other error writes
// 500 M_UNKNOWN and logs the error once with the request ID. 4xx errors are
// not logged as errors.
package httpx

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"unicode/utf8"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// HandlerFunc is an HTTP handler that returns an error instead of writing one.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// H adapts a HandlerFunc to http.Handler.
func H(fn HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := fn(w, r); err != nil {
			WriteError(w, r, err)
		}
	})
}

// WriteError writes err as a Matrix error response. It is the one place
// errors become responses.
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	var maxBytes *http.MaxBytesError
	if errors.As(err, &maxBytes) {
		err = mxerr.New(mxerr.TooLarge, "request body too large")
	}
	e, ok := mxerr.As(err)
	if !ok {
		Logger(r.Context()).Error("request failed", "err", err)
		e = mxerr.New(mxerr.Unknown, "internal server error")
	} else if e.Status() >= 500 {
		Logger(r.Context()).Error("request failed", "errcode", e.Code, "err", e)
	}
	if e.Code == mxerr.LimitExceeded {
		if ms, ok := e.Fields["retry_after_ms"].(int64); ok {
			// Spec v1.19: 429 responses carry Retry-After (seconds) too.
			w.Header().Set("Retry-After", formatRetryAfter(ms))
		}
	}
	WriteJSON(w, e.Status(), e.Body())
}

func formatRetryAfter(ms int64) string {
	secs := (ms + 999) / 1000
	if secs < 1 {
		secs = 1
	}
	return itoa(secs)
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// WriteJSON writes v as a JSON response with the given status: the bytes
// json.Marshal(v) gives. It encodes into a pooled buffer, which is written
// out whole, rather than having json.Marshal copy every body into a new
// slice (every woken /sync response passes here).
func WriteJSON(w http.ResponseWriter, status int, v any) {
	jb := jsonBuffers.Get().(*jsonBuffer)
	defer jb.release()
	var body []byte
	if err := jb.enc.Encode(v); err != nil {
		slog.Error("encoding response", "err", err)
		status = http.StatusInternalServerError
		body = []byte(`{"errcode":"M_UNKNOWN","error":"internal server error"}`)
	} else {
		// Encode is Marshal followed by a newline.
		body = bytes.TrimSuffix(jb.buf.Bytes(), []byte{'\n'})
	}
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// WriteEventID writes the 200 response {"event_id": eventID} that the
// event-sending endpoints answer with: the bytes WriteJSON writes for
// map[string]string{"event_id": eventID}, without encoding/json's
// reflection, map sort and pooled encoder (a send's response was about
// one percent of its CPU: docs/benchmarks.md, "perf25").
func WriteEventID(w http.ResponseWriter, eventID string) error {
	body := make([]byte, 0, len(`{"event_id":""}`)+len(eventID))
	body = append(body, `{"event_id":`...)
	body = AppendJSONString(body, eventID)
	WriteRawJSON(w, http.StatusOK, append(body, '}'))
	return nil
}

// AppendJSONString appends s as json.Marshal encodes a string (HTML
// characters escaped): as is when every byte is printable ASCII that
// needs no escape, else through json.Marshal.
func AppendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			enc, _ := json.Marshal(s) // a string always encodes
			return append(dst, enc...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// WriteRawJSON writes body, which must be JSON, as the response with
// the given status.
func WriteRawJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// jsonContentType is the Content-Type header's value of a JSON response,
// shared (see the CORS header values for why that is safe).
var jsonContentType = []string{"application/json"}

// jsonBuffer is a buffer with an Encoder writing into it. Encoder.Encode
// marshals with json.Marshal's options (HTML characters escaped) into the
// encoder's own pooled state and appends it and a newline to buf, with no
// copy in between.
type jsonBuffer struct {
	buf bytes.Buffer
	enc *json.Encoder
}

// maxPooledJSON bounds the buffers kept for reuse: an initial sync's
// megabytes are not held by the pool for the small responses after it.
const maxPooledJSON = 64 << 10

var jsonBuffers = sync.Pool{New: func() any {
	jb := &jsonBuffer{}
	jb.enc = json.NewEncoder(&jb.buf)
	return jb
}}

func (jb *jsonBuffer) release() {
	if jb.buf.Cap() > maxPooledJSON {
		return
	}
	jb.buf.Reset()
	jsonBuffers.Put(jb)
}

// OK writes v with status 200.
func OK(w http.ResponseWriter, v any) error {
	WriteJSON(w, http.StatusOK, v)
	return nil
}

// EmptyObject is the {} body many endpoints answer with.
var EmptyObject = struct{}{}

// ReadBody reads the whole request body, mapping an over-limit body to
// M_TOO_LARGE. The limit itself is set by the BodyLimit middleware.
func ReadBody(r *http.Request) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var maxBytes *http.MaxBytesError
		if errors.As(err, &maxBytes) {
			return nil, mxerr.New(mxerr.TooLarge, "request body too large")
		}
		return nil, mxerr.Wrap(err, mxerr.BadJSON, "could not read request body")
	}
	return body, nil
}

// DecodeJSON reads the request body into v. A body that is not JSON is
// M_NOT_JSON; JSON of the wrong shape is M_BAD_JSON. An empty or null body
// decodes as {} so endpoints whose fields are all optional accept it.
func DecodeJSON(r *http.Request, v any) error {
	body, err := ReadBody(r)
	if err != nil {
		return err
	}
	return Unmarshal(body, v)
}

// Unmarshal decodes body into v with DecodeJSON's error mapping.
func Unmarshal(body []byte, v any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 || string(body) == "null" {
		// Optional bodies: some clients send nothing, some send null.
		body = []byte("{}")
	}
	// JSON text is UTF-8 (RFC 8259 §8.1); encoding/json would accept
	// invalid bytes in strings and decode them as U+FFFD.
	if !utf8.Valid(body) || !json.Valid(body) {
		return mxerr.New(mxerr.NotJSON, "request body is not valid JSON")
	}
	if body[0] != '{' {
		return mxerr.New(mxerr.BadJSON, "request body must be a JSON object")
	}
	if err := json.Unmarshal(body, v); err != nil {
		return mxerr.Wrap(err, mxerr.BadJSON, "request body has the wrong shape: %s", describeJSONError(err))
	}
	return nil
}

func describeJSONError(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		if typeErr.Field != "" {
			return "field " + typeErr.Field + " must be " + typeErr.Type.String()
		}
		return "expected " + typeErr.Type.String()
	}
	return "invalid value"
}
