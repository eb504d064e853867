package roomserver

import (
	"bytes"
	"math/rand"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// plainContents are content bodies canonicalPlain must take; notPlain
// ones it must leave to gomatrixserverlib (escapes, whitespace, numbers
// it does not vouch for, repeated keys, deep nesting, not JSON).
var (
	plainContents = []string{
		`{}`,
		`{"body":"hi","msgtype":"m.text"}`,
		`{"msgtype":"m.text","body":"hi"}`,
		"{\"msgtype\":\"m.text\",\"body\":\"hi ü 😀 \u2028 </script> &\",\"m.mentions\":{}}",
		`{"msgtype":"m.text","body":"b","myelin_bench":{"run":"r1","seq":12,"sent_ms":1764412345678}}`,
		`{"z":[3,2,1,{"b":true,"a":false}],"y":null,"x":-5,"w":0,"v":[],"u":[[]],"":"empty key"}`,
		`{"m.mentions":{"user_ids":["@b:x","@a:x"],"room":true},"m.relates_to":{"rel_type":"m.thread","event_id":"$e"}}`,
		`{"n":999999999999999,"m":-999999999999999}`,
		`{"b":1,"a":{"d":2,"c":{"f":3,"e":4}}}`,
		`{"ab":1,"a":2,"b":3,"aa":4,"A":5,"é":6,"e":7}`,
		"{\"bad utf-8\":\"\xff\xfe\",\"\xc3\":1}",
		strings.Repeat(`{"a":`, maxPlainDepth) + `1` + strings.Repeat(`}`, maxPlainDepth),
	}
	notPlain = []string{
		``,
		`[]`,
		`"s"`,
		`{"a":"x"} `,
		` {"a":"x"}`,
		`{"a": "x"}`,
		`{"a":"line\nbreak"}`,
		`{"a":"\u00e9"}`,
		`{"a":"\/"}`,
		`{"a\"":1}`,
		`{"a":1.5}`,
		`{"a":1e3}`,
		`{"a":1E3}`,
		`{"a":-0}`,
		`{"a":-0.0}`,
		`{"a":007}`,
		`{"a":9007199254740991}`,
		`{"a":9007199254740992}`,
		`{"a":-9007199254740992}`,
		`{"a":1234567890123456}`,
		`{"a":1,"a":2}`,
		`{"b":1,"a":2,"b":3}`,
		`{"x":{"a":1,"a":1}}`,
		`{"a":[1,{"k":1,"k":2}]}`,
		strings.Repeat(`{"a":`, maxPlainDepth+1) + `1` + strings.Repeat(`}`, maxPlainDepth+1),
		`{"a":tru}`,
		`{"a":truex}`,
		`{"a":nul}`,
		`{"a":1`,
		`{"a":1,}`,
		`{"a"}`,
		`{"a":}`,
		`{"a":[1,]}`,
		`{"a":[1 2]}`,
		`{"a":"x"}}`,
		`{"a":"unterminated}`,
		`{"a":-}`,
		`{"a":+1}`,
		"{\"a\":\"tab\there\"}",
	}
)

// TestCanonicalContentMatchesLibrary: for every room version, what
// canonicalContent returns (bytes, or whether it fails) is what
// gomatrixserverlib.EnforcedCanonicalJSON returns, on plain content
// (the fast path) and on content the fast path declines.
func TestCanonicalContentMatchesLibrary(t *testing.T) {
	for _, s := range plainContents {
		if _, ok := canonicalPlain([]byte(s)); !ok {
			t.Errorf("%q: declined, want the fast path", s)
		}
	}
	for _, s := range notPlain {
		if out, ok := canonicalPlain([]byte(s)); ok {
			t.Errorf("%q: fast path took it (%q), want it declined", s, out)
		}
	}
	for _, impl := range gomatrixserverlib.RoomVersions() {
		for _, s := range append(append([]string{}, plainContents...), notPlain...) {
			want, wantErr := gomatrixserverlib.EnforcedCanonicalJSON([]byte(s), impl.Version())
			got, err := canonicalContent(impl, []byte(s))
			if (err != nil) != (wantErr != nil) || !bytes.Equal(got, want) {
				t.Errorf("v%s %q:\n got  %q, %v\n want %q, %v", impl.Version(), s, got, err, want, wantErr)
			}
		}
	}
}

// TestCanonicalPlainRandomised: over many random mutations of the
// tables above and of the client-JSON checks' edge cases, whatever
// canonicalPlain takes is what gomatrixserverlib writes in every room
// version, and, when valid UTF-8, passes validateClientJSON (which
// checkSendRequest then skips).
func TestCanonicalPlainRandomised(t *testing.T) {
	if maxPlainDepth >= maxJSONDepth {
		t.Fatalf("maxPlainDepth %d must stay below validateClientJSON's maxJSONDepth %d", maxPlainDepth, maxJSONDepth)
	}
	seeds := append(append([]string{}, plainContents...), notPlain...)
	seeds = append(seeds, `{"n":-9007199254740991}`, `{"a":"x","\u0061":"y"}`, `{"a":"\ud83d"}`, "{\"a\":\"\xc3\x28\"}")
	alphabet := []byte(`{}[]":,.-+0123456789eEtruefalsnl \ab/u"` + "\x00\x1f\xff\xc3\xa9")
	versions := gomatrixserverlib.RoomVersions()
	rng := rand.New(rand.NewSource(1))
	taken := 0
	for i := 0; i < 30000; i++ {
		b := []byte(seeds[rng.Intn(len(seeds))])
		for n := rng.Intn(3) + 1; n > 0; n-- {
			switch op := rng.Intn(3); {
			case op == 0 && len(b) > 0:
				b[rng.Intn(len(b))] = alphabet[rng.Intn(len(alphabet))]
			case op == 1:
				p := rng.Intn(len(b) + 1)
				b = append(b[:p], append([]byte{alphabet[rng.Intn(len(alphabet))]}, b[p:]...)...)
			case len(b) > 0:
				p := rng.Intn(len(b))
				b = append(b[:p], b[p+1:]...)
			}
		}
		out, ok := canonicalPlain(b)
		if !ok {
			continue
		}
		taken++
		for _, impl := range versions {
			want, err := gomatrixserverlib.EnforcedCanonicalJSON(b, impl.Version())
			if err != nil || !bytes.Equal(out, want) {
				t.Fatalf("v%s %q:\n fast %q\n want %q, %v", impl.Version(), b, out, want, err)
			}
		}
		if err := validateClientJSON(b); utf8.Valid(b) && err != nil {
			t.Fatalf("%q: taken by canonicalPlain, valid UTF-8, refused by validateClientJSON: %v", b, err)
		}
	}
	if taken < 1000 {
		t.Fatalf("only %d of the mutations were plain: the test checks too little", taken)
	}
}

// TestCheckSendRequestContent: checkSendRequest refuses exactly the
// content validateClientJSON refuses, and hands on plain content in its
// canonical form, other content as it came.
func TestCheckSendRequestContent(t *testing.T) {
	s := &Server{serverName: spec.ServerName("hs")}
	impl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV11)
	for _, content := range append(append([]string{
		"{\"body\":\"\xff\"}", "{\"\xc3\":\"x\"}", `{"body":"\ud800"}`, `{"n":1e3}`, `{"a":1,"a":1}`,
		`{"n":9007199254740992}`, `{"n":9007199254740991}`, `{"a" : "spaced"}`,
	}, plainContents...), notPlain...) {
		if content == "" || content[0] != '{' {
			continue // refused before the JSON checks
		}
		req := SendEventRequest{RoomID: "!r:hs", Sender: "@a:hs", Type: "m.room.message", Content: []byte(content)}
		err := s.checkSendRequest(&req)
		wantErr := validateClientJSON([]byte(content))
		if (err != nil) != (wantErr != nil) {
			t.Errorf("%q: checkSendRequest says %v, validateClientJSON %v", content, err, wantErr)
			continue
		}
		if err != nil {
			continue
		}
		want := content
		if _, ok := canonicalPlain([]byte(content)); ok {
			canonical, err := gomatrixserverlib.EnforcedCanonicalJSON([]byte(content), impl.Version())
			if err != nil {
				t.Fatal(err)
			}
			want = string(canonical)
		}
		if string(req.Content) != want {
			t.Errorf("%q: content handed on as %q, want %q", content, req.Content, want)
		}
	}
}

