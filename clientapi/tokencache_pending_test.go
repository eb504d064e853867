package clientapi

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// logRecords decodes the JSON log lines in buf.
func logRecords(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// TestTokenCachePendingMarkLogged: a revocation mark left pending by a
// killed `myelin user` command turns the token cache off, so the server
// says so (warn, with the mark's path and what to do): once at start
// when it finds one, and once per pending value seen while serving that
// is still there after pendingWarnAfter (a command running normally
// replaces its mark sooner and is not logged). Its replacement is
// logged at info.
func TestTokenCachePendingMarkLogged(t *testing.T) {
	markPath := filepath.Join(t.TempDir(), "mark")
	write := func(v string) {
		t.Helper()
		if err := os.WriteFile(markPath, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	warnings := func() (n int) {
		for _, r := range logRecords(t, &buf) {
			if r["level"] == "WARN" {
				if r["path"] != markPath || !strings.Contains(r["msg"].(string), "delete the mark file") {
					t.Fatalf("warning without the mark's path or the remedy: %v", r)
				}
				n++
			}
		}
		return n
	}

	// At start.
	write(pendingMarkPrefix + "killed1")
	c, err := newTokenCache(markPath, logger)
	if err != nil {
		t.Fatal(err)
	}
	if n := warnings(); n != 1 {
		t.Fatalf("%d warnings at start with a pending mark, want 1: %s", n, buf.String())
	}
	for range 3 {
		if _, _, keep := c.generation(); keep {
			t.Fatal("an entry may be kept under a pending mark")
		}
	}
	if n := warnings(); n != 1 {
		t.Fatalf("the pending mark found at start was logged again (%d warnings): %s", n, buf.String())
	}

	// Replaced: info, once.
	write("fresh1")
	c.generation()
	c.generation()
	var infos int
	for _, r := range logRecords(t, &buf) {
		if r["level"] == "INFO" && strings.Contains(r["msg"].(string), "no longer pending") {
			infos++
		}
	}
	if infos != 1 {
		t.Fatalf("%d info lines for the mark's replacement, want 1: %s", infos, buf.String())
	}

	// A command running now: its pending mark is not logged before
	// pendingWarnAfter.
	buf.Reset()
	c.pendingWarnAfter = time.Hour
	write(pendingMarkPrefix + "running")
	c.generation()
	write("fresh2")
	c.generation()
	if buf.Len() != 0 {
		t.Fatalf("a command's short-lived pending mark was logged: %s", buf.String())
	}

	// First seen while serving, still there after pendingWarnAfter:
	// logged once, however many requests see it.
	c.pendingWarnAfter = 0
	write(pendingMarkPrefix + "killed2")
	for range 3 {
		c.generation()
	}
	if n := warnings(); n != 1 {
		t.Fatalf("%d warnings for a mark left pending while serving, want 1: %s", n, buf.String())
	}
	// Another killed command: its own warning.
	write(pendingMarkPrefix + "killed3")
	c.generation()
	if n := warnings(); n != 2 {
		t.Fatalf("%d warnings after a second pending mark, want 2: %s", n, buf.String())
	}
}
