package roomserver

import (
	"context"
	"math"

	"github.com/myelin-chat/myelin/storage"
)

// Reads that span statements (s.read) see one snapshot of the database,
// taken at their first statement. What such a read loads may be older
// than what the caches were told since: an outlier promoted, or an event
// redacted, after the snapshot was taken but before the load. The caches
// refuse a loaded row when an entry was dropped since the load began
// (their generations), but for a snapshot read the load began when the
// snapshot did: a row of it cached under a later generation would stand
// for the event until the next drop of it, e.g. an outlier row read by
// a /sync or the federation sender after its promotion committed, which
// then makes every event after it unconnected ("held only as an
// outlier") while the database says otherwise.
//
// So s.read notes the caches' generations before the transaction
// begins, and the loads made through its Querier use those.
//
// The other way round, such a read must not be served what the caches
// took in after its snapshot: a row loaded after a rewrite the snapshot
// predates (the promoted row, whose NID and state snapshots the snapshot
// does not hold; the redacted row, whose redaction is not in the
// snapshot's timeline; the rows a partial-state resync rewrote, whose
// new state_before it cannot read), or a snapshot entry moved by a
// promotion to a NID the snapshot has no row for. Every such rewrite
// drops what it changed after its commit, which moves the generation
// on, so an event cache entry carries the generation it was stored at
// and is served only to reads at that generation or later (eventsSeen),
// and the snapshot key cache, which a move empties, is not read at all
// by a read begun before the move. Hits at the read's own generation
// are rows no rewrite has touched since the read began, as its snapshot
// holds them. An event inserted after the snapshot is cached at the
// same generation, but these reads do not reach it: their statements
// name events from their own snapshot, and the ones that look an event
// up by an ID from the request (StateAt) do so before their first
// statement, so that statement's snapshot holds whatever the cache did.
//
// The other caches read inside these reads need none of this: the
// room version cache (a room's version never changes; a room created
// after the snapshot is one the read's statements find nothing of,
// whatever version the cache gives), the snapshot
// history visibility cache (a committed snapshot's history visibility
// never changes: a move keeps the event, a redaction keeps
// history_visibility) and the auth decision cache (keyed by the parsed
// auth events themselves, so a rewritten event is another key).

// snapshotQuerier is the Querier of a read transaction begun by s.read.
type snapshotQuerier struct {
	storage.Querier
	// eventGen and snapKeyGen are s.events' and s.snapKeys' generations
	// read before the transaction began (immutable).
	eventGen, snapKeyGen uint64
}

// read is s.db.Read whose loads through q are cached only when no cache
// entry was dropped since the transaction began.
func (s *Server) read(ctx context.Context, fn func(q storage.Querier) error) error {
	eventGen, snapKeyGen := s.events.generation(), s.snapKeys.generation()
	return s.db.Read(ctx, func(q storage.Querier) error {
		return fn(snapshotQuerier{Querier: q, eventGen: eventGen, snapKeyGen: snapKeyGen})
	})
}

// eventGeneration is the event cache's generation a load through q
// began at: for a snapshot read, when its transaction began.
func (s *Server) eventGeneration(q storage.Querier) uint64 {
	if sq, ok := q.(snapshotQuerier); ok {
		return sq.eventGen
	}
	return s.events.generation()
}

// snapKeyGeneration is eventGeneration for the snapshot key cache.
func (s *Server) snapKeyGeneration(q storage.Querier) uint64 {
	if sq, ok := q.(snapshotQuerier); ok {
		return sq.snapKeyGen
	}
	return s.snapKeys.generation()
}

// eventsSeen is the newest event cache generation whose entries a read
// through q may be served: for a snapshot read, the generation when its
// transaction began; for any other read (each statement sees the latest
// commit), every entry.
func eventsSeen(q storage.Querier) uint64 {
	if sq, ok := q.(snapshotQuerier); ok {
		return sq.eventGen
	}
	return math.MaxUint64
}
