package pgdriver_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/pgdriver"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// openDB opens the driver on a fresh schema (skipped without
// MYELIN_TEST_POSTGRES, like every PostgreSQL test).
func openDB(t *testing.T) *sql.DB {
	t.Helper()
	opts := storagetest.PostgresOptions(t)
	db, err := sql.Open(pgdriver.DriverName, opts.PostgresURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func mustExec(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// TestConversions round-trips every column type Myelin's schemas use (and
// the ones a query can produce: numeric from SUM, float) through
// parameters and results, NULL included.
func TestConversions(t *testing.T) {
	db := openDB(t)
	mustExec(t, db, `CREATE TABLE conv (
		id BIGSERIAL PRIMARY KEY, i8 BIGINT, i4 INTEGER, i2 SMALLINT, b BOOLEAN,
		s TEXT, raw BYTEA, f DOUBLE PRECISION, r REAL, j JSON, jb JSONB)`)
	bin := []byte{0x00, 0xff, 0x5c, 0x78, 'x', 0x80} // NUL, invalid UTF-8, a backslash and "x" (bytea's escape syntax)
	type row struct {
		i8  int64
		i4  int64
		i2  int64
		b   bool
		s   string
		raw []byte
		f   float64
		r   float64
		j   string
		jb  string
	}
	in := []row{
		{math.MaxInt64, math.MaxInt32, math.MaxInt16, true, "héllo\\x00 'quoted' \"d\"", bin, math.Pi, 1.5, `{"a":[1,"x"]}`, `{"k": "v"}`},
		{math.MinInt64, math.MinInt32, math.MinInt16, false, "", []byte{}, -1e300, -0.25, `[]`, `null`},
	}
	for _, r := range in {
		mustExec(t, db, `INSERT INTO conv (i8, i4, i2, b, s, raw, f, r, j, jb) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)`,
			r.i8, r.i4, r.i2, r.b, r.s, r.raw, r.f, r.r, r.j, r.jb)
	}
	rows, err := db.Query(`SELECT i8, i4, i2, b, s, raw, f, r, j, jb FROM conv ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var got []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.i8, &r.i4, &r.i2, &r.b, &r.s, &r.raw, &r.f, &r.r, &r.j, &r.jb); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if len(got) != len(in) {
		t.Fatalf("got %d rows, want %d", len(got), len(in))
	}
	for i := range in {
		w, g := in[i], got[i]
		// jsonb normalises its text; json keeps it.
		if i == 0 {
			w.jb = `{"k": "v"}`
		}
		if fmt.Sprintf("%v", w) != fmt.Sprintf("%v", g) || (g.raw == nil) {
			t.Errorf("row %d:\n got %#v\nwant %#v", i, g, w)
		}
	}

	// NULLs: nil, a nil []byte (NULL, as with pgx) and sql.Null* types.
	mustExec(t, db, `INSERT INTO conv (i8, s, raw, b) VALUES ($1, $2, $3, $4)`, nil, sql.NullString{}, []byte(nil), sql.NullBool{})
	var (
		i8  sql.NullInt64
		s   sql.NullString
		raw []byte
		b   sql.NullBool
	)
	if err := db.QueryRow(`SELECT i8, s, raw, b FROM conv WHERE id = 3`).Scan(&i8, &s, &raw, &b); err != nil {
		t.Fatal(err)
	}
	if i8.Valid || s.Valid || raw != nil || b.Valid {
		t.Errorf("NULLs came back as %v %v %v %v", i8, s, raw, b)
	}

	// A string bound to bytea is its bytes; bytes bound to text are the text.
	var back []byte
	if err := db.QueryRow(`SELECT $1::bytea`, "a\\x41").Scan(&back); err != nil || string(back) != "a\\x41" {
		t.Errorf("string as bytea: %q, %v", back, err)
	}
	var text string
	if err := db.QueryRow(`SELECT $1::text || 'z'`, []byte("abc")).Scan(&text); err != nil || text != "abcz" {
		t.Errorf("bytes as text: %q, %v", text, err)
	}

	// numeric (SUM of bigint) scans into int64; COUNT is int8; a bool
	// expression is bool; an int parameter into a bool column reads as PostgreSQL's '1'.
	var sum, count int64
	var any1 bool
	if err := db.QueryRow(`SELECT SUM(i8 / 1000000000000), COUNT(*), bool_or(b) FROM conv WHERE id = $1`, 1).Scan(&sum, &count, &any1); err != nil {
		t.Fatal(err)
	}
	if sum != math.MaxInt64/1000000000000 || count != 1 || !any1 {
		t.Errorf("aggregates: %d %d %v", sum, count, any1)
	}

	// time.Time parameters and a timestamptz result (text form, a string).
	when := time.Date(2026, 11, 27, 5, 30, 1, 123456000, time.UTC)
	var unix float64
	if err := db.QueryRow(`SELECT extract(epoch FROM $1::timestamptz)`, when).Scan(&unix); err != nil {
		t.Fatal(err)
	}
	if math.Abs(unix-float64(when.UnixMicro())/1e6) > 1e-6 {
		t.Errorf("time: epoch %f, want %f", unix, float64(when.UnixMicro())/1e6)
	}

	// RowsAffected comes from the command tag.
	res, err := db.Exec(`UPDATE conv SET s = $1 WHERE id <= $2`, "u", 2)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 2 {
		t.Errorf("RowsAffected = %d, want 2", n)
	}
}

// TestErrors: server errors stay *pgconn.PgError, so storage's SQLSTATE
// checks work, and a wrong argument count is an error, not a panic.
func TestErrors(t *testing.T) {
	db := openDB(t)
	mustExec(t, db, `CREATE TABLE u (k TEXT PRIMARY KEY)`)
	mustExec(t, db, `INSERT INTO u (k) VALUES ($1)`, "a")
	_, err := db.Exec(`INSERT INTO u (k) VALUES ($1)`, "a")
	if !storage.IsUniqueViolation(err) {
		t.Errorf("duplicate key: %v is not a unique violation", err)
	}
	var pgErr *pgconn.PgError
	_, err = db.Query(`SELECT nosuchcolumn FROM u WHERE k = $1`, "a")
	if !errors.As(err, &pgErr) || pgErr.Code != "42703" {
		t.Errorf("bad column: %v", err)
	}
	if _, err := db.Exec(`INSERT INTO u (k) VALUES ($1)`, "a", "b"); err == nil {
		t.Error("two arguments for one parameter: no error")
	}
	if _, err := db.Exec(`INSERT INTO u (k) VALUES ($1)`, sql.Named("k", "z")); err == nil {
		t.Error("named argument: no error")
	}
	// The connection is still usable after each error.
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM u WHERE k <> $1`, "").Scan(&n); err != nil || n != 1 {
		t.Errorf("after errors: %d, %v", n, err)
	}
}

// TestTransactions: rollback keeps nothing, COMMIT of an aborted
// transaction is an error, and BeginTx's options reach the server.
func TestTransactions(t *testing.T) {
	db := openDB(t)
	db.SetMaxOpenConns(1) // every statement below on the same connection
	mustExec(t, db, `CREATE TABLE t (k TEXT PRIMARY KEY)`)
	ctx := context.Background()

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO t (k) VALUES ($1)`, "rolled-back"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}

	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO t (k) VALUES ($1)`, "aborted"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`SELECT 1/0 WHERE $1`, true); err == nil {
		t.Fatal("division by zero: no error")
	}
	if err := tx.Commit(); !errors.Is(err, pgdriver.ErrCommitRolledBack) {
		t.Errorf("commit after a failed statement: %v, want ErrCommitRolledBack", err)
	}

	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO t (k) VALUES ($1)`, "kept"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var keys []string
	rows, err := db.Query(`SELECT k FROM t ORDER BY k`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	rows.Close()
	if fmt.Sprint(keys) != "[kept]" {
		t.Errorf("rows after rollback, failed commit, commit: %v, want [kept]", keys)
	}

	for _, c := range []struct {
		level sql.IsolationLevel
		want  string
	}{
		{sql.LevelDefault, "read committed"},
		{sql.LevelReadCommitted, "read committed"},
		{sql.LevelRepeatableRead, "repeatable read"},
		{sql.LevelSerializable, "serializable"},
	} {
		tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: c.level, ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		var level, ro string
		if err := tx.QueryRow(`SELECT current_setting($1), current_setting($2)`, "transaction_isolation", "transaction_read_only").Scan(&level, &ro); err != nil {
			t.Fatal(err)
		}
		if level != c.want || ro != "on" {
			t.Errorf("%v read-only: isolation %q read_only %q", c.level, level, ro)
		}
		var pgErr *pgconn.PgError
		if _, err := tx.Exec(`INSERT INTO t (k) VALUES ($1)`, "x"); !errors.As(err, &pgErr) || pgErr.Code != "25006" {
			t.Errorf("write in a read-only transaction: %v", err)
		}
		_ = tx.Rollback()
	}
	if _, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelLinearizable}); err == nil {
		t.Error("linearizable: no error")
	}
}

// TestSerializationFailure: two serializable transactions that each read
// what the other writes; one of them fails with SQLSTATE 40001.
func TestSerializationFailure(t *testing.T) {
	db := openDB(t)
	mustExec(t, db, `CREATE TABLE s (k TEXT PRIMARY KEY, v BIGINT)`)
	mustExec(t, db, `INSERT INTO s (k, v) VALUES ('a', 1), ('b', 2)`)
	ctx := context.Background()
	opts := &sql.TxOptions{Isolation: sql.LevelSerializable}
	t1, err := db.BeginTx(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer t1.Rollback()
	t2, err := db.BeginTx(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer t2.Rollback()
	var sum int64
	if err := t1.QueryRow(`SELECT SUM(v) FROM s WHERE k <> $1`, "").Scan(&sum); err != nil {
		t.Fatal(err)
	}
	if err := t2.QueryRow(`SELECT SUM(v) FROM s WHERE k <> $1`, "").Scan(&sum); err != nil {
		t.Fatal(err)
	}
	if _, err := t1.Exec(`UPDATE s SET v = v + 10 WHERE k = $1`, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := t2.Exec(`UPDATE s SET v = v + 10 WHERE k = $1`, "b"); err != nil {
		t.Fatal(err)
	}
	err1 := t1.Commit()
	err2 := t2.Commit()
	var pgErr *pgconn.PgError
	failed := err2
	if err1 != nil {
		failed = err1
	}
	if (err1 == nil) == (err2 == nil) || !errors.As(failed, &pgErr) || pgErr.Code != "40001" {
		t.Errorf("commits: %v, %v; want exactly one serialization failure (40001)", err1, err2)
	}
}

// TestCancel: a cancelled statement returns promptly with the context's
// error and the pool goes on working (the cancelled connection is dropped).
func TestCancel(t *testing.T) {
	db := openDB(t)
	db.SetMaxOpenConns(1)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := db.ExecContext(ctx, `SELECT pg_sleep($1)`, 30)
	if err == nil {
		t.Fatal("pg_sleep(30) with a 200 ms deadline: no error")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("cancel took %v", d)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Logf("cancel error: %v", err)
	}
	for i := 0; i < 3; i++ {
		var n int64
		if err := db.QueryRow(`SELECT $1::bigint + 1`, int64(i)).Scan(&n); err != nil || n != int64(i)+1 {
			t.Fatalf("after cancel: %d, %v", n, err)
		}
	}
	// A context already done never reaches the server.
	done, cancelDone := context.WithCancel(context.Background())
	cancelDone()
	if _, err := db.QueryContext(done, `SELECT $1::int`, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("done context: %v", err)
	}
}

// TestStatementCache: more distinct texts than the cache holds are
// evicted and prepared again correctly, and a cached statement whose
// result type changed with the schema is re-prepared (outside a
// transaction) instead of failing.
func TestStatementCache(t *testing.T) {
	db := openDB(t)
	db.SetMaxOpenConns(1)
	for i := 0; i < 600; i++ {
		var got int64
		q := fmt.Sprintf(`SELECT $1::bigint + %d`, i)
		if err := db.QueryRow(q, 1).Scan(&got); err != nil || got != int64(i)+1 {
			t.Fatalf("%s: %d, %v", q, got, err)
		}
	}
	var got int64
	if err := db.QueryRow(`SELECT $1::bigint + 0`, 7).Scan(&got); err != nil || got != 7 {
		t.Fatalf("evicted statement again: %d, %v", got, err)
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM pg_prepared_statements`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n > 512 {
		t.Errorf("%d prepared statements on the connection, cache holds 512", n)
	}

	mustExec(t, db, `CREATE TABLE c (a BIGINT)`)
	mustExec(t, db, `INSERT INTO c (a) VALUES ($1)`, 1)
	const q = `SELECT * FROM c WHERE a = $1`
	var a, b int64
	if err := db.QueryRow(q, 1).Scan(&a); err != nil {
		t.Fatal(err)
	}
	mustExec(t, db, `ALTER TABLE c ADD COLUMN b BIGINT NOT NULL DEFAULT 5`)
	if err := db.QueryRow(q, 1).Scan(&a, &b); err != nil || a != 1 || b != 5 {
		t.Fatalf("after ALTER TABLE: %d %d, %v", a, b, err)
	}
}

// TestSimpleProtocolExec: an Exec without arguments may hold several
// statements (migration files), and its error is the failing statement's.
func TestSimpleProtocolExec(t *testing.T) {
	db := openDB(t)
	mustExec(t, db, `CREATE TABLE m1 (a BIGINT); CREATE TABLE m2 (b TEXT); INSERT INTO m1 VALUES (1), (2)`)
	var n int64
	if err := db.QueryRow(`SELECT count(*) FROM m1`).Scan(&n); err != nil || n != 2 {
		t.Errorf("multi-statement exec: %d, %v", n, err)
	}
	var pgErr *pgconn.PgError
	if _, err := db.Exec(`INSERT INTO m2 VALUES ('x'); INSERT INTO nosuch VALUES (1)`); !errors.As(err, &pgErr) || pgErr.Code != "42P01" {
		t.Errorf("failing statement: %v", err)
	}
	// The simple protocol runs the statements as one implicit transaction.
	if err := db.QueryRow(`SELECT count(*) FROM m2`).Scan(&n); err != nil || n != 0 {
		t.Errorf("rows left by the failed multi-statement exec: %d, %v", n, err)
	}
}
