package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"
)

// event is one line of `go test -json` output (cmd/test2json).
type event struct {
	Time    time.Time
	Action  string // start, run, pause, cont, pass, fail, skip, output, bench, build-output, build-fail
	Package string
	Test    string
	Output  string
}

// outcome of one test.
type outcome string

const (
	passed  outcome = "pass"
	failed  outcome = "fail"
	skipped outcome = "skip"
	// noResult: the test started but never reported (the package timed
	// out or its binary crashed). It counts as a failure.
	noResult outcome = "no result"
)

// testResult is one test or subtest.
type testResult struct {
	Package string // e.g. ./tests/csapi
	Name    string // e.g. TestLogin/parallel/POST_/login_with_password
	Outcome outcome
	// Symptom is the test's own last error line (helper log lines and
	// server logs left out), without its file:line prefix.
	Symptom string
	// Panicked: the test's output (which holds the server logs Complement
	// prints on failure) shows a panic, in the server or the test.
	Panicked bool
	output   []string
}

// IsSubtest reports whether the result is a subtest.
func (r *testResult) IsSubtest() bool { return strings.Contains(r.Name, "/") }

// packageResult is one Go package of the suite.
type packageResult struct {
	Name   string
	Tests  map[string]*testResult
	Failed bool     // the package itself failed (includes build failures and timeouts)
	Output []string // package-level output (build errors, panics, timeouts)
}

// suiteRun is everything read from one or more `go test -json` streams.
type suiteRun struct {
	Packages map[string]*packageResult
	// Last is the time of the last event: when the run ended.
	Last time.Time
}

// readRun parses test2json streams. Lines that are not JSON (go test
// prints some before the stream starts) are ignored. modulePrefix is
// stripped from package paths, which are then written as ./path.
func readRun(modulePrefix string, inputs ...io.Reader) (*suiteRun, error) {
	r := &suiteRun{Packages: map[string]*packageResult{}}
	for _, in := range inputs {
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			line := sc.Bytes()
			if len(line) == 0 || line[0] != '{' {
				continue
			}
			var ev event
			if err := json.Unmarshal(line, &ev); err != nil {
				continue
			}
			r.add(modulePrefix, ev)
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("reading go test -json output: %w", err)
		}
	}
	for _, p := range r.Packages {
		for _, t := range p.Tests {
			t.Symptom = symptom(t.output)
			t.Panicked = panicked(t.output)
			t.output = nil
		}
	}
	return r, nil
}

func (r *suiteRun) add(modulePrefix string, ev event) {
	if ev.Package == "" {
		return
	}
	if ev.Time.After(r.Last) {
		r.Last = ev.Time
	}
	pkg := r.pkg(packageName(modulePrefix, ev.Package))
	if ev.Test == "" {
		switch ev.Action {
		case "fail", "build-fail":
			pkg.Failed = true
		case "output", "build-output":
			pkg.Output = append(pkg.Output, ev.Output)
		}
		return
	}
	t := pkg.Tests[ev.Test]
	if t == nil {
		t = &testResult{Package: pkg.Name, Name: ev.Test, Outcome: noResult}
		pkg.Tests[ev.Test] = t
	}
	switch ev.Action {
	case "pass":
		t.Outcome = passed
	case "fail":
		t.Outcome = failed
	case "skip":
		t.Outcome = skipped
	case "output":
		t.output = append(t.output, ev.Output)
	}
}

func (r *suiteRun) pkg(name string) *packageResult {
	p := r.Packages[name]
	if p == nil {
		p = &packageResult{Name: name, Tests: map[string]*testResult{}}
		r.Packages[name] = p
	}
	return p
}

func packageName(modulePrefix, importPath string) string {
	rel := strings.TrimPrefix(strings.TrimPrefix(importPath, modulePrefix), "/")
	if rel == importPath && modulePrefix != "" {
		return importPath // not in the module: keep it whole
	}
	return "./" + rel
}

