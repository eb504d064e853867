//go:build linux && cgo

package main

/*
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MYELIN_MALLOC_ARENAS 2

// myelin_cap_arenas_at_load caps glibc's malloc arenas before the Go
// runtime starts its threads. glibc fixes its arena limit when the first
// thread beyond the main one needs an arena; the runtime's threads
// allocate (thread-local storage for the threads they create) before
// main.main runs, so a cap set from Go came after four or five arenas
// already existed, each keeping what SQLite freed in it. A constructor
// runs when the program is loaded, before any of that. MALLOC_ARENA_MAX
// in the environment wins: glibc has read it already.
__attribute__((constructor)) static void myelin_cap_arenas_at_load(void) {
#ifdef M_ARENA_MAX
	if (getenv("MALLOC_ARENA_MAX") == NULL) {
		mallopt(M_ARENA_MAX, MYELIN_MALLOC_ARENAS);
	}
#endif
}

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

// myelin_malloc_trim returns the free memory of every malloc arena to
// the kernel (malloc_trim(0) also releases free pages inside an arena,
// not only at its top); 1 if any was released.
static int myelin_malloc_trim(void) {
	return malloc_trim(0);
}

// myelin_malloc_hole leaves about n KiB free inside the calling thread's
// arena (tests): n blocks of 1 KiB, written so that their pages are
// resident, of which every 64th stays allocated, so each freed run of 63
// KiB lies between blocks in use and never at the arena's top, which
// free() would trim by itself. It returns the blocks kept, for
// myelin_malloc_hole_done.
static void **myelin_malloc_hole(int n) {
	void **blocks = malloc(sizeof(void *) * (size_t)n);
	if (blocks == NULL) {
		return NULL;
	}
	for (int i = 0; i < n; i++) {
		blocks[i] = malloc(1024);
		if (blocks[i] != NULL) {
			memset(blocks[i], 1, 1024);
		}
	}
	for (int i = 0; i < n; i++) {
		if (i % 64 != 63) {
			free(blocks[i]);
			blocks[i] = NULL;
		}
	}
	return blocks;
}

static void myelin_malloc_hole_done(void **blocks, int n) {
	if (blocks == NULL) {
		return;
	}
	for (int i = 0; i < n; i++) {
		free(blocks[i]);
	}
	free(blocks);
}

// myelin_malloc_touch allocates and frees a little from the calling
// thread, so that glibc gives the thread an arena (tests).
static void myelin_malloc_touch(void) {
	void *p = malloc(512);
	if (p != NULL) {
		memset(p, 1, 512);
	}
	free(p);
}

// myelin_malloc_arenas counts the arenas malloc_info reports (tests):
// one <heap nr="..."> element per arena; -1 if it cannot be read.
static int myelin_malloc_arenas(void) {
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (f == NULL) {
		return -1;
	}
	if (malloc_info(0, f) != 0) {
		fclose(f);
		free(buf);
		return -1;
	}
	fclose(f);
	int n = 0;
	for (char *p = buf; (p = strstr(p, "<heap nr=")) != NULL; p++) {
		n++;
	}
	free(buf);
	return n;
}
*/
import "C"

// mallocArenasAtLoad is the cap the constructor above sets.
const mallocArenasAtLoad = C.MYELIN_MALLOC_ARENAS

// setMallocArenaMax caps how many malloc arenas glibc creates (M_ARENA_MAX)
// and reports whether the C library took the setting.
func setMallocArenaMax(n int) bool { return C.myelin_set_arena_max(C.int(n)) == 1 }

// mallocTrim hands the pages free in glibc's malloc arenas back to the
// kernel; it reports whether any were released.
func mallocTrim() bool { return C.myelin_malloc_trim() == 1 }

// mallocHole leaves about kib KiB free but resident inside a malloc arena,
// between blocks still in use, and returns a function that frees those
// blocks (tests).
func mallocHole(kib int) (done func()) {
	blocks := C.myelin_malloc_hole(C.int(kib))
	return func() { C.myelin_malloc_hole_done(blocks, C.int(kib)) }
}

// mallocTouch makes the calling OS thread allocate from malloc.
func mallocTouch() { C.myelin_malloc_touch() }

// mallocArenaCount is how many arenas glibc has (-1: unknown).
func mallocArenaCount() int { return int(C.myelin_malloc_arenas()) }
