package clientapi

import (
	"encoding/binary"
	"strings"
	"testing"
)

// TestFTS4Query: search terms become FTS4 expressions made only of
// words, so nothing a user types is read as an FTS operator.
func TestFTS4Query(t *testing.T) {
	for _, tc := range []struct{ term, want string }{
		{"hello", "hello*"},
		{"Message 4", "message* 4*"},
		{`martians "and men"`, `martians* "and men"`},
		{`NEAR OR -x* "`, "near* or* x*"},
		{"hello-world: ü", "hello* world* ü*"},
		{`  "" ; `, ""},
	} {
		if got := fts4Query(tc.term); got != tc.want {
			t.Errorf("fts4Query(%q) = %q, want %q", tc.term, got, tc.want)
		}
	}
}

// matchinfo builds a 'pcnalx' blob for one column.
func matchinfo(docs, avgLen, length uint32, phrases ...[3]uint32) []byte {
	vals := []uint32{uint32(len(phrases)), 1, docs, avgLen, length}
	for _, p := range phrases {
		vals = append(vals, p[:]...)
	}
	out := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.NativeEndian.PutUint32(out[4*i:], v)
	}
	return out
}

// TestBM25: more hits, shorter documents and rarer words rank higher.
func TestBM25(t *testing.T) {
	base := bm25(matchinfo(100, 10, 10, [3]uint32{1, 10, 10}))
	if base <= 0 {
		t.Fatalf("a match scores %v", base)
	}
	if more := bm25(matchinfo(100, 10, 10, [3]uint32{3, 12, 10})); more <= base {
		t.Errorf("three hits %v <= one hit %v", more, base)
	}
	if longer := bm25(matchinfo(100, 10, 40, [3]uint32{1, 10, 10})); longer >= base {
		t.Errorf("longer document %v >= %v", longer, base)
	}
	if rare := bm25(matchinfo(100, 10, 10, [3]uint32{1, 1, 1})); rare <= base {
		t.Errorf("rare word %v <= common word %v", rare, base)
	}
	if bm25(nil) != 0 || bm25([]byte{1, 0}) != 0 {
		t.Error("a short blob does not score 0")
	}
}

// TestHighlightWords reads matched words from FTS4 offsets() and from
// ts_headline's markers.
func TestHighlightWords(t *testing.T) {
	body := "Hello hello wörld"
	if got := strings.Join(offsetWords("0 0 0 5 0 0 6 5 0 1 12 6 0 0 99 3", body), ","); got != "Hello,hello,wörld" {
		t.Errorf("offsetWords = %q", got)
	}
	if got := strings.Join(markedWords("a \x01Redacted\x02 b \x01redact\x02 \x01open"), ","); got != "Redacted,redact" {
		t.Errorf("markedWords = %q", got)
	}
}
