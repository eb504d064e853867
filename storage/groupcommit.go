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
	// tx is set by the writer when fn ran; the caller reads it (for its
	// AfterCommit hooks) only after receiving from done.
	tx *writeTx
}

// maxBatch bounds how many write functions share one transaction, so one
// commit never holds a huge batch of callers hostage.
const maxBatch = 256

func (db *DB) enqueueWrite(ctx context.Context, fn func(Tx) error) error {
	req := &writeRequest{ctx: ctx, fn: fn, done: make(chan error, 1)}
	// Holding closeMu (shared) while sending means Close, which takes it
	// exclusively before closing db.closed, cannot slip in between our
	// check and our send: every request that reaches the queue is queued
	// before the writer starts its final drain, so none is stranded.
	db.closeMu.RLock()
	select {
	case <-db.closed:
		db.closeMu.RUnlock()
		return ErrClosed
	default:
	}
	select {
	case <-ctx.Done():
		db.closeMu.RUnlock()
		return ctx.Err()
	case db.queue <- req:
	}
	db.closeMu.RUnlock()
	// Once queued, wait for the outcome even if ctx ends: the function may
	// already be running inside a transaction that will commit, and the
	// caller must not believe a committed write failed.
	if err := <-req.done; err != nil {
		return err
	}
	// Hooks run here, on the caller's goroutine (as on PostgreSQL), not on
	// the writer: a hook that blocks or calls Write must not stall it.
	req.tx.runAfterCommit()
	return nil
}

// groupCommitLoop is the single SQLite writer. It takes every request that
// is waiting, runs them in one transaction (each in its own savepoint) and
// commits once.
func (db *DB) groupCommitLoop() {
	defer db.writerWG.Done()
	batch := make([]*writeRequest, 0, maxBatch)
	for {
		select {
		case first := <-db.queue:
			db.commitBatch(fillBatch(batch, first, db.queue))
		case <-db.closed:
			// Close stops new requests before closing db.closed (see
			// enqueueWrite), so the queue only shrinks: finish it.
			for {
				select {
				case first := <-db.queue:
					db.commitBatch(fillBatch(batch, first, db.queue))
				default:
					return
				}
			}
		}
	}
}

// fillBatch returns batch holding first and whatever else is waiting in
// queue, up to maxBatch requests.
func fillBatch(batch []*writeRequest, first *writeRequest, queue <-chan *writeRequest) []*writeRequest {
	batch = append(batch[:0], first)
	for len(batch) < maxBatch {
		select {
		case req := <-queue:
			batch = append(batch, req)
		default:
			return batch
		}
	}
	return batch
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
	for i, req := range batch {
		if err := req.ctx.Err(); err != nil {
			results[i] = err
			continue
		}
		tx := &writeTx{txQuerier: txQuerier{tx: sqlTx, rewrite: db.rewrite}}
		req.tx = tx
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
	db.commits.Add(1)
	for i, req := range batch {
		req.done <- results[i]
	}
}
