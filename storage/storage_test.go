package storage_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

func TestRewriteForSQLite(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"no placeholders", `SELECT 1`, `SELECT 1`},
		{"one", `SELECT * FROM t WHERE a = $1`, `SELECT * FROM t WHERE a = ?1`},
		{"multi-digit", `VALUES ($1, $2, $10, $11)`, `VALUES (?1, ?2, ?10, ?11)`},
		{"repeated", `SELECT $1 WHERE a = $1 OR b = $1`, `SELECT ?1 WHERE a = ?1 OR b = ?1`},
		{"out of order", `INSERT INTO t (b, a) VALUES ($2, $1)`, `INSERT INTO t (b, a) VALUES (?2, ?1)`},
		{"dollar in string literal", `SELECT '$1', $1 WHERE x = 'costs $2'`, `SELECT '$1', ?1 WHERE x = 'costs $2'`},
		{"escaped quote in literal", `SELECT 'it''s $1', $2`, `SELECT 'it''s $1', ?2`},
		{"quoted identifier", `SELECT "col$1" FROM t WHERE a = $1`, `SELECT "col$1" FROM t WHERE a = ?1`},
		{"dollar in identifier", `SELECT a$1 FROM t WHERE a$1 = $1`, `SELECT a$1 FROM t WHERE a$1 = ?1`},
		{"line comment with apostrophe", "SELECT $1 -- the user's $2\nWHERE a = $3", "SELECT ?1 -- the user's $2\nWHERE a = ?3"},
		{"block comment", `SELECT /* don't $1 */ $2`, `SELECT /* don't $1 */ ?2`},
		{"unterminated literal", `SELECT '$1`, `SELECT '$1`},
		{"dollar without digit", `SELECT $a, $$body$$, $1`, `SELECT $a, $$body$$, ?1`},
		{"operators and casts", `SELECT $1::BIGINT, $2-$3`, `SELECT ?1::BIGINT, ?2-?3`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := storage.RewriteForSQLite(tt.in); got != tt.want {
				t.Errorf("rewrite(%q)\n got %q\nwant %q", tt.in, got, tt.want)
			}
		})
	}
}

// TestPlaceholdersOnEngine runs repeated and out-of-order placeholders on the
// engine itself, so the rewrite is checked against SQLite, not only against
// our expectations.
func TestPlaceholdersOnEngine(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		var a, b, c string
		err := db.Reader().QueryRow(ctx, `SELECT $2, $1, $2 || '$1' || $1`, "one", "two").Scan(&a, &b, &c)
		if err != nil {
			t.Fatal(err)
		}
		if a != "two" || b != "one" || c != "two$1one" {
			t.Errorf("got %q %q %q, want two one two$1one", a, b, c)
		}
	})
}

func TestWriteThenRead(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		exec(t, db, `CREATE TABLE rooms (room_id TEXT PRIMARY KEY, depth BIGINT NOT NULL)`)
		err := db.Write(ctx, func(tx storage.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO rooms (room_id, depth) VALUES ($1, $2)`, "!a:example.org", 1); err != nil {
				return err
			}
			// The function's own reads see its writes.
			var n int
			if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM rooms`).Scan(&n); err != nil {
				return err
			}
			if n != 1 {
				return fmt.Errorf("inside the write, count = %d, want 1", n)
			}
			_, err := tx.Exec(ctx, `UPDATE rooms SET depth = $2 WHERE room_id = $1`, "!a:example.org", 7)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		err = db.Read(ctx, func(q storage.Querier) error {
			var depth int64
			if err := q.QueryRow(ctx, `SELECT depth FROM rooms WHERE room_id = $1`, "!a:example.org").Scan(&depth); err != nil {
				return err
			}
			if depth != 7 {
				return fmt.Errorf("depth = %d, want 7", depth)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		var depth int64
		err = db.Reader().QueryRow(ctx, `SELECT depth FROM rooms WHERE room_id = $1`, "!missing:example.org").Scan(&depth)
		if !storage.IsNoRows(err) {
			t.Errorf("missing row: err = %v, want no rows", err)
		}
	})
}

func TestReadIsReadOnly(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)
		err := db.Read(ctx, func(q storage.Querier) error {
			_, err := q.Exec(ctx, `INSERT INTO t (id) VALUES (1)`)
			return err
		})
		if err == nil {
			t.Error("INSERT inside Read succeeded")
		}
		if got := int64s(t, db.Reader(), `SELECT id FROM t`); len(got) != 0 {
			t.Errorf("rows after write attempt in Read: %v", got)
		}
	})
}

