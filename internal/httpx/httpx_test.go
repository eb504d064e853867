package httpx

import (
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// TestUnmarshalErrors: bodies that are not JSON text, including a string
// with a byte that is not UTF-8, are M_NOT_JSON; valid JSON that is not
// an object is M_BAD_JSON; an empty body is {}.
func TestUnmarshalErrors(t *testing.T) {
	cases := []struct {
		body string
		want mxerr.Code
	}{
		{`{ "test":"a` + "\x81" + `" }`, mxerr.NotJSON},
		{"{\"k\":\"\xff\xfe\"}", mxerr.NotJSON},
		{`{"k":`, mxerr.NotJSON},
		{`[1]`, mxerr.BadJSON},
		{`{"k":"é ☕"}`, ""},
		{``, ""},
	}
	for _, tc := range cases {
		var v map[string]any
		err := Unmarshal([]byte(tc.body), &v)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.body, err)
		case tc.want != "" && !mxerr.Is(err, tc.want):
			t.Errorf("%q: %v, want %s", tc.body, err, tc.want)
		}
	}
}
