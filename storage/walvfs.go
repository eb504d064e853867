//go:build cgo

package storage

// The SQLite writer's VFS: SQLite's default VFS with the WAL file's
// appends gathered into one write per commit.
//
// SQLite writes each WAL frame with two calls (its 24-byte header, then
// the page), so a group commit of ~8 messages, ~42 frames, made ~84
// pwrite64 calls on the writer's path inside COMMIT, before its fsync.
// This VFS wraps the default one (sqlite3_vfs_find(0)): every file is the
// default VFS's file, called through, except that a file opened as a WAL
// (SQLITE_OPEN_WAL) keeps a run of contiguous writes in memory and writes
// it with one call to the default VFS's xWrite (one pwrite64) when SQLite
// syncs the file, reads it, asks its size, truncates it, sends it a file
// control or closes it; when a write does not continue the run (SQLite
// rewrites a frame, or restarts the WAL at offset 0), the run is written
// first, so writes reach the file in the order SQLite made them; and when
// the run would pass walBufMax bytes (128 KiB, the most the default VFS
// writes in one call: a commit of ~42 frames is two writes instead of
// ~84).
//
// Durability is unchanged. With synchronous=FULL, SQLite's commit
// (sqlite3WalFrames, wal.c) writes the transaction's frames, then calls
// xSync on the WAL, and only then appends the frames to the wal-index and
// writes the wal-index header that makes the commit visible to other
// connections; COMMIT returns after that. xSync here writes the run and
// returns its error, if any, before the default VFS's fsync: a commit is
// acknowledged only once its frames are written and fsynced, and a failed
// write fails the COMMIT (SQLite then rolls back and its next transaction
// writes its frames again from the last committed one, which the
// wal-index header still names). The run is dropped after a failed write:
// SQLite rewrites those frames anyway.
//
// Other connections never need a frame the writer still holds: a reader
// or a checkpoint (checkpointLoop runs them on reader connections, on the
// default VFS) reads only the frames up to the mxFrame of a wal-index
// header it has read, and a commit's header is written after its xSync,
// so every frame it names has been written to the file. Frames the writer
// writes before its commit (a page-cache spill mid-transaction) are not
// named by any header; the writer reads them back itself (xRead, which
// writes the run first). The WAL's restart and its truncation to
// journal_size_limit come through xWrite at offset 0 and xTruncate, both
// of which write the run first. This holds only when every commit syncs
// the WAL: with synchronous=NORMAL or OFF a commit is made visible
// without an xSync, so openSQLite refuses a writer on this VFS that is
// not synchronous=FULL or EXTRA; and only when nothing of a commit is
// written after its xSync, which SQLite does without powersafe overwrite
// (psow=0), so such a WAL is not held back (walbuf_open).

