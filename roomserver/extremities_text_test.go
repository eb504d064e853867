package roomserver

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestExtremitiesText: the extremities column's text is json.Marshal's,
// byte for byte, for every list (saveRoomIf refuses a row whose stored
// text differs from it, which would rebuild every pipelined send), and
// a list of room version 3+ event IDs costs one allocation.
func TestExtremitiesText(t *testing.T) {
	v12 := "$Fe6mTJHHb4iL1DmbL9nVEoyxlKRAaeHHfkx-K4ujTTg"
	for _, ids := range [][]string{
		nil,
		{},
		{v12},
		{v12, "$KSoY4LjodLCy5Q0yuZBMFUU_kK-KlMOQwSRQPvXD2pM"},
		{"$143273582443PhrSn:example.org"}, // room versions 1 and 2
		{"$a<b:example.org"},               // HTML characters: escaped
		{"$a>b:example.org"},
		{"$a&b:example.org", v12},
		{`$q"uote:example.org`},
		{`$back\slash:example.org`},
		{"$ctl\x01:example.org"},
		{"$del\x7f:example.org"},
		{"$é:example.org"},
		{"$\u2028:example.org"}, // escaped by encoding/json
		{"$bad\xff:example.org"},
		{""},
		{"~!@#$%^*()_+-=[]{}|;':,./?` 0123456789"},
	} {
		want, err := json.Marshal(ids)
		if err != nil {
			t.Fatal(err)
		}
		got, err := extremitiesText(ids)
		if err != nil || got != string(want) {
			t.Errorf("extremitiesText(%q) = %s, %v; want %s", ids, got, err, want)
		}
	}
	ids := []string{v12, strings.Replace(v12, "F", "G", 1)}
	if n := testing.AllocsPerRun(100, func() { extremitiesText(ids) }); n != 1 {
		t.Errorf("extremitiesText allocates %v times, want 1", n)
	}
}
