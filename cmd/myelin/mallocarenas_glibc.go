//go:build linux && cgo

package main

/*
#include <malloc.h>

// myelin_set_arena_max caps glibc's malloc arenas; it returns mallopt's
// result (1 on success) or -1 where the C library has no such setting.
static int myelin_set_arena_max(int n) {
#ifdef M_ARENA_MAX
	return mallopt(M_ARENA_MAX, n);
#else
	(void)n;
	return -1;
#endif
}
*/
import "C"

// setMallocArenaMax caps how many malloc arenas glibc creates (M_ARENA_MAX)
// and reports whether the C library took the setting.
func setMallocArenaMax(n int) bool { return C.myelin_set_arena_max(C.int(n)) == 1 }