func TestWriteErrorLeavesNothing(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)
		errBoom := errors.New("boom")
		var hookRan bool
		err := db.Write(ctx, func(tx storage.Tx) error {
			for i := 1; i <= 3; i++ {
				if _, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES ($1)`, i); err != nil {
					return err
				}
			}
			tx.AfterCommit(func() { hookRan = true })
			return fmt.Errorf("wrapped: %w", errBoom)
		})
		if !errors.Is(err, errBoom) {
			t.Fatalf("Write returned %v, want the function's error", err)
		}
		if hookRan {
			t.Error("AfterCommit hook of a failed write ran")
		}
		if got := int64s(t, db.Reader(), `SELECT id FROM t`); len(got) != 0 {
			t.Errorf("rows left by a failed write: %v", got)
		}
	})
}

// TestWriteIsolationInBatch runs many writes at once, half of which insert
// and then fail, and checks exactly the successful ones are kept. On SQLite
// the first write holds the writer until every other write is queued, so all
// of them join its group-commit transaction.
func TestWriteIsolationInBatch(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)
		exec(t, db, `INSERT INTO t (id) VALUES (-1)`)
		const n = 120
		release := make(chan struct{})
		blockerDone := make(chan error, 1)
		commitsBefore := commitsOf(db)
		if db.Engine() == storage.SQLite {
			running := make(chan struct{})
			go func() {
				blockerDone <- db.Write(ctx, func(tx storage.Tx) error {
					close(running)
					<-release
					return nil
				})
			}()
			<-running
		} else {
			close(release)
			blockerDone <- nil
		}

		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = db.Write(ctx, func(tx storage.Tx) error {
					if _, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES ($1)`, i); err != nil {
						return err
					}
					switch i % 4 {
					case 1: // fail after inserting
						return fmt.Errorf("write %d fails", i)
					case 3: // fail on an SQL error after inserting
						_, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES (-1)`)
						if err == nil {
							return fmt.Errorf("write %d: duplicate insert succeeded", i)
						}
						return err
					}
					return nil
				})
			}()
		}
		if db.Engine() == storage.SQLite {
			deadline := time.Now().Add(10 * time.Second)
			for db.QueuedWrites() < n && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if q := db.QueuedWrites(); q != n {
				close(release)
				t.Fatalf("%d writes queued behind the blocker, want %d", q, n)
			}
			close(release)
		}
		within(t, 30*time.Second, "concurrent writes", wg.Wait)
		if err := <-blockerDone; err != nil {
			t.Fatal(err)
		}

		want := []int64{-1}
		for i := range n {
			ok := i%2 == 0
			if ok != (errs[i] == nil) {
				t.Errorf("write %d: err = %v, want success %v", i, errs[i], ok)
			}
			if i%4 == 3 && !storage.IsUniqueViolation(errs[i]) {
				t.Errorf("write %d: err = %v, want a unique violation", i, errs[i])
			}
			if ok {
				want = append(want, int64(i))
			}
		}
		got := int64s(t, db.Reader(), `SELECT id FROM t ORDER BY id`)
		if !slices.Equal(got, want) {
			t.Errorf("rows = %v\nwant   %v", got, want)
		}
		if db.Engine() == storage.SQLite {
			// The n writes queued while the blocker's batch ran join
			// it: one commit for all (see runBatch).
			if c := commitsOf(db) - commitsBefore; c != 1 {
				t.Errorf("%d commits for the blocker and %d writes queued while it ran, want 1", c, n)
			}
		}
	})
}

func TestWritePanicIsAnError(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)
		var err error
		within(t, 10*time.Second, "panicking write", func() {
			err = db.Write(ctx, func(tx storage.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES (1)`); err != nil {
					return err
				}
				panic("write function bug")
			})
		})
		if err == nil || !strings.Contains(err.Error(), "write function bug") {
			t.Fatalf("Write = %v, want an error carrying the panic", err)
		}
		// The writer survives and the panicking write left nothing behind.
		exec(t, db, `INSERT INTO t (id) VALUES (2)`)
		if got := int64s(t, db.Reader(), `SELECT id FROM t`); !slices.Equal(got, []int64{2}) {
			t.Errorf("rows = %v, want [2]", got)
		}
	})
}

