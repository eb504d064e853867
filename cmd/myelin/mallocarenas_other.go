//go:build !(linux && cgo)

package main

// No glibc here, nothing to cap.

const mallocArenasAtLoad = mallocArenas

func setMallocArenaMax(int) bool { return false }

func mallocTrim() bool { return false }

func mallocTouch() {}

func mallocArenaCount() int { return -1 }