/*
#include <stdlib.h>
#include <string.h>

// SQLite's VFS interface (https://sqlite.org/c3ref/vfs.html,
// c3ref/io_methods.html, c3ref/file.html), declared here for the parts
// this file uses: the layouts are SQLite's documented ABI (versions 1 to
// 3 of each structure).

typedef long long myelin_i64;
typedef struct myelin_file myelin_file;
typedef struct myelin_io_methods myelin_io_methods;
typedef struct myelin_vfs myelin_vfs;
typedef void (*myelin_syscall_ptr)(void);

struct myelin_file {
	const myelin_io_methods *pMethods;
};

struct myelin_io_methods {
	int iVersion;
	int (*xClose)(myelin_file *);
	int (*xRead)(myelin_file *, void *, int, myelin_i64);
	int (*xWrite)(myelin_file *, const void *, int, myelin_i64);
	int (*xTruncate)(myelin_file *, myelin_i64);
	int (*xSync)(myelin_file *, int);
	int (*xFileSize)(myelin_file *, myelin_i64 *);
	int (*xLock)(myelin_file *, int);
	int (*xUnlock)(myelin_file *, int);
	int (*xCheckReservedLock)(myelin_file *, int *);
	int (*xFileControl)(myelin_file *, int, void *);
	int (*xSectorSize)(myelin_file *);
	int (*xDeviceCharacteristics)(myelin_file *);
	// version 2
	int (*xShmMap)(myelin_file *, int, int, int, void volatile **);
	int (*xShmLock)(myelin_file *, int, int, int);
	void (*xShmBarrier)(myelin_file *);
	int (*xShmUnmap)(myelin_file *, int);
	// version 3
	int (*xFetch)(myelin_file *, myelin_i64, int, void **);
	int (*xUnfetch)(myelin_file *, myelin_i64, void *);
};

struct myelin_vfs {
	int iVersion;
	int szOsFile;
	int mxPathname;
	myelin_vfs *pNext;
	const char *zName;
	void *pAppData;
	int (*xOpen)(myelin_vfs *, const char *, myelin_file *, int, int *);
	int (*xDelete)(myelin_vfs *, const char *, int);
	int (*xAccess)(myelin_vfs *, const char *, int, int *);
	int (*xFullPathname)(myelin_vfs *, const char *, int, char *);
	void *(*xDlOpen)(myelin_vfs *, const char *);
	void (*xDlError)(myelin_vfs *, int, char *);
	myelin_syscall_ptr (*xDlSym)(myelin_vfs *, void *, const char *);
	void (*xDlClose)(myelin_vfs *, void *);
	int (*xRandomness)(myelin_vfs *, int, char *);
	int (*xSleep)(myelin_vfs *, int);
	int (*xCurrentTime)(myelin_vfs *, double *);
	int (*xGetLastError)(myelin_vfs *, int, char *);
	// version 2
	int (*xCurrentTimeInt64)(myelin_vfs *, myelin_i64 *);
	// version 3
	int (*xSetSystemCall)(myelin_vfs *, const char *, myelin_syscall_ptr);
	myelin_syscall_ptr (*xGetSystemCall)(myelin_vfs *, const char *);
	const char *(*xNextSystemCall)(myelin_vfs *, const char *);
};

// SQLite's functions (compiled in by go-sqlite3).
extern myelin_vfs *sqlite3_vfs_find(const char *);
extern int sqlite3_vfs_register(myelin_vfs *, int);
extern int sqlite3_uri_boolean(const char *, const char *, int);
extern int sqlite3_compileoption_used(const char *);

// SQLite's result codes and open flag used here.
#define MYELIN_SQLITE_OK 0
#define MYELIN_SQLITE_ERROR 1
#define MYELIN_SQLITE_IOERR_WRITE (10 | (3 << 8))
#define MYELIN_SQLITE_OPEN_WAL 0x00080000

// The most bytes a WAL file holds back; a run that would grow past it is
// written first. It is the most the default VFS writes in one call: its
// unixWrite passes at most 0x1ffff bytes to one pwrite (seekAndWriteFd
// masks the count with it, so a larger write fails with SQLITE_FULL). A
// commit of eight messages, ~42 frames of 4,120 bytes, is two writes.
#define WALBUF_MAX 0x1ffff
#define WALBUF_MIN (64 << 10)

// The file of this VFS: ours, then the default VFS's (real points there).
typedef struct walbuf_file {
	myelin_file base;
	myelin_file *real;
	unsigned char *buf; // the run: buf[0:len] belongs at offset off
	myelin_i64 off;
	size_t len;
	size_t cap;
	int is_wal;
	int pad_;
} walbuf_file;

static myelin_vfs walbuf_vfs;
static myelin_io_methods walbuf_methods[3]; // one per version of the default VFS's files

// Counters for tests (process-wide): appends are xWrite calls to WAL
// files, writes the writes handed to the default VFS for WAL files
// (held-back runs and writes that went straight through), fail_writes
// how many of the next runs fail as if the write had failed.
static long long walbuf_appends, walbuf_writes;
static int walbuf_fail_writes;

#define REAL(f) (((walbuf_file *)(f))->real)
#define PARENT ((myelin_vfs *)walbuf_vfs.pAppData)

// walbuf_flush writes the run held back, if any, with one write. After a
// failure the run is dropped: SQLite fails the transaction and writes
// those frames again.
static int walbuf_flush(walbuf_file *w) {
	if (w->len == 0) {
		return MYELIN_SQLITE_OK;
	}
	size_t n = w->len;
	w->len = 0;
	__atomic_add_fetch(&walbuf_writes, 1, __ATOMIC_RELAXED);
	int left = __atomic_load_n(&walbuf_fail_writes, __ATOMIC_RELAXED);
	while (left > 0) {
		if (__atomic_compare_exchange_n(&walbuf_fail_writes, &left, left - 1, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
			return MYELIN_SQLITE_IOERR_WRITE;
		}
	}
	return w->real->pMethods->xWrite(w->real, w->buf, (int)n, w->off);
}

static int walbuf_close(myelin_file *f) {
	walbuf_file *w = (walbuf_file *)f;
	int rc = walbuf_flush(w);
	int rc2 = w->real->pMethods->xClose(w->real);
	free(w->buf);
	w->buf = NULL;
	w->cap = 0;
	return rc != MYELIN_SQLITE_OK ? rc : rc2;
}

static int walbuf_read(myelin_file *f, void *p, int amt, myelin_i64 off) {
	int rc = walbuf_flush((walbuf_file *)f);
	if (rc != MYELIN_SQLITE_OK) {
		return rc;
	}
	return REAL(f)->pMethods->xRead(REAL(f), p, amt, off);
}

// walbuf_reserve makes room for need bytes in w's buffer (need <=
// WALBUF_MAX); 0 if it cannot.
static int walbuf_reserve(walbuf_file *w, size_t need) {
	if (need <= w->cap) {
		return 1;
	}
	size_t c = w->cap ? w->cap : WALBUF_MIN;
	while (c < need) {
		c *= 2;
	}
	if (c > WALBUF_MAX) {
		c = WALBUF_MAX;
	}
	unsigned char *b = realloc(w->buf, c);
	if (b == NULL) {
		return 0;
	}
	w->buf = b;
	w->cap = c;
	return 1;
}

static int walbuf_write(myelin_file *f, const void *p, int amt, myelin_i64 off) {
	walbuf_file *w = (walbuf_file *)f;
	if (!w->is_wal) {
		return w->real->pMethods->xWrite(w->real, p, amt, off);
	}
	__atomic_add_fetch(&walbuf_appends, 1, __ATOMIC_RELAXED);
	size_t n = (size_t)amt;
	if (w->len > 0 && off == w->off + (myelin_i64)w->len && w->len + n <= WALBUF_MAX && walbuf_reserve(w, w->len + n)) {
		memcpy(w->buf + w->len, p, n);
		w->len += n;
		return MYELIN_SQLITE_OK;
	}
	// Not a continuation of the run (or no room): the run goes first.
	int rc = walbuf_flush(w);
	if (rc != MYELIN_SQLITE_OK) {
		return rc;
	}
	if (n <= WALBUF_MAX && walbuf_reserve(w, n)) {
		memcpy(w->buf, p, n);
		w->off = off;
		w->len = n;
		return MYELIN_SQLITE_OK;
	}
	__atomic_add_fetch(&walbuf_writes, 1, __ATOMIC_RELAXED);
	return w->real->pMethods->xWrite(w->real, p, amt, off);
}

static int walbuf_truncate(myelin_file *f, myelin_i64 size) {
	int rc = walbuf_flush((walbuf_file *)f);
	if (rc != MYELIN_SQLITE_OK) {
		return rc;
	}
	return REAL(f)->pMethods->xTruncate(REAL(f), size);
}

static int walbuf_sync(myelin_file *f, int flags) {
	int rc = walbuf_flush((walbuf_file *)f);
	if (rc != MYELIN_SQLITE_OK) {
		return rc;
	}
	return REAL(f)->pMethods->xSync(REAL(f), flags);
}

static int walbuf_file_size(myelin_file *f, myelin_i64 *size) {
	int rc = walbuf_flush((walbuf_file *)f);
	if (rc != MYELIN_SQLITE_OK) {
		return rc;
	}
	return REAL(f)->pMethods->xFileSize(REAL(f), size);
}

static int walbuf_lock(myelin_file *f, int lock) { return REAL(f)->pMethods->xLock(REAL(f), lock); }

static int walbuf_unlock(myelin_file *f, int lock) { return REAL(f)->pMethods->xUnlock(REAL(f), lock); }

static int walbuf_check_reserved_lock(myelin_file *f, int *out) {
	return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}

static int walbuf_file_control(myelin_file *f, int op, void *arg) {
	int rc = walbuf_flush((walbuf_file *)f);
	if (rc != MYELIN_SQLITE_OK) {
		return rc;
	}
	return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}

static int walbuf_sector_size(myelin_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }

static int walbuf_device_characteristics(myelin_file *f) {
	return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int walbuf_shm_map(myelin_file *f, int pg, int pgsz, int extend, void volatile **pp) {
	return REAL(f)->pMethods->xShmMap(REAL(f), pg, pgsz, extend, pp);
}

static int walbuf_shm_lock(myelin_file *f, int offset, int n, int flags) {
	return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
}

static void walbuf_shm_barrier(myelin_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }

static int walbuf_shm_unmap(myelin_file *f, int del) { return REAL(f)->pMethods->xShmUnmap(REAL(f), del); }

static int walbuf_fetch(myelin_file *f, myelin_i64 off, int amt, void **pp) {
	int rc = walbuf_flush((walbuf_file *)f);
	if (rc != MYELIN_SQLITE_OK) {
		return rc;
	}
	return REAL(f)->pMethods->xFetch(REAL(f), off, amt, pp);
}

static int walbuf_unfetch(myelin_file *f, myelin_i64 off, void *p) {
	return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static int walbuf_open(myelin_vfs *vfs, const char *name, myelin_file *f, int flags, int *out_flags) {
	walbuf_file *w = (walbuf_file *)f;
	memset(w, 0, sizeof(*w));
	w->real = (myelin_file *)(w + 1);
	w->real->pMethods = NULL; // read below even if the default VFS's xOpen fails early
	int rc = PARENT->xOpen(PARENT, name, w->real, flags, out_flags);
	const myelin_io_methods *m = w->real->pMethods;
	if (m == NULL) {
		// SQLite calls xClose only on a file whose pMethods is set.
		f->pMethods = NULL;
		return rc != MYELIN_SQLITE_OK ? rc : MYELIN_SQLITE_ERROR;
	}
	int v = m->iVersion;
	if (v < 1) {
		v = 1;
	}
	if (v > 3) {
		v = 3;
	}
	// Without powersafe overwrite (psow=0 on the database's URI, or a
	// build with SQLITE_POWERSAFE_OVERWRITE=0: how the default VFS sets
	// the database file's SQLITE_IOCAP_POWERSAFE_OVERWRITE, which decides
	// it for the WAL), SQLite pads a commit to the next sector boundary
	// and writes the end of its last padding frame after the WAL's xSync,
	// then names that frame in the wal-index (wal.c, sqlite3WalFrames):
	// held back, it would be missing from the file other connections
	// read. Such a WAL is written straight through. (A WAL file's name
	// carries its database's URI parameters, c3ref/uri_boolean.html.)
	w->is_wal = (flags & MYELIN_SQLITE_OPEN_WAL) != 0 &&
		sqlite3_uri_boolean(name, "psow", !sqlite3_compileoption_used("POWERSAFE_OVERWRITE=0"));
	f->pMethods = &walbuf_methods[v - 1];
	return rc;
}

static int walbuf_delete(myelin_vfs *vfs, const char *name, int sync_dir) {
	return PARENT->xDelete(PARENT, name, sync_dir);
}

static int walbuf_access(myelin_vfs *vfs, const char *name, int flags, int *out) {
	return PARENT->xAccess(PARENT, name, flags, out);
}

static int walbuf_full_pathname(myelin_vfs *vfs, const char *name, int n, char *out) {
	return PARENT->xFullPathname(PARENT, name, n, out);
}

static void *walbuf_dl_open(myelin_vfs *vfs, const char *name) { return PARENT->xDlOpen(PARENT, name); }

static void walbuf_dl_error(myelin_vfs *vfs, int n, char *msg) { PARENT->xDlError(PARENT, n, msg); }

static myelin_syscall_ptr walbuf_dl_sym(myelin_vfs *vfs, void *h, const char *sym) {
	return PARENT->xDlSym(PARENT, h, sym);
}

static void walbuf_dl_close(myelin_vfs *vfs, void *h) { PARENT->xDlClose(PARENT, h); }

static int walbuf_randomness(myelin_vfs *vfs, int n, char *out) { return PARENT->xRandomness(PARENT, n, out); }

static int walbuf_sleep(myelin_vfs *vfs, int us) { return PARENT->xSleep(PARENT, us); }

static int walbuf_current_time(myelin_vfs *vfs, double *t) { return PARENT->xCurrentTime(PARENT, t); }

static int walbuf_get_last_error(myelin_vfs *vfs, int n, char *out) {
	return PARENT->xGetLastError(PARENT, n, out);
}

static int walbuf_current_time_int64(myelin_vfs *vfs, myelin_i64 *t) {
	return PARENT->xCurrentTimeInt64(PARENT, t);
}

static int walbuf_set_system_call(myelin_vfs *vfs, const char *name, myelin_syscall_ptr p) {
	return PARENT->xSetSystemCall(PARENT, name, p);
}

static myelin_syscall_ptr walbuf_get_system_call(myelin_vfs *vfs, const char *name) {
	return PARENT->xGetSystemCall(PARENT, name);
}

static const char *walbuf_next_system_call(myelin_vfs *vfs, const char *name) {
	return PARENT->xNextSystemCall(PARENT, name);
}

// myelin_walbuf_register registers the VFS under name (not as the
// default); called once. It returns an SQLite result code.
static int myelin_walbuf_register(const char *name) {
	myelin_vfs *parent = sqlite3_vfs_find(NULL);
	if (parent == NULL) {
		return MYELIN_SQLITE_ERROR;
	}
	for (int i = 0; i < 3; i++) {
		myelin_io_methods *m = &walbuf_methods[i];
		m->iVersion = i + 1;
		m->xClose = walbuf_close;
		m->xRead = walbuf_read;
		m->xWrite = walbuf_write;
		m->xTruncate = walbuf_truncate;
		m->xSync = walbuf_sync;
		m->xFileSize = walbuf_file_size;
		m->xLock = walbuf_lock;
		m->xUnlock = walbuf_unlock;
		m->xCheckReservedLock = walbuf_check_reserved_lock;
		m->xFileControl = walbuf_file_control;
		m->xSectorSize = walbuf_sector_size;
		m->xDeviceCharacteristics = walbuf_device_characteristics;
		if (i >= 1) {
			m->xShmMap = walbuf_shm_map;
			m->xShmLock = walbuf_shm_lock;
			m->xShmBarrier = walbuf_shm_barrier;
			m->xShmUnmap = walbuf_shm_unmap;
		}
		if (i >= 2) {
			m->xFetch = walbuf_fetch;
			m->xUnfetch = walbuf_unfetch;
		}
	}
	myelin_vfs *v = &walbuf_vfs;
	v->iVersion = parent->iVersion > 3 ? 3 : parent->iVersion;
	v->szOsFile = (int)sizeof(walbuf_file) + parent->szOsFile;
	v->mxPathname = parent->mxPathname;
	v->zName = name;
	v->pAppData = parent;
	v->xOpen = walbuf_open;
	v->xDelete = walbuf_delete;
	v->xAccess = walbuf_access;
	v->xFullPathname = walbuf_full_pathname;
	v->xDlOpen = walbuf_dl_open;
	v->xDlError = walbuf_dl_error;
	v->xDlSym = walbuf_dl_sym;
	v->xDlClose = walbuf_dl_close;
	v->xRandomness = walbuf_randomness;
	v->xSleep = walbuf_sleep;
	v->xCurrentTime = walbuf_current_time;
	v->xGetLastError = walbuf_get_last_error;
	v->xCurrentTimeInt64 = walbuf_current_time_int64;
	v->xSetSystemCall = walbuf_set_system_call;
	v->xGetSystemCall = walbuf_get_system_call;
	v->xNextSystemCall = walbuf_next_system_call;
	return sqlite3_vfs_register(v, 0);
}

static void myelin_walbuf_stats(long long *appends, long long *writes) {
	*appends = __atomic_load_n(&walbuf_appends, __ATOMIC_RELAXED);
	*writes = __atomic_load_n(&walbuf_writes, __ATOMIC_RELAXED);
}

static void myelin_walbuf_fail_writes(int n) { __atomic_store_n(&walbuf_fail_writes, n, __ATOMIC_RELAXED); }
*/
import "C"

