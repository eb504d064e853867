//go:build !(linux && cgo)

package main

// setMallocArenaMax: no glibc here, nothing to cap.
func setMallocArenaMax(int) bool { return false }
