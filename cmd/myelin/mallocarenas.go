package main

// mallocArenas is how many malloc arenas the server lets glibc keep.
//
// SQLite allocates through the C library's malloc, from whichever OS thread
// the Go scheduler runs the cgo call on. glibc gives threads separate
// arenas to avoid lock contention, up to 8 per core, and memory SQLite
// frees in one arena is reused only by allocations in that arena: after
// bench/run.sh's scenarios glibc held ~20 MB spread over the arenas of
// many threads. Two arenas keep the writer and the readers from sharing
// one lock while letting freed pages be reused across connections
// (docs/benchmarks.md, "Memory, part 3" and "Memory, part 4").
//
// The cap is set when the program is loaded, before the Go runtime starts
// its threads (mallocarenas_glibc.go), unless MALLOC_ARENA_MAX is set:
// glibc has then read it at start and an explicit environment wins.
const mallocArenas = 2
