package config

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// serverNameGrammar is the spec's server name grammar (appendices, "Server
// Name") as a regular expression: validServerName must accept exactly the
// strings it matches.
var serverNameGrammar = regexp.MustCompile(`^(\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Za-z.-]{1,255})(:[0-9]{1,5})?$`)

// TestValidServerNameMatchesGrammar compares the hand-written check with the
// regular expression on boundary cases and on random strings built from the
// grammar's own characters (and a few that are not in it).
func TestValidServerNameMatchesGrammar(t *testing.T) {
	cases := []string{
		"", "a", "example.org", "example.org:8448", "matrix.example.org:1", "example.org:", "example.org:123456",
		"example.org:12345", "example.org:8a", "example.org::8", "1.2.3.4", "1.2.3.4:80", "-", "a_b", "a b", "é.org",
		"[::1]", "[::1]:8448", "[:]", "[1]", "[::1", "::1", "[::1]:", "[::1]x", "[::1]]", "[[::1]", "[]", "[::g]",
		"[" + strings.Repeat("a", 45) + "]", "[" + strings.Repeat("a", 46) + "]",
		strings.Repeat("a", 255), strings.Repeat("a", 256), strings.Repeat("a", 255) + ":1", strings.Repeat("a", 256) + ":1",
		"a:1:2", "[::1]:1:2", "example.org\n", "\nexample.org", "example.org:8448\n",
	}
	alphabet := []byte("aZ09.-:[]fFgG_ \n")
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		n := rng.IntN(12)
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		cases = append(cases, string(b))
	}
	// Long names around the length limits, with and without ports.
	for _, n := range []int{1, 2, 44, 45, 46, 254, 255, 256} {
		h := strings.Repeat("b", n)
		cases = append(cases, h, h+":8448", "["+h+"]", "["+h+"]:8448", "["+strings.Repeat(":", n)+"]")
	}
	matched := 0
	for _, c := range cases {
		want := serverNameGrammar.MatchString(c)
		if want {
			matched++
		}
		if got := validServerName(c); got != want {
			t.Errorf("validServerName(%q) = %v, the grammar says %v", c, got, want)
		}
	}
	if matched < 1000 {
		t.Errorf("only %d of %d cases are valid names: the corpus does not exercise the accepting paths", matched, len(cases))
	}
}
