package roomserver

import (
	"context"

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