// inScope reports whether a package belongs in the report: ./tests,
// ./tests/csapi and the ./tests/msc* packages.
func inScope(pkg string) bool {
	return pkg == "./tests" || pkg == "./tests/csapi" || strings.HasPrefix(pkg, "./tests/msc")
}

// sortedPackages returns the in-scope packages: ./tests, ./tests/csapi,
// then the MSC packages by name.
func (r *suiteRun) sortedPackages() []*packageResult {
	var out []*packageResult
	for name, p := range r.Packages {
		if inScope(name) {
			out = append(out, p)
		}
	}
	rank := func(n string) string {
		switch n {
		case "./tests":
			return "0"
		case "./tests/csapi":
			return "1"
		}
		return "2" + n
	}
	sort.Slice(out, func(i, j int) bool { return rank(out[i].Name) < rank(out[j].Name) })
	return out
}

// sortedTests returns a package's tests by name.
func (p *packageResult) sortedTests() []*testResult {
	out := make([]*testResult, 0, len(p.Tests))
	for _, t := range p.Tests {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// firstFailedSubtest returns t's failed subtest that sorts first (one
// that failed itself, not only through its own subtests, when possible),
// or nil.
func (p *packageResult) firstFailedSubtest(t *testResult) *testResult {
	var first *testResult
	for _, sub := range p.sortedTests() {
		if !strings.HasPrefix(sub.Name, t.Name+"/") || (sub.Outcome != failed && sub.Outcome != noResult) {
			continue
		}
		if sub.Symptom != "" {
			return sub
		}
		if first == nil {
			first = sub
		}
	}
	return first
}

var (
	// logLineRE matches a t.Log/t.Error line: "    file_test.go:123: message".
	logLineRE = regexp.MustCompile(`^\s+[\w.-]+\.go:\d+: (.*)$`)
	ansiRE    = regexp.MustCompile("\x1b\\[[0-9;]*m")
	portRE    = regexp.MustCompile(`(127\.0\.0\.1|localhost):\d+`)
)

// notErrors are prefixes of log lines Complement writes in passing tests
// too: request traces, timings, warnings, teardown notes.
var notErrors = []string{"[CSAPI]", "Deploy times", "WARNING:", "Request ", "Response "}

// symptom picks the error a failed test reported: its last log line that
// is not routine logging. Host ports, which change every run, are
// replaced by PORT so the report diffs cleanly.
func symptom(output []string) string {
	var last string
	for _, line := range output {
		m := logLineRE.FindStringSubmatch(strings.TrimRight(line, "\n"))
		if m == nil {
			continue
		}
		msg := strings.TrimSpace(ansiRE.ReplaceAllString(m[1], ""))
		if msg == "" || strings.Contains(msg, "complete: destroying HS deployment") {
			continue
		}
		routine := false
		for _, p := range notErrors {
			if strings.HasPrefix(msg, p) {
				routine = true
				break
			}
		}
		if !routine {
			last = msg
		}
	}
	return portRE.ReplaceAllString(last, "$1:PORT")
}

// panicked reports whether output shows a panic: Myelin's recovered
// handler panics ("panic in handler") or an unrecovered Go panic.
func panicked(output []string) bool {
	for _, line := range output {
		if strings.Contains(line, "panic in handler") || strings.HasPrefix(strings.TrimSpace(line), "panic: ") {
			return true
		}
	}
	return false
}

// cachedPackages names the packages whose result go test replayed from
// its build cache ("ok <pkg> (cached)") instead of running them: its
// cache key holds the environment, not the image the tests start, so a
// rebuilt image under the same name can be reported with an older
// image's results.
func (r *suiteRun) cachedPackages() []string {
	var names []string
	for _, p := range r.sortedPackages() {
		for _, line := range p.Output {
			if strings.HasSuffix(strings.TrimRight(line, "\n"), "\t(cached)") {
				names = append(names, p.Name)
				break
			}
		}
	}
	return names
}
