package storage_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

func TestWriteAfterClose(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		ran := false
		err := db.Write(context.Background(), func(tx storage.Tx) error { ran = true; return nil })
		if !errors.Is(err, storage.ErrClosed) {
			t.Errorf("Write after Close = %v, want ErrClosed", err)
		}
		if ran {
			t.Error("write function ran after Close")
		}
		if err := db.Close(); err != nil {
			t.Errorf("second Close = %v", err)
		}
	})
}

// TestCloseDrainsQueuedWrites queues writes behind a blocked one, closes,
// and checks every queued write committed and survives a reopen.
func TestCloseDrainsQueuedWrites(t *testing.T) {
	ctx := context.Background()
	opts := storagetest.SQLiteOptions(t)
	db, err := storage.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)

	release := make(chan struct{})
	blocker := make(chan error, 1)
	running := make(chan struct{})
	go func() {
		blocker <- db.Write(ctx, func(tx storage.Tx) error { close(running); <-release; return nil })
	}()
	<-running
	const n = 50
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = db.Write(ctx, func(tx storage.Tx) error {
				_, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES ($1)`, i)
				return err
			})
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for db.QueuedWrites() < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if q := db.QueuedWrites(); q != n {
		close(release)
		t.Fatalf("%d writes queued behind the blocker, want %d", q, n)
	}
	closed := make(chan error, 1)
	go func() { closed <- db.Close() }()
	// Close is waiting for the writer; new writes are refused meanwhile.
	// Wait until Close has begun: a Write that came first would be
	// queued behind the blocker, which is released only after it, and
	// the test would hang until the go test timeout (a fixed 20 ms sleep
	// left that to the scheduler).
	deadline = time.Now().Add(10 * time.Second)
	for !db.Closing() {
		if time.Now().After(deadline) {
			close(release)
			t.Fatal("Close did not begin")
		}
		time.Sleep(time.Millisecond)
	}
	if err := db.Write(ctx, func(tx storage.Tx) error { return nil }); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("Write during Close = %v, want ErrClosed", err)
	}
	close(release)
	within(t, 30*time.Second, "Close with queued writes", wg.Wait)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := <-blocker; err != nil {
		t.Fatal(err)
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("queued write %d: %v", i, err)
		}
	}

	db, err = storage.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if got := int64s(t, db.Reader(), `SELECT COUNT(*) FROM t`); got[0] != n {
		t.Errorf("%d rows after reopen, want %d", got[0], n)
	}
}

// TestCloseRacingWrites closes while writers keep arriving: every Write
// returns (nil or ErrClosed, never hangs) and every acknowledged one is kept.
func TestCloseRacingWrites(t *testing.T) {
	ctx := context.Background()
	for round := range 20 {
		opts := storagetest.SQLiteOptions(t)
		db, err := storage.Open(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)
		const writers, perWriter = 8, 50
		var mu sync.Mutex
		var acked []int64
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perWriter {
					id := int64(w*perWriter + i)
					err := db.Write(ctx, func(tx storage.Tx) error {
						_, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES ($1)`, id)
						return err
					})
					switch {
					case err == nil:
						mu.Lock()
						acked = append(acked, id)
						mu.Unlock()
					case errors.Is(err, storage.ErrClosed):
						return
					default:
						t.Errorf("round %d: write %d: %v", round, id, err)
						return
					}
				}
			}()
		}
		time.Sleep(time.Duration(round%5) * time.Millisecond)
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		within(t, 10*time.Second, "writers racing Close", wg.Wait)

		db, err = storage.Open(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		got := int64s(t, db.Reader(), `SELECT id FROM t ORDER BY id`)
		db.Close()
		slices.Sort(acked)
		if !slices.Equal(got, acked) {
			t.Fatalf("round %d: %d rows after reopen, %d acknowledged writes; they differ", round, len(got), len(acked))
		}
	}
}
