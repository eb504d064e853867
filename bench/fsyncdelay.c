/*
 * fsyncdelay.c: an LD_PRELOAD library for bench/run.sh's slow-disk mode
 * (FSYNC_DELAY_MS). Issue 6's targets are for a disk whose 4 KiB fsync
 * takes about 1.8 ms; on a day the disk is faster, this makes every
 * fsync(2), fdatasync(2) and syncfs(2) called through the C library take
 * at least FSYNC_DELAY_US microseconds: the real call runs first (the
 * data is on disk as before), then the caller sleeps until that long
 * after the call began. A disk whose fsync takes 1.8 ms is thus modelled
 * as FSYNC_DELAY_US=1800 (a real fsync slower than that is not shortened).
 *
 * What it covers: SQLite's fsyncs (C code, linked through cgo in Myelin
 * and Dendrite). What it cannot: a Go program's own os.File.Sync, which
 * makes the system call directly (Dendrite's JetStream, any Go-level
 * fsync of Myelin), and other processes (PostgreSQL).
 *
 * FSYNC_COUNT_FILE, when set, names a file the library rewrites after
 * each call with the number of calls so far (a decimal number padded to
 * 20 bytes), so that the bench script can read fsyncs per scenario while
 * the server runs (a Go program exits without running C destructors).
 *
 * Built by bench/run.sh: gcc -O2 -shared -fPIC -o fsyncdelay.so fsyncdelay.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static long delay_ns;
static int count_fd = -1;
static atomic_long calls;

__attribute__((constructor)) static void fsyncdelay_init(void)
{
	const char *us = getenv("FSYNC_DELAY_US");
	const char *path = getenv("FSYNC_COUNT_FILE");
	if (us != NULL)
		delay_ns = atol(us) * 1000L;
	if (path != NULL && *path != '\0')
		count_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
}

static void after_sync(const struct timespec *began)
{
	long n = atomic_fetch_add(&calls, 1) + 1;
	if (count_fd >= 0) {
		char buf[21];
		int len = snprintf(buf, sizeof buf, "%-19ld\n", n);
		/* Page cache only: never fsynced, so it adds no disk wait. */
		if (pwrite(count_fd, buf, (size_t)len, 0) < 0) {
			/* a lost count never changes the caller's result */
		}
	}
	if (delay_ns > 0) {
		struct timespec until = *began;
		until.tv_nsec += delay_ns % 1000000000L;
		until.tv_sec += delay_ns / 1000000000L + until.tv_nsec / 1000000000L;
		until.tv_nsec %= 1000000000L;
		/* The default timer slack (50 us) would lengthen every sleep. */
		prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR) {
		}
	}
}

#define WRAP(name)                                                        \
	int name(int fd)                                                  \
	{                                                                 \
		static int (*real)(int);                                  \
		if (real == NULL)                                         \
			real = (int (*)(int))dlsym(RTLD_NEXT, #name);     \
		struct timespec began;                                    \
		clock_gettime(CLOCK_MONOTONIC, &began);                   \
		int saved, r = real(fd);                                  \
		saved = errno;                                            \
		after_sync(&began);                                       \
		errno = saved;                                            \
		return r;                                                 \
	}

WRAP(fsync)
WRAP(fdatasync)
WRAP(syncfs)