import (
	"fmt"
	"sync"
)

// walBufMax is the C side's WALBUF_MAX: the most bytes the WAL file
// holds back.
const walBufMax = C.WALBUF_MAX

var (
	walVFSOnce sync.Once
	walVFSName string
	walVFSErr  error
)

// registerWALVFS registers the writer's VFS (once per process) and
// returns its name for the DSN's vfs parameter.
func registerWALVFS() (string, error) {
	walVFSOnce.Do(func() {
		const name = "myelin-walbuf"
		// SQLite keeps the pointer: the name lives for the process.
		if rc := C.myelin_walbuf_register(C.CString(name)); rc != 0 {
			walVFSErr = fmt.Errorf("storage: registering the sqlite WAL VFS: result code %d", int(rc))
			return
		}
		walVFSName = name
	})
	return walVFSName, walVFSErr
}

// walVFSStats reports, process-wide, how many writes SQLite made to WAL
// files opened through the writer's VFS and how many writes the VFS
// made to them in turn.
func walVFSStats() (appends, writes int64) {
	var a, w C.longlong
	C.myelin_walbuf_stats(&a, &w)
	return int64(a), int64(w)
}

// walVFSFailWrites makes the next n writes of a held-back WAL run, in
// any database of the process, fail with SQLITE_IOERR_WRITE without
// writing (tests).
func walVFSFailWrites(n int) { C.myelin_walbuf_fail_writes(C.int(n)) }
