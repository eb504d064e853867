package storage_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/mattn/go-sqlite3" // the "sqlite3" driver, to open copies on the default VFS

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// The writer's VFS (walvfs.go) holds WAL appends back until SQLite syncs
// the WAL. These tests use its process-wide counters and failure hook;
// the storage tests do not run in parallel.

// copyFile copies src to dst; a missing src is an error.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestWALFramesWrittenWhenWriteReturns: right after Write returns, a
// copy of the database and WAL files, taken through other descriptors
// (as a crash right then would leave them, the page cache aside), holds
// the write: its frames were written before COMMIT returned, not held
// back in the writer's VFS.
func TestWALFramesWrittenWhenWriteReturns(t *testing.T) {
	ctx := context.Background()
	opts := storagetest.SQLiteOptions(t)
	db, err := storage.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	exec(t, db, `CREATE TABLE w (id BIGINT PRIMARY KEY, body TEXT NOT NULL)`)
	body := strings.Repeat("y", 1000)
	for i := 1; i <= 5; i++ {
		err := db.Write(ctx, func(tx storage.Tx) error {
			// Several pages a write, so a commit is many frames.
			for j := range 8 {
				if _, err := tx.Exec(ctx, `INSERT INTO w (id, body) VALUES ($1, $2)`, i*100+j, body); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		// The WAL first: a checkpoint meanwhile only copies into the
		// database file pages the copied WAL also holds.
		dir := t.TempDir()
		copyFile(t, opts.SQLitePath+"-wal", filepath.Join(dir, "copy.db-wal"))
		copyFile(t, opts.SQLitePath, filepath.Join(dir, "copy.db"))
		cp, err := sql.Open("sqlite3", "file:"+filepath.Join(dir, "copy.db"))
		if err != nil {
			t.Fatal(err)
		}
		var n int
		err = cp.QueryRow(`SELECT count(*) FROM w WHERE id / 100 = ?`, i).Scan(&n)
		cp.Close()
		if err != nil {
			t.Fatalf("write %d: reading the copy: %v", i, err)
		}
		if n != 8 {
			t.Fatalf("write %d: the copy taken when Write returned has %d of its 8 rows", i, n)
		}
	}
}

// TestFailedWALWriteFailsCommit: when the writer's VFS fails to write
// the frames it held back (at the WAL's sync, inside COMMIT), the COMMIT
// fails, Write reports it, the write is not in the database (before or
// after a reopen), and the next write commits.
func TestFailedWALWriteFailsCommit(t *testing.T) {
	ctx := context.Background()
	opts := storagetest.SQLiteOptions(t)
	db, err := storage.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { db.Close() }()
	t.Cleanup(func() { storage.WALVFSFailWrites(0) })
	exec(t, db, `CREATE TABLE f (id BIGINT PRIMARY KEY)`)
	insert := func(id int, fail bool) error {
		return db.Write(ctx, func(tx storage.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO f (id) VALUES ($1)`, id); err != nil {
				return err
			}
			if fail {
				// On the writer, after the statement: the next run the
				// VFS writes is this transaction's, at its COMMIT.
				storage.WALVFSFailWrites(1)
			}
			return nil
		})
	}
	if err := insert(1, false); err != nil {
		t.Fatal(err)
	}
	if err := insert(2, true); err == nil {
		t.Fatal("Write returned nil although its frames failed to reach the WAL")
	} else {
		t.Logf("the failed write: %v", err)
	}
	storage.WALVFSFailWrites(0)
	if err := insert(3, false); err != nil {
		t.Fatalf("the write after the failed one: %v", err)
	}
	check := func(when string) {
		got := int64s(t, db.Reader(), `SELECT id FROM f ORDER BY id`)
		if len(got) != 2 || got[0] != 1 || got[1] != 3 {
			t.Fatalf("%s: rows %v, want [1 3]", when, got)
		}
	}
	check("after the failed write")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = storage.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	check("after reopening")
}

// TestWALWritesPerCommit: the writer's VFS writes a commit's frames with
// one write (two once they pass WALBufMax), where SQLite makes two
// writes per frame (header and page).
func TestWALWritesPerCommit(t *testing.T) {
	ctx := context.Background()
	db := storagetest.OpenSQLite(t)
	exec(t, db, `CREATE TABLE c (id BIGINT PRIMARY KEY, body TEXT NOT NULL)`)
	body := strings.Repeat("z", 3000) // a page of its own per row
	const writes, rows = 30, 10
	appends0, writes0 := storage.WALVFSStats()
	commits0 := db.CommitCount()
	for i := range writes {
		err := db.Write(ctx, func(tx storage.Tx) error {
			for j := range rows {
				if _, err := tx.Exec(ctx, `INSERT INTO c (id, body) VALUES ($1, $2)`, i*rows+j, body); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	appends1, writes1 := storage.WALVFSStats()
	commits := db.CommitCount() - commits0
	appends, syscalls := appends1-appends0, writes1-writes0
	t.Logf("%d commits: SQLite wrote to the WAL %d times, the VFS %d times", commits, appends, syscalls)
	if commits < writes {
		t.Fatalf("%d commits for %d sequential writes", commits, writes)
	}
	// Each commit is at least its rows' pages: two writes a frame.
	if appends < 2*rows*commits {
		t.Fatalf("SQLite wrote to the WAL %d times in %d commits, want at least %d", appends, commits, 2*rows*commits)
	}
	// One write per commit, and one more for the WAL's header in a
	// commit that restarts the WAL (which the idle checkpointer may allow
	// a few times here).
	if syscalls > commits+commits/4 {
		t.Fatalf("the VFS wrote %d times in %d commits, want about one a commit", syscalls, commits)
	}
}

// TestWALSpilledFramesReadBack: a transaction larger than the writer's
// page cache spills pages to the WAL before its COMMIT (frames the VFS
// holds back), reads them back (xRead, which must write the run first),
// and rewrites some of them in place at COMMIT (SQLite overwrites a frame
// of the current transaction: a write inside the frames already written,
// which must reach the file after them, not be lost or appended). The
// rows read inside the transaction, after it from another connection,
// and after a reopen are the ones written, and the database is intact.
func TestWALSpilledFramesReadBack(t *testing.T) {
	ctx := context.Background()
	opts := storagetest.SQLiteOptions(t)
	db, err := storage.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { db.Close() }()
	exec(t, db, `CREATE TABLE s (id BIGINT PRIMARY KEY, body TEXT NOT NULL)`)
	// ~1,600 pages, past the writer's 4,000 KiB cache (storage.go).
	const rows, updated, size = 1600, 400, 3500
	body := func(id int, fill string) string {
		return fmt.Sprintf("%06d", id) + strings.Repeat(fill, size-6)
	}
	// count: rows among [lo, hi) whose body is body(id, fill).
	const count = `SELECT count(*) FROM s WHERE id >= $1 AND id < $2 AND length(body) = $3
		AND substr(body, 1, 6) = printf('%06d', id) AND substr(body, 7) = $4`
	check := func(when string, q storage.Querier) {
		t.Helper()
		for _, c := range []struct {
			lo, hi int
			fill   string
		}{{0, updated, "u"}, {updated, rows, "p"}} {
			n, err := storage.QueryColumn[int64](ctx, q, count, c.lo, c.hi, size, strings.Repeat(c.fill, size-6))
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			if want := int64(c.hi - c.lo); len(n) != 1 || n[0] != want {
				t.Fatalf("%s: rows %d..%d: %v intact, want %d", when, c.lo, c.hi, n, want)
			}
		}
	}
	appends0, _ := storage.WALVFSStats()
	err = db.Write(ctx, func(tx storage.Tx) error {
		for id := range rows {
			if _, err := tx.Exec(ctx, `INSERT INTO s (id, body) VALUES ($1, $2)`, id, body(id, "p")); err != nil {
				return err
			}
		}
		// Pages spilled above are written again: frames overwritten in
		// place at the next spill or at COMMIT.
		for id := range updated {
			if _, err := tx.Exec(ctx, `UPDATE s SET body = $2 WHERE id = $1`, id, body(id, "u")); err != nil {
				return err
			}
		}
		check("inside the transaction", tx)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	appends1, _ := storage.WALVFSStats()
	if appends1-appends0 < 2*rows {
		t.Fatalf("SQLite wrote to the WAL %d times, want at least %d", appends1-appends0, 2*rows)
	}
	check("from a reader", db.Reader())
	ok, err := storage.QueryColumn[string](ctx, db.Reader(), `PRAGMA integrity_check`)
	if err != nil || len(ok) != 1 || ok[0] != "ok" {
		t.Fatalf("integrity_check: %v %v", ok, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = storage.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	check("after reopening", db.Reader())
}

// TestWALVFSWithoutPowersafeOverwrite: with psow=0 SQLite pads a
// commit to the WAL's next sector boundary and writes the part of the
// last padding frame past that boundary after the WAL's sync, then names
// that frame in the wal-index for other connections. Every commit read
// from another connection (on the default VFS) right after it returns
// is intact (a VFS that held that tail back failed the first read with
// a short read, "disk I/O error").
func TestWALVFSWithoutPowersafeOverwrite(t *testing.T) {
	ctx := context.Background()
	opts := storagetest.SQLiteOptions(t)
	db, err := storage.Open(ctx, opts) // registers the writer's VFS
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "psow.db")
	open := func(params string) *sql.DB {
		h, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_synchronous=FULL&psow=0"+params)
		if err != nil {
			t.Fatal(err)
		}
		h.SetMaxOpenConns(1)
		t.Cleanup(func() { h.Close() })
		return h
	}
	writer := open("&vfs=myelin-walbuf")
	if _, err := writer.Exec(`CREATE TABLE p (id INTEGER PRIMARY KEY, body TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	reader := open("")
	for i := range 40 {
		body := fmt.Sprintf("%06d", i) + strings.Repeat("b", 1500)
		if _, err := writer.Exec(`INSERT INTO p (id, body) VALUES (?, ?)`, i, body); err != nil {
			t.Fatal(err)
		}
		var n int
		err := reader.QueryRow(`SELECT count(*) FROM p WHERE length(body) = 1506 AND substr(body, 1, 6) = printf('%06d', id) AND substr(body, 7) = ?`,
			strings.Repeat("b", 1500)).Scan(&n)
		if err != nil || n != i+1 {
			t.Fatalf("after commit %d another connection reads %d intact rows (%v), want %d", i, n, err, i+1)
		}
	}
}

// TestFailedWALWriteMidTransactionFailsWrite: when a run of frames the
// VFS held back fails to write before the COMMIT, the transaction
// fails: Write reports it, none of its rows are in the database (before
// or after a reopen), the database is intact, and the next write
// commits. A transaction past the writer's cache writes its spilled
// frames when a run is full (xWrite) and when it reads a spilled page
// back (xRead); the failure is made to hit each.
func TestFailedWALWriteMidTransactionFailsWrite(t *testing.T) {
	for _, c := range []struct {
		name string
		// failAfter rows inserted, the next run written fails.
		failAfter int
	}{
		{"run full while inserting", 0},
		{"reading a spilled page back", 1600},
	} {
		t.Run(c.name, func(t *testing.T) { failMidTransaction(t, c.failAfter) })
	}
}

func failMidTransaction(t *testing.T, failAfter int) {
	ctx := context.Background()
	opts := storagetest.SQLiteOptions(t)
	db, err := storage.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { db.Close() }()
	t.Cleanup(func() { storage.WALVFSFailWrites(0) })
	exec(t, db, `CREATE TABLE m (id BIGINT PRIMARY KEY, body TEXT NOT NULL)`)
	exec(t, db, `INSERT INTO m (id, body) VALUES (0, 'before')`)
	body := strings.Repeat("m", 3500)
	const rows = 1600
	appends0, _ := storage.WALVFSStats()
	err = db.Write(ctx, func(tx storage.Tx) error {
		for id := 1; id <= rows; id++ {
			if id-1 == failAfter {
				storage.WALVFSFailWrites(1)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO m (id, body) VALUES ($1, $2)`, id, body); err != nil {
				return err
			}
		}
		if failAfter < rows {
			return nil
		}
		// The rows inserted first were spilled: updating them reads
		// their pages back from the WAL.
		storage.WALVFSFailWrites(1)
		for id := 1; id <= 200; id++ {
			if _, err := tx.Exec(ctx, `UPDATE m SET body = $2 WHERE id = $1`, id, "u"+body); err != nil {
				return err
			}
		}
		return nil
	})
	storage.WALVFSFailWrites(0)
	if err == nil {
		t.Fatal("Write returned nil although a run of its frames failed to reach the WAL")
	}
	t.Logf("the failed write: %v", err)
	// It failed before SQLite wrote the frames of all its rows, as it
	// would have by its COMMIT.
	if appends1, _ := storage.WALVFSStats(); appends1-appends0 >= 2*rows {
		t.Fatalf("SQLite wrote to the WAL %d times, want the failure before the COMMIT", appends1-appends0)
	}
	exec(t, db, `INSERT INTO m (id, body) VALUES (2000, 'after')`)
	check := func(when string) {
		t.Helper()
		got := int64s(t, db.Reader(), `SELECT id FROM m ORDER BY id`)
		if len(got) != 2 || got[0] != 0 || got[1] != 2000 {
			t.Fatalf("%s: rows %v, want [0 2000]", when, got)
		}
		ok, err := storage.QueryColumn[string](ctx, db.Reader(), `PRAGMA integrity_check`)
		if err != nil || len(ok) != 1 || ok[0] != "ok" {
			t.Fatalf("%s: integrity_check: %v %v", when, ok, err)
		}
	}
	check("after the failed write")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = storage.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	check("after reopening")
}
