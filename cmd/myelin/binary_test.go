package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBinaryKeepsOnlyReachableMethods builds the server and checks that
// the linker dropped the exported methods nothing calls. A package that
// calls reflect.Value.Method or MethodByName with a name it cannot know
// at link time (text/template and html/template do) makes the linker
// keep every exported method of every type that may be converted to an
// interface: with html/template in the SSO pages the binary's text and
// tables grew from 19.2 to 27.5 MB, and an idle server started from disk
// held ~2.4 MB more of them, over issue #6's 25 MB (docs/benchmarks.md,
// "Session 25"). go-redis's cmdable.FTCreate (a RediSearch command Myelin
// never sends) stands for all such methods: it is in the binary only when
// that happens.
func TestBinaryKeepsOnlyReachableMethods(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the server binary; not in -short")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the binary: %v", err)
	}
	// The packages linked: text/template is named directly, since it is
	// the usual way in.
	out, err := exec.Command(goTool, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "text/template" || pkg == "html/template" {
			t.Errorf("the server links %s: its reflective method calls keep every exported method in the binary", pkg)
		}
	}
	bin := filepath.Join(t.TempDir(), "myelin")
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err = exec.Command(goTool, "tool", "nm", bin).Output()
	if err != nil {
		t.Fatalf("go tool nm: %v", err)
	}
	syms := string(out)
	if !strings.Contains(syms, "github.com/redis/go-redis/v9.") {
		t.Fatal("go-redis is not in the binary: pick another never-called exported method for this check")
	}
	if strings.Contains(syms, "github.com/redis/go-redis/v9.cmdable.FTCreate") {
		t.Error("the binary holds go-redis's cmdable.FTCreate, which nothing calls: some package calls reflect.Value.Method or MethodByName, and the linker keeps every exported method")
	}
}
