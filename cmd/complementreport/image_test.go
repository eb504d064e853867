package main

import (
	"fmt"
	"strings"
	"testing"
)

func TestImageSettings(t *testing.T) {
	df := `# comment
FROM scratch
COPY myelin /myelin
ENV MYELIN_A=1 \
    # a comment inside the instruction
    OTHER=x \
    MYELIN_ROOM_SERVER_DEFAULT_ROOM_VERSION=11
ENV MYELIN_B="two"
EXPOSE 8008
`
	got, err := imageSettings(strings.NewReader(df))
	if err != nil {
		t.Fatal(err)
	}
	want := []setting{{"MYELIN_A", "1"}, {"MYELIN_ROOM_SERVER_DEFAULT_ROOM_VERSION", "11"}, {"MYELIN_B", "two"}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("setting %d: got %v, want %v", i, got[i], want[i])
		}
	}
	if _, err := imageSettings(strings.NewReader("ENV MYELIN_A 1\n")); err == nil {
		t.Error("the legacy ENV NAME value form was read without an error")
	}

	var b strings.Builder
	renderImage(func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }, got)
	for _, s := range []string{"| `MYELIN_B` | `two` |", "are room version 11 here; a default install creates room version 12"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("section lacks %q:\n%s", s, b.String())
		}
	}
}
