/*
 * fsyncprobe.c: the mean time of N write(4 KiB)+fsync pairs on one file,
 * in ms, through the C library (so bench/fsyncdelay.c applies when it is
 * preloaded). Usage: fsyncprobe FILE N. Built by bench/run.sh.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: fsyncprobe FILE N\n");
		return 2;
	}
	int n = atoi(argv[2]);
	int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || n <= 0) {
		perror("fsyncprobe");
		return 1;
	}
	char buf[4096];
	memset(buf, 'x', sizeof buf);
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (int i = 0; i < n; i++) {
		if (pwrite(fd, buf, sizeof buf, 0) != (ssize_t)sizeof buf || fsync(fd) != 0) {
			perror("fsyncprobe");
			return 1;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	close(fd);
	unlink(argv[1]);
	double ms = ((b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6) / n;
	printf("%.3f\n", ms);
	return 0;
}
