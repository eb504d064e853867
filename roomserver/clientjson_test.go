package roomserver

import (
	"encoding/json"
	"errors"
	"math/rand"
	"strings"
	"testing"
)

// TestClientJSONCheckMatchesDecoder: checkClientJSON (gjson, one pass)
// accepts exactly what encoding/json accepts as one JSON value
// (json.Valid) that also passes walkJSON with the same rules, on
// hand-picked edge cases and on many random mutations of them. (walkJSON
// alone lets trailing bytes that are not a JSON token through, such as
// `{"a":1}x`; checkClientJSON refuses them.)
func TestClientJSONCheckMatchesDecoder(t *testing.T) {
	seeds := []string{
		`{}`, `[]`, `{"a":1}`, ` {"a" : [1, 2, {"b": null}], "c": true, "d": false } `,
		`{"n":9007199254740991,"m":-9007199254740991}`, `{"n":9007199254740992}`, `{"n":-9007199254740992}`,
		`{"n":-0}`, `{"n":0}`, `{"n":1.0}`, `{"n":1e3}`, `{"n":1E3}`, `{"n":01}`, `{"n":-}`, `{"n":1.}`,
		`{"n":99999999999999999999999}`, `{"a":"x","a":"y"}`, `{"a":"x","\u0061":"y"}`, `{"a":{"b":1,"b":2}}`,
		`{"a":"\n"}`, "{\"a\":\"\x01\"}", `{"a":"\x"}`, `{"a":"\u00e9\ud83d\ude00"}`, `{"a":"\/\b\f\n\r\t\\\""}`,
		`{"a":1}x`, `{"a":1} {}`, `{"a":1`, `{"a":}`, `{,}`, `{"a":1,}`, `[1,]`, `[1 2]`, `"str"`, `123`, `null`,
		`{"a":[[[[[[[[[[1]]]]]]]]]]}`, `{"a":tru}`, `{"a":nul}`, `{'a':1}`, `{"a":NaN}`, `{"a":Infinity}`,
		`{"é":"ü","emoji😀":[-1,-2]}`, "{\"a\":1}\n", "\t[\r\n]",
		"{\"x\":" + strings.Repeat("[", 100) + strings.Repeat("]", 100) + "}",
		"{\"x\":" + strings.Repeat("[", 101) + strings.Repeat("]", 101) + "}",
		strings.Repeat("[", 100) + "1" + strings.Repeat("]", 100),
		strings.Repeat("[", 101) + "1" + strings.Repeat("]", 101),
	}
	same := func(in string) {
		t.Helper()
		slow := walkJSON([]byte(in), jsonRules{numbers: true})
		if slow == nil && !json.Valid([]byte(in)) {
			slow = errors.New("not valid JSON")
		}
		fast := checkClientJSON([]byte(in))
		if (slow == nil) != (fast == nil) {
			t.Fatalf("%q: encoding/json says %v, gjson says %v", in, slow, fast)
		}
	}
	for _, s := range seeds {
		same(s)
	}
	alphabet := []byte(`{}[]":,.-+0123456789eEtruefalsnl \ab/u"` + "\x00\x1f\xff")
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 200000; i++ {
		b := []byte(seeds[rng.Intn(len(seeds))])
		for n := rng.Intn(3) + 1; n > 0; n-- {
			switch op := rng.Intn(3); {
			case op == 0 && len(b) > 0: // replace
				b[rng.Intn(len(b))] = alphabet[rng.Intn(len(alphabet))]
			case op == 1: // insert
				p := rng.Intn(len(b) + 1)
				b = append(b[:p], append([]byte{alphabet[rng.Intn(len(alphabet))]}, b[p:]...)...)
			case len(b) > 0: // delete
				p := rng.Intn(len(b))
				b = append(b[:p], b[p+1:]...)
			}
		}
		same(string(b))
	}
}
