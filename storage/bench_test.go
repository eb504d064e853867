package storage_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// benchmarkWrites measures single-row inserts on SQLite and reports how many
// writes shared each COMMIT (each COMMIT is one fsync).
func benchmarkWrites(b *testing.B, run func(b *testing.B, write func() error)) {
	db := storagetest.OpenSQLite(b)
	ctx := context.Background()
	exec(b, db, `CREATE TABLE t (id BIGINT PRIMARY KEY, body TEXT NOT NULL)`)
	var next atomic.Int64
	write := func() error {
		id := next.Add(1)
		return db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO t (id, body) VALUES ($1, $2)`, id, "{\"msgtype\":\"m.text\",\"body\":\"hello\"}")
			return err
		})
	}
	before := commitsOf(db)
	b.ResetTimer()
	run(b, write)
	b.StopTimer()
	if commits := commitsOf(db) - before; commits > 0 {
		b.ReportMetric(float64(next.Load())/float64(commits), "writes/commit")
	}
}

func BenchmarkWriteSequential(b *testing.B) {
	benchmarkWrites(b, func(b *testing.B, write func() error) {
		for b.Loop() {
			if err := write(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkWriteParallel(b *testing.B) {
	benchmarkWrites(b, func(b *testing.B, write func() error) {
		// Many concurrent writers per CPU, like request handlers.
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := write(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkWrite42Pages measures sequential writes of 42 pages each, the
// size of a group commit of eight messages (section "walvfs" of
// docs/benchmarks.md): the WAL's writes and fsync inside each COMMIT.
// Run it with bench/fsyncdelay.c preloaded to see a slow disk.
func BenchmarkWrite42Pages(b *testing.B) {
	db := storagetest.OpenSQLite(b)
	ctx := context.Background()
	exec(b, db, `CREATE TABLE p (id BIGINT PRIMARY KEY, body TEXT NOT NULL)`)
	body := strings.Repeat("p", 3000) // a page of its own per row
	next := 0
	for b.Loop() {
		err := db.Write(ctx, func(tx storage.Tx) error {
			for range 42 {
				next++
				if _, err := tx.Exec(ctx, `INSERT INTO p (id, body) VALUES ($1, $2)`, next, body); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadRow measures one indexed single-row read on the read pool,
// the shape of most lookups on the send and sync paths (statement
// preparation dominates it unless statements are cached).
func BenchmarkReadRow(b *testing.B) {
	db := storagetest.OpenSQLite(b)
	ctx := context.Background()
	exec(b, db, `CREATE TABLE t (id BIGINT PRIMARY KEY, room TEXT NOT NULL, body TEXT NOT NULL)`)
	if err := db.Write(ctx, func(tx storage.Tx) error {
		for i := 0; i < 1000; i++ {
			if _, err := tx.Exec(ctx, `INSERT INTO t (id, room, body) VALUES ($1, $2, $3)`, i, fmt.Sprint("!room", i%10), "hello"); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	i := 0
	for b.Loop() {
		var body string
		i++
		if err := db.Reader().QueryRow(ctx, `SELECT body FROM t WHERE id = $1 AND room = $2`, i%1000, fmt.Sprint("!room", i%10)).Scan(&body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteTxStatements measures a write function running several
// statements (the shape of an event commit), sequentially.
func BenchmarkWriteTxStatements(b *testing.B) {
	db := storagetest.OpenSQLite(b)
	ctx := context.Background()
	exec(b, db, `CREATE TABLE t (id BIGINT PRIMARY KEY, body TEXT NOT NULL)`)
	exec(b, db, `CREATE TABLE h (k TEXT PRIMARY KEY, v BIGINT NOT NULL)`)
	var next int64
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			err := db.Write(ctx, func(tx storage.Tx) error {
				next++ // the writer runs one function at a time
				id := next
				if _, err := tx.Exec(ctx, `INSERT INTO t (id, body) VALUES ($1, $2)`, id, "x"); err != nil {
					return err
				}
				var v int64
				if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(id), 0) FROM t WHERE id <= $1`, id).Scan(&v); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, `INSERT INTO h (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v`, "head", v)
				return err
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}
