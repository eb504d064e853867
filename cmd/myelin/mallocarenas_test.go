package main

import (
	"os"
	"runtime"
	"testing"
)

// TestLimitMallocArenas: on Linux with cgo (every Myelin build: SQLite is
// cgo) glibc takes the arena cap, and an explicit MALLOC_ARENA_MAX is left
// alone.
func TestLimitMallocArenas(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "MALLOC_ARENA_MAX" {
				return v
			}
			return os.Getenv(k)
		}
	}
	if limitMallocArenas(env("4")) {
		t.Error("MALLOC_ARENA_MAX=4 set, yet the cap was applied over it")
	}
	got := limitMallocArenas(env(""))
	if runtime.GOOS == "linux" && !got {
		t.Error("mallopt(M_ARENA_MAX) was not applied on Linux")
	}
}
