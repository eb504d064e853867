package main

import (
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
)

// TestMallocArenasCappedAtLoad: on Linux with cgo (every Myelin build:
// SQLite is cgo) glibc keeps at most mallocArenas arenas however many
// threads allocate, because the cap is set when the program is loaded —
// before the Go runtime's own threads take arenas. Sixteen OS threads
// allocating at once would otherwise get an arena each (up to 8 per core).
func TestMallocArenasCappedAtLoad(t *testing.T) {
	if mallocArenasAtLoad != mallocArenas {
		t.Fatalf("the constructor caps at %d arenas, mallocArenas is %d", mallocArenasAtLoad, mallocArenas)
	}
	if runtime.GOOS != "linux" || mallocArenaCount() < 0 {
		if runtime.GOOS == "linux" {
			t.Fatal("malloc_info could not be read on Linux")
		}
		return // no glibc: nothing is capped
	}
	want := mallocArenas
	if v := os.Getenv("MALLOC_ARENA_MAX"); v != "" {
		want, _ = strconv.Atoi(v) // the environment wins
	}
	const threads = 16
	var ready, done sync.WaitGroup
	ready.Add(threads)
	done.Add(threads)
	release := make(chan struct{})
	for range threads {
		go func() {
			defer done.Done()
			runtime.LockOSThread() // a thread of its own, kept until the goroutine ends
			mallocTouch()
			ready.Done()
			<-release
		}()
	}
	ready.Wait()
	got := mallocArenaCount()
	close(release)
	done.Wait()
	if got > want {
		t.Errorf("glibc has %d malloc arenas after %d threads allocated; the cap is %d", got, threads, want)
	}
	t.Logf("%d arenas (cap %d)", got, want)
}
