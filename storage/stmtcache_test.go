package storage_test

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/storage"
)

// inQuery is prefix followed by "($1, $2, ..., $n)" and the arguments 1..n.
func inQuery(prefix string, n int) (string, []any) {
	var b strings.Builder
	b.WriteString(prefix)
	b.WriteByte('(')
	args := make([]any, n)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("$" + strconv.Itoa(i+1))
		args[i] = i + 1
	}
	b.WriteByte(')')
	return b.String(), args
}

// TestListStatementsNotCached runs statements built from lists — one text
// per list length — through every path (the reader pool, a read
// transaction, a write transaction) and checks their answers, and that
// SQLite keeps none of the long ones afterwards: each would stay in its
// connection's statement cache (tens of KiB apiece) for the process's
// life. Statements with at most MaxCachedStatementArgs arguments are
// still cached; the test shows that too, so that the memory it measures
// is the cache's.
func TestListStatementsNotCached(t *testing.T) {
	ctx := context.Background()
	db, err := storage.Open(ctx, storage.Options{Engine: storage.SQLite,
		SQLitePath: filepath.Join(t.TempDir(), "db.sqlite"), MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, ok := storage.SQLiteMemoryUsed(); !ok {
		t.Fatal("SQLite's memory status cannot be read in this build")
	}
	const rows = 400
	if err := db.Write(ctx, func(tx storage.Tx) error {
		if _, err := tx.Exec(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)`); err != nil {
			return err
		}
		for i := 1; i <= rows; i++ {
			if _, err := tx.Exec(ctx, `INSERT INTO t (id, v) VALUES ($1, 'a')`, i); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	count := func(q storage.Querier, n int) {
		t.Helper()
		query, args := inQuery(`SELECT id FROM t WHERE id IN `, n)
		ids, err := storage.QueryColumn[int64](ctx, q, query, args...)
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) != n {
			t.Fatalf("list of %d: %d rows", n, len(ids))
		}
		var one int64
		if err := q.QueryRow(ctx, query, args...).Scan(&one); err != nil || one < 1 || one > int64(n) {
			t.Fatalf("list of %d, QueryRow: %d, %v", n, one, err)
		}
	}
	update := func(n int, v string) {
		t.Helper()
		query, args := inQuery(`UPDATE t SET v = '`+v+`' WHERE id IN `, n)
		if err := db.Write(ctx, func(tx storage.Tx) error {
			res, err := tx.Exec(ctx, query, args...)
			if err != nil {
				return err
			}
			if got, err := res.RowsAffected(); err != nil || got != int64(n) {
				t.Errorf("update of %d: %d rows affected, %v", n, got, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	lists := func(from, to int, v string) {
		for n := from; n <= to; n++ {
			count(db.Reader(), n)
			if err := db.Read(ctx, func(q storage.Querier) error { count(q, n); return nil }); err != nil {
				t.Fatal(err)
			}
			update(n, v)
		}
	}
	// Both connections opened, their schemas read and their pages cached.
	lists(1, 2, "b")
	lists(200, 201, "b")
	memory := func() int64 {
		m, _ := storage.SQLiteMemoryUsed()
		return m
	}

	before := memory()
	lists(storage.MaxCachedStatementArgs-11, storage.MaxCachedStatementArgs, "c")
	cachedGrowth := memory() - before

	before = memory()
	lists(storage.MaxCachedStatementArgs+1, storage.MaxCachedStatementArgs+60, "d")
	lists(300, 320, "e")
	longGrowth := memory() - before
	t.Logf("SQLite memory: +%d KiB after 12 short list lengths (cached), +%d KiB after 81 long ones",
		cachedGrowth>>10, longGrowth>>10)
	// 12 lengths on two connections: ~10 KiB per statement.
	if cachedGrowth < 12*2*4<<10 {
		t.Errorf("short lists: SQLite grew by %d KiB; the cached statements should show", cachedGrowth>>10)
	}
	// Cached, the 81 long ones would be 81 × 2 statements of 10–70 KiB.
	if longGrowth > 256<<10 {
		t.Errorf("long lists: SQLite grew by %d KiB; statements with more than %d arguments must not be cached",
			longGrowth>>10, storage.MaxCachedStatementArgs)
	}
	var d int
	if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM t WHERE v = 'e'`).Scan(&d); err != nil || d != 320 {
		t.Fatalf("rows updated by the last list: %d, %v", d, err)
	}
}

// TestRewriterKeepsOnlyFixedTexts: a query text is rewritten once while it
// has at most MaxCachedStatementArgs placeholders; a longer one (built
// from a list, one text per length) is rewritten on each use and not kept.
func TestRewriterKeepsOnlyFixedTexts(t *testing.T) {
	calls := map[string]int{}
	rewrite := storage.NewRewriter(func(q string) string {
		calls[q]++
		return storage.RewriteForSQLite(q)
	})
	short, _ := inQuery(`SELECT id FROM t WHERE id IN `, storage.MaxCachedStatementArgs)
	long, _ := inQuery(`SELECT id FROM t WHERE id IN `, storage.MaxCachedStatementArgs+1)
	for range 3 {
		if got, want := rewrite(short), storage.RewriteForSQLite(short); got != want {
			t.Fatalf("short: %q, want %q", got, want)
		}
		if got, want := rewrite(long), storage.RewriteForSQLite(long); got != want {
			t.Fatalf("long: %q, want %q", got, want)
		}
	}
	if calls[short] != 1 || calls[long] != 3 {
		t.Errorf("rewrites: short %d (want 1), long %d (want 3)", calls[short], calls[long])
	}
}
