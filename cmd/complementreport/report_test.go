package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func readFixture(t *testing.T) *suiteRun {
	t.Helper()
	f, err := os.Open("testdata/run.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := readRun("github.com/matrix-org/complement", f)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestCounts(t *testing.T) {
	r := readFixture(t)
	want := map[string]counts{
		// TestD never finished (the package timed out): it counts as failed.
		"./tests":         {Tests: [3]int{1, 2, 1}, Subtests: [3]int{1, 1, 0}},
		"./tests/csapi":   {Tests: [3]int{1, 3, 0}, Subtests: [3]int{1, 0, 1}},
		"./tests/msc3391": {Tests: [3]int{1, 0, 0}},
	}
	pkgs := r.sortedPackages()
	var names []string
	for _, p := range pkgs {
		names = append(names, p.Name)
		var c counts
		for _, tr := range p.Tests {
			c.add(tr)
		}
		if c != want[p.Name] {
			t.Errorf("%s: counts %+v, want %+v", p.Name, c, want[p.Name])
		}
	}
	// ./internal/docker is not part of the report.
	if got := strings.Join(names, " "); got != "./tests ./tests/csapi ./tests/msc3391" {
		t.Errorf("packages %q", got)
	}
}

func TestSymptom(t *testing.T) {
	r := readFixture(t)
	tests := r.Packages["./tests"].Tests
	// The [CSAPI] trace is routine; the MustDo error is the symptom, with
	// colour codes stripped and the port (different every run) masked.
	if got, want := tests["TestB/two"].Symptom, "CSAPI.MustDo POST http://127.0.0.1:PORT/_matrix/client/v3/register returned non-2xx code: 404 Not Found"; got != want {
		t.Errorf("symptom %q, want %q", got, want)
	}
	if got := tests["TestA"].Symptom; got != "" {
		t.Errorf("a passing test's routine logs gave symptom %q", got)
	}
	if !r.Packages["./tests/csapi"].Tests["TestRoomCreate"].Panicked {
		t.Error("the panic in TestRoomCreate's server logs was missed")
	}
}

func TestReasons(t *testing.T) {
	rs, err := parseReasons(strings.NewReader("# comment\n\nTest\tany test\t—\nTestLogin\tlogin\tissue 2\nTestLogin/sso\tsso\tissue 2\noutput:404 Not Found\tnot built\tissue 3\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, symptom, want string
	}{
		{"TestLogin/sso/redirect", "", "sso"},      // the longest prefix wins
		{"TestLoginFlows", "", "login"},            // prefixes match across names
		{"TestX", "got 404 Not Found", "any test"}, // names win over output
	} {
		if got := rs.lookup(&testResult{Name: c.name, Symptom: c.symptom}).Why; got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
	rs, _ = parseReasons(strings.NewReader("output:404 Not Found\tnot built\tissue 3\n"))
	if got := rs.lookup(&testResult{Name: "TestX", Symptom: "=> 404 Not Found"}).Why; got != "not built" {
		t.Errorf("output match: %q", got)
	}
	if got := rs.lookup(&testResult{Name: "TestX", Symptom: "500"}); got != unclassified {
		t.Errorf("no match: %+v, want unclassified", got)
	}

	for _, bad := range []string{"TestA\tonly two\n", "TestA\ta\tb\nTestA\tc\td\n", "\ta\tb\n"} {
		if _, err := parseReasons(strings.NewReader(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

// TestReportGolden renders the fixture end to end through the command's
// flags. Refresh with go test ./cmd/complementreport -update.
func TestReportGolden(t *testing.T) {
	out := filepath.Join(t.TempDir(), "compliance.md")
	err := run([]string{
		"-commit", "50044edb68c37c7ee4c1506f76d904d3d513fe2c", "-commit-date", "2026-07-01",
		"-myelin", "test", "-reasons", "testdata/reasons.tsv", "-dockerfile", "testdata/Dockerfile", "-out", out, "testdata/run.json",
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	golden := "testdata/compliance.golden"
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("report differs from %s (rerun with -update if intended):\n%s", golden, got)
	}
	for _, s := range []string{
		"| `./tests/csapi` | 1 | 3 | 0 | 1 | 0 | 1 |",
		"| `TestMystery` | unclassified |",
		"| `TestB` | registration is not built yet | issue 2 (accounts) | (in subtest two) |", // a parent fails for its subtest's reason
		"| `TestRoomCreate` | rooms are not built yet | issue 3 (rooms) |",
		"on 2026-07-02", // the date of the last event
		"panic: test timed out",
		"| `./tests` | `TestC` | needs a second homeserver image |",          // skips are listed with their message
		"Leaving out the 2 that Complement skipped itself: 5 of 11 (45.5%).", // skips left out of the second figure
		"| issue 2 (accounts) | 3 |",                                         // failures summed by what they wait on
		"| `MYELIN_ROOM_SERVER_DEFAULT_ROOM_VERSION` | `11` |",               // the image's settings
	} {
		if !strings.Contains(string(got), s) {
			t.Errorf("report lacks %q", s)
		}
	}
}

func TestStdinAndErrors(t *testing.T) {
	fixture, err := os.ReadFile("testdata/run.json")
	if err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	if err := run([]string{"-commit", "abc", "-reasons", "testdata/reasons.tsv", "-dockerfile", "", "-out", "-"}, bytes.NewReader(fixture), &stdout); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "# Complement compliance") {
		t.Error("no report on stdout")
	}
	if err := run([]string{"-reasons", "testdata/reasons.tsv", "-dockerfile", "", "-out", "-"}, bytes.NewReader(fixture), &stdout); err == nil {
		t.Error("ran without -commit")
	}
	if err := run([]string{"-commit", "abc", "-reasons", "testdata/reasons.tsv", "-dockerfile", "", "-out", "-"}, strings.NewReader("not json\n"), &stdout); err == nil {
		t.Error("wrote a report from input without results")
	}
}

// TestCheckedInReasons keeps the real mapping file parseable.
func TestCheckedInReasons(t *testing.T) {
	f, err := os.Open("../../build/complement/failure-reasons.tsv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rs, err := parseReasons(f)
	if err != nil {
		t.Fatalf("build/complement/failure-reasons.tsv: %v", err)
	}
	if len(rs.prefixes)+len(rs.outputs) == 0 {
		t.Fatal("build/complement/failure-reasons.tsv maps nothing")
	}
}

// TestCheckedInDockerfile keeps the real image's settings readable.
func TestCheckedInDockerfile(t *testing.T) {
	f, err := os.Open("../../build/complement/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := imageSettings(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) == 0 {
		t.Error("no MYELIN_* settings read from build/complement/Dockerfile")
	}
}

// TestCachedRunRefused: a package go test replayed from its cache ("ok
// <pkg> (cached)") is refused: its results may come from an older image.
func TestCachedRunRefused(t *testing.T) {
	dir := t.TempDir()
	jsonl := `{"Time":"2026-11-27T10:36:53Z","Action":"start","Package":"github.com/matrix-org/complement/tests"}
{"Time":"2026-11-27T10:36:53Z","Action":"output","Package":"github.com/matrix-org/complement/tests","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Time":"2026-11-27T10:36:53Z","Action":"pass","Package":"github.com/matrix-org/complement/tests","Test":"TestA","Elapsed":0}
{"Time":"2026-11-27T10:36:53Z","Action":"output","Package":"github.com/matrix-org/complement/tests","Output":"ok  \tgithub.com/matrix-org/complement/tests\t(cached)\n"}
{"Time":"2026-11-27T10:36:53Z","Action":"pass","Package":"github.com/matrix-org/complement/tests","Elapsed":0.008}
`
	in := filepath.Join(dir, "run.json")
	if err := os.WriteFile(in, []byte(jsonl), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "compliance.md")
	args := []string{"-commit", "abc", "-reasons", "testdata/reasons.tsv", "-out", out, "-dockerfile", "", in}
	err := run_(args)
	if err == nil || !strings.Contains(err.Error(), "-count=1") {
		t.Fatalf("a cached run: err = %v, want a refusal naming -count=1", err)
	}
	if _, statErr := os.Stat(out); !os.IsNotExist(statErr) {
		t.Fatalf("a report was written for a cached run (stat: %v)", statErr)
	}
	// The same run, really executed, is reported.
	fresh := strings.Replace(jsonl, "\\t(cached)", "\\t0.008s", 1)
	if err := os.WriteFile(in, []byte(fresh), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run_(args); err != nil {
		t.Fatalf("an executed run: %v", err)
	}
}

func run_(args []string) error {
	return run(args, strings.NewReader(""), &bytes.Buffer{})
}