// TestCanonicalContentOwnCopy: the canonical content is a slice of its
// own even when the content was canonical already (the event keeps it;
// the caller's buffer stays the caller's).
func TestCanonicalContentOwnCopy(t *testing.T) {
	impl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV10)
	in := []byte(`{"body":"hi","msgtype":"m.text"}`)
	out, err := canonicalContent(impl, in)
	if err != nil || string(out) != string(in) {
		t.Fatalf("got %q, %v", out, err)
	}
	in[2] = 'X'
	if string(out) != `{"body":"hi","msgtype":"m.text"}` {
		t.Errorf("the output shares the input's bytes: %q", out)
	}
}

// FuzzCanonicalContent: whatever the fast path takes, gomatrixserverlib
// takes in every room version and writes the same bytes.
func FuzzCanonicalContent(f *testing.F) {
	for _, s := range plainContents {
		f.Add([]byte(s))
	}
	for _, s := range notPlain {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, ok := canonicalPlain(in)
		if !ok {
			return
		}
		for _, impl := range gomatrixserverlib.RoomVersions() {
			want, err := gomatrixserverlib.EnforcedCanonicalJSON(in, impl.Version())
			if err != nil || !bytes.Equal(out, want) {
				t.Fatalf("v%s %q:\n fast %q\n want %q, %v", impl.Version(), in, out, want, err)
			}
		}
	})
}

// BenchmarkCanonicalContent: a client's message content, the fast path
// against gomatrixserverlib's.
func BenchmarkCanonicalContent(b *testing.B) {
	impl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV10)
	content := []byte(`{"msgtype":"m.text","body":"b","myelin_bench":{"run":"r1","seq":12,"sent_ms":1764412345678}}`)
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := canonicalContent(impl, content); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("library", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := gomatrixserverlib.EnforcedCanonicalJSON(content, impl.Version()); err != nil {
				b.Fatal(err)
			}
		}
	})
}