func TestAfterCommit(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)

		var calls []string
		var seen []int64
		err := db.Write(ctx, func(tx storage.Tx) error {
			tx.AfterCommit(func() {
				calls = append(calls, "first")
				// A separate connection sees the row: the commit happened.
				seen = int64s(t, db.Reader(), `SELECT id FROM t`)
			})
			tx.AfterCommit(func() { calls = append(calls, "second") })
			if len(calls) != 0 {
				t.Error("hook ran before the function returned")
			}
			_, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES (1)`)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		// Hooks have run, in order, by the time Write returns.
		if !slices.Equal(calls, []string{"first", "second"}) {
			t.Errorf("hooks ran %v, want [first second]", calls)
		}
		if !slices.Equal(seen, []int64{1}) {
			t.Errorf("hook saw rows %v, want [1] (committed)", seen)
		}

		// A hook may itself write (on SQLite it once ran on the writer
		// goroutine and deadlocked here).
		within(t, 10*time.Second, "Write from an AfterCommit hook", func() {
			err = db.Write(ctx, func(tx storage.Tx) error {
				tx.AfterCommit(func() { exec(t, db, `INSERT INTO t (id) VALUES (3)`) })
				_, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES (2)`)
				return err
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := int64s(t, db.Reader(), `SELECT id FROM t ORDER BY id`); !slices.Equal(got, []int64{1, 2, 3}) {
			t.Errorf("rows = %v, want [1 2 3]", got)
		}
	})
}

// TestAfterCommitOnlyForCommitted mixes committed and failed functions in one
// batch (on SQLite) and checks only the committed ones' hooks run.
func TestAfterCommitOnlyForCommitted(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)
		const n = 40
		var mu sync.Mutex
		ran := map[int]bool{}
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = db.Write(ctx, func(tx storage.Tx) error {
					tx.AfterCommit(func() { mu.Lock(); ran[i] = true; mu.Unlock() })
					if _, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES ($1)`, i); err != nil {
						return err
					}
					if i%3 == 0 {
						return errors.New("fail")
					}
					return nil
				})
			}()
		}
		within(t, 30*time.Second, "writes", wg.Wait)
		for i := range n {
			if want := i%3 != 0; ran[i] != want {
				t.Errorf("write %d: hook ran = %v, want %v", i, ran[i], want)
			}
		}
	})
}

func TestIsUniqueViolation(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT NOT NULL UNIQUE)`)
		exec(t, db, `INSERT INTO t (id, name) VALUES (1, 'a')`)
		insert := func(query string) error {
			return db.Write(ctx, func(tx storage.Tx) error {
				_, err := tx.Exec(ctx, query)
				return err
			})
		}
		tests := []struct {
			name  string
			err   error
			wantU bool
		}{
			{"primary key", insert(`INSERT INTO t (id, name) VALUES (1, 'b')`), true},
			{"unique column", insert(`INSERT INTO t (id, name) VALUES (2, 'a')`), true},
			{"not null", insert(`INSERT INTO t (id, name) VALUES (3, NULL)`), false},
			{"syntax", insert(`INSERT INTO nowhere VALUES`), false},
			{"nil", nil, false},
			{"other error", errors.New("unique"), false},
		}
		if wrapped := insert(`INSERT INTO t (id, name) VALUES (1, 'c')`); wrapped != nil {
			tests = append(tests, struct {
				name  string
				err   error
				wantU bool
			}{"wrapped", fmt.Errorf("storing: %w", wrapped), true})
		} else {
			t.Error("duplicate insert succeeded")
		}
		for _, tt := range tests {
			if tt.name != "nil" && tt.name != "other error" && tt.err == nil {
				t.Errorf("%s: statement succeeded, want an error", tt.name)
				continue
			}
			if got := storage.IsUniqueViolation(tt.err); got != tt.wantU {
				t.Errorf("%s: IsUniqueViolation(%v) = %v, want %v", tt.name, tt.err, got, tt.wantU)
			}
		}
	})
}

// TestGroupCommitBatches checks that concurrent writes share commits.
func TestGroupCommitBatches(t *testing.T) {
	db := storagetest.OpenSQLite(t)
	ctx := context.Background()
	exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)
	const n = 200
	before := commitsOf(db)
	start := make(chan struct{})
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs <- db.Write(ctx, func(tx storage.Tx) error {
				_, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES ($1)`, i)
				return err
			})
		}()
	}
	close(start)
	within(t, 60*time.Second, "200 writes", wg.Wait)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := int64s(t, db.Reader(), `SELECT COUNT(*) FROM t`); got[0] != n {
		t.Fatalf("%d rows, want %d", got[0], n)
	}
	commits := commitsOf(db) - before
	t.Logf("%d writes, %d commits", n, commits)
	if commits < 1 || commits >= n {
		t.Errorf("%d commits for %d concurrent writes, want fewer commits than writes", commits, n)
	}
}
