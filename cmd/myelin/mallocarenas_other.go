//go:build !(linux && cgo)

package main

// No glibc here, nothing to cap.

const mallocArenasAtLoad = mallocArenas

func setMallocArenaMax(int) bool { return false }

func mallocTrim() bool { return false }

func mallocHole(int) func() { return func() {} }

func mallocTouch() {}

func mallocArenaCount() int { return -1 }
