package storage

import (
	"context"
	"fmt"
)

// writeRequest is one Write call waiting for the SQLite writer.
type writeRequest struct {
	ctx  context.Context
	fn   func(Tx) error
	done chan error // buffered, receives exactly one value
}

// maxBatch bounds how many write functions share one transaction, so one
// commit never holds a huge batch of callers hostage.
const maxBatch = 256

func (db *DB) enqueueWrite(ctx context.Context, fn func(Tx) error) error {
	req := &writeRequest{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case <-db.closed:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	case db.queue <- req:
	}
	// Once queued, wait for the outcome even if ctx ends: the function may
	// already be running inside a transaction that will commit, and the
	// caller must not believe a committed write failed.
	return <-req.done
}

// groupCommitLoop is the single SQLite writer. It takes every request that
// is waiting, runs them in one transaction (each in its own savepoint) and
// commits once.
func (db *DB) groupCommitLoop() {
	defer db.writerWG.Done()
	batch := make([]*writeRequest, 0, maxBatch)
	for {
		var first *writeRequest
		select {
		case first = <-db.queue:
		case <-db.closed:
			// Finish what was queued before Close.
			for {
				select {
				case req := <-db.queue:
					db.commitBatch([]*writeRequest{req})
				default:
					return
				}
			}
		}
		batch = append(batch[:0], first)
	drain:
		for len(batch) < maxBatch {
			select {
			case req := <-db.queue:
				batch = append(batch, req)
			default:
				break drain
			}
		}
		db.commitBatch(batch)
	}
}

func (db *DB) commitBatch(batch []*writeRequest) {
	ctx := context.Background()
	sqlTx, err := db.writer.BeginTx(ctx, nil) // BEGIN IMMEDIATE via _txlock
	if err != nil {
		for _, req := range batch {
			req.done <- fmt.Errorf("storage: begin write: %w", err)
		}
		return
	}
	results := make([]error, len(batch))
	txs := make([]*writeTx, len(batch))
	for i, req := range batch {
		if err := req.ctx.Err(); err != nil {
			results[i] = err
			continue
		}
		tx := &writeTx{txQuerier: txQuerier{tx: sqlTx, rewrite: db.rewrite}}
		txs[i] = tx
		if _, err := sqlTx.ExecContext(ctx, "SAVEPOINT w"); err != nil {
			results[i] = fmt.Errorf("storage: savepoint: %w", err)
			continue
		}
		if err := callWrite(req.fn, tx); err != nil {
			results[i] = err
			if _, rbErr := sqlTx.ExecContext(ctx, "ROLLBACK TO w"); rbErr != nil {
				// The transaction is in an unknown state: fail everyone.
				_ = sqlTx.Rollback()
				for j, r := range batch {
					if results[j] == nil || j == i {
						results[j] = fmt.Errorf("storage: rollback to savepoint: %w", rbErr)
					}
					r.done <- results[j]
				}
				return
			}
		}
		if _, err := sqlTx.ExecContext(ctx, "RELEASE w"); err != nil && results[i] == nil {
			results[i] = fmt.Errorf("storage: release savepoint: %w", err)
		}
	}
	if err := sqlTx.Commit(); err != nil {
		for i, req := range batch {
			if results[i] == nil {
				results[i] = fmt.Errorf("storage: commit: %w", err)
			}
			req.done <- results[i]
		}
		return
	}
	for i, req := range batch {
		if results[i] == nil {
			txs[i].runAfterCommit()
		}
		req.done <- results[i]
	}
}
