package clientapi

import (
	"context"
	"sort"
	"sync"

	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// streamIndexer keeps one of clientapi's indexes (full-text search, the
// user directory) in step with the room event stream, the way the
// relations indexer does: it reads the events after its stored position
// and writes their index rows and the new position in one transaction,
// so a crash repeats work but loses none. It catches up lazily, before
// every read of its index, so a read sees every event already sent.
//
// Concurrency: mu serialises catch-ups within a process; across
// processes the position row is written with the index rows, and each
// index function is idempotent.
type streamIndexer struct {
	// name is the indexer's row in room_indexer_positions. Immutable.
	name  string
	db    *storage.DB
	rooms Rooms
	// index writes the index rows of one event inside tx. Immutable.
	index func(ctx context.Context, tx storage.Tx, ev *roomserver.Event) error
	// resynced, if set, indexes the whole current state of a room whose
	// partial-state resync completed: that changes the room's state
	// without a timeline event. It is called in stream order with the
	// events (after those at or below the completion's position).
	// Immutable.
	resynced func(ctx context.Context, tx storage.Tx, roomID string) error
	// history, if set, has index also called for the events stored below
	// the stream (backfilled history: HistoryBefore), read downwards from
	// the lowest position indexed, kept in row name+historySuffix. An
	// event reaches index once: a history position is never reused, and
	// an event is never both in the stream and below it. Immutable.
	history bool
	mu      sync.Mutex
}

// historySuffix names an indexer's history position row.
const historySuffix = ".history"

// streamIndexerBatch is how many events one catch-up transaction indexes.
const streamIndexerBatch = 500

// catchUp indexes every event sent since the stored position, then (with
// history) every event stored below the stream since the last catch-up.
func (ix *streamIndexer) catchUp(ctx context.Context) error {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if err := ix.catchUpStream(ctx); err != nil {
		return err
	}
	if !ix.history {
		return nil
	}
	return ix.catchUpHistory(ctx)
}

// position reads the stored position of row name (0 when none).
func (ix *streamIndexer) position(ctx context.Context, name string) (int64, error) {
	var pos int64
	err := ix.db.Reader().QueryRow(ctx, `SELECT position FROM room_indexer_positions WHERE name = $1`, name).Scan(&pos)
	if err != nil && !storage.IsNoRows(err) {
		return 0, err
	}
	return pos, nil
}

// savePosition stores pos as row name's position, inside tx.
func savePosition(ctx context.Context, tx storage.Tx, name string, pos int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO room_indexer_positions (name, position) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET position = excluded.position`, name, pos)
	return err
}

// catchUpHistory indexes the events stored below the stream under the
// lowest position indexed so far, and the new lowest in the same
// transaction.
func (ix *streamIndexer) catchUpHistory(ctx context.Context) error {
	name := ix.name + historySuffix
	pos, err := ix.position(ctx, name)
	if err != nil {
		return err
	}
	for {
		evs, err := ix.rooms.HistoryBefore(ctx, pos, streamIndexerBatch)
		if err != nil || len(evs) == 0 {
			return err
		}
		err = ix.db.Write(ctx, func(tx storage.Tx) error {
			for _, ev := range evs {
				if err := ix.index(ctx, tx, ev); err != nil {
					return err
				}
			}
			return savePosition(ctx, tx, name, evs[len(evs)-1].StreamPos)
		})
		if err != nil {
			return err
		}
		pos = evs[len(evs)-1].StreamPos
	}
}

// catchUpStream indexes the stream's events above the stored position.
func (ix *streamIndexer) catchUpStream(ctx context.Context) error {
	pos, err := ix.position(ctx, ix.name)
	if err != nil {
		return err
	}
	for {
		evs, err := ix.rooms.EventsAfter(ctx, pos, streamIndexerBatch)
		if err != nil {
			return err
		}
		resyncs, err := ix.resyncsAfter(ctx, pos)
		if err != nil {
			return err
		}
		if len(evs) == 0 && len(resyncs) == 0 {
			return nil
		}
		last := pos
		if len(evs) > 0 {
			last = evs[len(evs)-1].StreamPos
		}
		if len(evs) < streamIndexerBatch {
			// The end of the stream: every completion is due.
			for _, r := range resyncs {
				last = max(last, r.pos)
			}
		}
		err = ix.db.Write(ctx, func(tx storage.Tx) error {
			next := 0 // resyncs[next:] are still to index
			flush := func(upTo int64) error {
				for ; next < len(resyncs) && resyncs[next].pos <= upTo; next++ {
					if err := ix.resynced(ctx, tx, resyncs[next].roomID); err != nil {
						return err
					}
				}
				return nil
			}
			for _, ev := range evs {
				if err := flush(ev.StreamPos - 1); err != nil {
					return err
				}
				if err := ix.index(ctx, tx, ev); err != nil {
					return err
				}
			}
			if err := flush(last); err != nil {
				return err
			}
			return savePosition(ctx, tx, ix.name, last)
		})
		if err != nil {
			return err
		}
		pos = last
	}
}

// roomResync is one completed partial-state resync.
type roomResync struct {
	roomID string
	pos    int64
}

// resyncsAfter lists the resyncs completed above pos, in stream order
// (none when the indexer takes no interest in them).
func (ix *streamIndexer) resyncsAfter(ctx context.Context, pos int64) ([]roomResync, error) {
	if ix.resynced == nil {
		return nil, nil
	}
	done, err := ix.rooms.ResyncedAfter(ctx, pos)
	if err != nil {
		return nil, err
	}
	out := make([]roomResync, 0, len(done))
	for roomID, p := range done {
		out = append(out, roomResync{roomID, p})
	}
	// sort.Slice: a generic sort would link its own ~9 functions for this type.
	sort.Slice(out, func(i, j int) bool { return out[i].pos < out[j].pos })
	return out, nil
}
