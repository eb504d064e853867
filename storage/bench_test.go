package storage_test

import (
	"context"
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
	before := db.CommitCount()
	b.ResetTimer()
	run(b, write)
	b.StopTimer()
	if commits := db.CommitCount() - before; commits > 0 {
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
