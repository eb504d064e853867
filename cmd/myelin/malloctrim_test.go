package main

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// rssAnonKiB reads this process's resident anonymous memory (Linux).
func rssAnonKiB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no RssAnon in /proc/self/status")
	return 0
}

// TestMallocTrimReleasesArenaHoles: memory freed inside a malloc arena
// (between blocks still in use, as SQLite's freed page cache is) stays
// resident until mallocTrim, which releaseStartupMemory calls; then it goes
// back to the kernel.
func TestMallocTrimReleasesArenaHoles(t *testing.T) {
	if runtime.GOOS != "linux" || mallocArenaCount() < 0 {
		if runtime.GOOS == "linux" {
			t.Fatal("glibc's malloc_info could not be read on Linux")
		}
		return // no glibc: nothing to trim
	}
	const holeKiB = 16 << 10
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := rssAnonKiB(t)
	done := mallocHole(holeKiB)
	defer done()
	withHole := rssAnonKiB(t)
	if withHole-before < holeKiB*3/4 {
		t.Fatalf("RssAnon %d -> %d KiB: the %d KiB freed inside the arena were not resident (no hole to trim)", before, withHole, holeKiB)
	}
	mallocTrim()
	trimmed := rssAnonKiB(t)
	if withHole-trimmed < holeKiB*3/4 {
		t.Errorf("RssAnon %d KiB with a %d KiB hole, %d KiB after mallocTrim: want at least %d KiB released",
			withHole, holeKiB, trimmed, holeKiB*3/4)
	}
}
