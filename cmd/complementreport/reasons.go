package main

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// reason explains why a test fails and what it waits on.
type reason struct {
	Why     string // e.g. "registration is not built yet"
	WaitsOn string // e.g. "issue 2 (accounts)"
}

var unclassified = reason{Why: "unclassified", WaitsOn: "—"}

// reasons maps failures to reasons. A line of the mapping file is
//
//	<match> TAB <why> TAB <waits on>
//
// where match is a test-name prefix (TestFederation, TestLogin/parallel),
// or "output:" followed by text the failure message contains. Test-name
// prefixes win over output matches; the longest prefix wins; among output
// matches the first line in the file wins. '#' starts a comment line.
type reasons struct {
	prefixes map[string]reason
	outputs  []outputReason
}

type outputReason struct {
	contains string
	reason
}

func parseReasons(in io.Reader) (*reasons, error) {
	rs := &reasons{prefixes: map[string]reason{}}
	sc := bufio.NewScanner(in)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		fields := strings.Split(line, "\t")
		if len(fields) != 3 || fields[0] == "" || fields[1] == "" || fields[2] == "" {
			return nil, fmt.Errorf("line %d: want 3 tab-separated fields (match, reason, waits on), got %q", n, line)
		}
		r := reason{Why: fields[1], WaitsOn: fields[2]}
		if text, ok := strings.CutPrefix(fields[0], "output:"); ok {
			rs.outputs = append(rs.outputs, outputReason{contains: text, reason: r})
			continue
		}
		if _, dup := rs.prefixes[fields[0]]; dup {
			return nil, fmt.Errorf("line %d: %q is mapped twice", n, fields[0])
		}
		rs.prefixes[fields[0]] = r
	}
	return rs, sc.Err()
}

// lookup returns the reason for a failed test, or unclassified.
func (rs *reasons) lookup(t *testResult) reason {
	best, bestLen := unclassified, -1
	for prefix, r := range rs.prefixes {
		// A prefix matches the test, its subtests, and tests whose name
		// starts with it (TestFederation matches TestFederationRoomsInvite).
		if strings.HasPrefix(t.Name, prefix) && len(prefix) > bestLen {
			best, bestLen = r, len(prefix)
		}
	}
	if bestLen >= 0 {
		return best
	}
	for _, o := range rs.outputs {
		if t.Symptom != "" && strings.Contains(t.Symptom, o.contains) {
			return o.reason
		}
	}
	return unclassified
}
