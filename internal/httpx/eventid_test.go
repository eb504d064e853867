package httpx

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
)

// TestWriteEventIDMatchesWriteJSON: WriteEventID writes the status,
// Content-Type and body WriteJSON writes for {"event_id": id}, for IDs
// of every room version's shape and for strings that need escapes (HTML
// characters, quotes, control characters, non-ASCII, invalid UTF-8).
func TestWriteEventIDMatchesWriteJSON(t *testing.T) {
	ids := []string{
		"", "$abc:example.org", "$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg",
		"$a<b>&c", `$q"uote`, `$back\slash`, "$tab\tnl\n", "$\x00\x1f\x7f",
		"$é€😀", "$\u2028\u2029", "$\xff\xfe",
	}
	for _, id := range ids {
		want := httptest.NewRecorder()
		WriteJSON(want, 200, map[string]string{"event_id": id})
		got := httptest.NewRecorder()
		if err := WriteEventID(got, id); err != nil {
			t.Fatalf("%q: %v", id, err)
		}
		if got.Code != want.Code || got.Body.String() != want.Body.String() ||
			got.Header().Get("Content-Type") != want.Header().Get("Content-Type") {
			t.Errorf("%q: got %d %q %q; WriteJSON writes %d %q %q", id, got.Code, got.Header().Get("Content-Type"), got.Body,
				want.Code, want.Header().Get("Content-Type"), want.Body)
		}
		var back map[string]string
		if err := json.Unmarshal(got.Body.Bytes(), &back); err != nil || len(back) != 1 {
			t.Errorf("%q: body %q does not decode to one member: %v", id, got.Body, err)
		}
	}
}

// BenchmarkWriteEventID: a send's response, against WriteJSON of the
// map it replaced (docs/benchmarks.md, "perf25").
func BenchmarkWriteEventID(b *testing.B) {
	const id = "$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg"
	w := httptest.NewRecorder()
	b.Run("WriteEventID", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w.Body.Reset()
			_ = WriteEventID(w, id)
		}
	})
	b.Run("WriteJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w.Body.Reset()
			WriteJSON(w, 200, map[string]string{"event_id": id})
		}
	})
}
