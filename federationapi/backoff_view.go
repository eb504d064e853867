package federationapi

import (
	"context"
	"sync"

	"github.com/myelin-chat/myelin/storage"
)

// backoffView is this process's view of the destinations with failures
// recorded in federation_destinations, so that a successful exchange
// with a destination (sender.destinationUp: client.answered, and every
// authenticated inbound request) reads the table only when there may be
// a backoff to end.
//
// The view may hold a destination that has no failures (then
// destinationUp reads, finds none and drops it), never the reverse for
// a failure this process wrote: beginFailure puts the destination in
// before its write starts, and markHealthy drops it only when no
// failure write began or ended (and no reload added it) since before
// the read or write that found it healthy. So any exchange after a
// failure committed here reads, as the table alone would have it.
//
// Failures another process writes (split mode: shared) reach the view
// through backoffWakeStream (wakes.go): a destination's first failure
// raises it in the same transaction, and every process then reloads the
// destinations with failures. A destination that answered here while
// that failure was already committed but not yet heard of would keep a
// backoff that should have ended: the view remembers the destinations
// that answered while it held them healthy (upSince), and a reload ends
// the backoff of those it finds failing. A failure committed before the
// answer is in the table when the next reload after the answer reads,
// and the reload that follows the failure's notification (or
// wakeFallbackEvery) is such a reload. An entry is forgotten once a
// reload that started after it has read. The price is that a failure
// committed between an answer and the next reload is ended too, as if
// the answer had come after it: one early retry of a destination that
// had just answered us, never a backoff left running.
type backoffView struct {
	shared bool // immutable: other processes write the table

	mu      sync.Mutex
	seq     uint64               // guarded by mu: raised by each failure write's start and end and each reload's addition
	failing map[string]failState // guarded by mu
	gen     uint64               // guarded by mu: reloads started
	upSince map[string]uint64    // guarded by mu: shared only: destinations that answered while held healthy, with gen then

	reload chan struct{} // capacity 1: a reload is due
}

// failState is a destination of the view that may have failures.
type failState struct {
	seq     uint64 // backoffView.seq at its last failure write's start or end, or reload
	writing int    // failure writes in flight
}

func newBackoffView(shared bool) *backoffView {
	return &backoffView{shared: shared, failing: map[string]failState{}, upSince: map[string]uint64{},
		reload: make(chan struct{}, 1)}
}

// failingDestinations reads the destinations with failures.
func failingDestinations(ctx context.Context, db *storage.DB) ([]string, error) {
	return storage.QueryColumn[string](ctx, db.Reader(), `SELECT server_name FROM federation_destinations WHERE failures > 0`)
}

// add puts names in the view (as failing in the table when read).
func (v *backoffView) add(names []string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, n := range names {
		v.seq++
		st := v.failing[n]
		st.seq = v.seq
		v.failing[n] = st
	}
}

// answered reports whether destination, which has just answered us, may
// have failures (then seq is the snapshot to give markHealthy).
func (v *backoffView) answered(destination string) (seq uint64, failing bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.failing[destination]; ok {
		return v.seq, true
	}
	if v.shared {
		v.upSince[destination] = v.gen
	}
	return 0, false
}

// snapshot returns the seq to give markHealthy after a write that ends
// destination's failures.
func (v *backoffView) snapshot() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.seq
}

// markHealthy drops destination, found with no failures by a read or a
// write that began after snapshot seq, unless a failure write began or
// ended, or a reload added it, since.
func (v *backoffView) markHealthy(destination string, seq uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if st, ok := v.failing[destination]; ok && st.writing == 0 && st.seq <= seq {
		delete(v.failing, destination)
	}
}

// beginFailure puts destination in the view before a failure is written
// for it; call the function returned when the write is over, committed
// or not.
func (v *backoffView) beginFailure(destination string) func() {
	v.mu.Lock()
	v.seq++
	st := v.failing[destination]
	st.seq, st.writing = v.seq, st.writing+1
	v.failing[destination] = st
	v.mu.Unlock()
	return func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		v.seq++
		st := v.failing[destination] // still there: markHealthy keeps it while writing
		st.seq, st.writing = v.seq, st.writing-1
		v.failing[destination] = st
	}
}

// kickReload asks for a reload (shared only). It never blocks.
func (v *backoffView) kickReload() {
	select {
	case v.reload <- struct{}{}:
	default:
	}
}

// reloadLoop reloads the view at each kickReload until ctx ends (split
// mode; startWakes runs it).
func (q *sender) reloadLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.view.reload:
		}
		if h := q.beforeReload.Load(); h != nil {
			(*h)(ctx)
		}
		if err := q.reloadView(ctx); err != nil && ctx.Err() == nil {
			q.s.log.Warn("federation sender: reading the destinations with failures", "err", err)
		}
	}
}

// reloadView adds the destinations with failures to the view and ends
// the backoff of those that answered us meanwhile (see backoffView).
func (q *sender) reloadView(ctx context.Context) error {
	v := q.view
	v.mu.Lock()
	started := v.gen
	v.gen++
	v.mu.Unlock()
	names, err := failingDestinations(ctx, q.s.db)
	if err != nil {
		return err
	}
	v.add(names)
	var up []string
	v.mu.Lock()
	for _, n := range names {
		if _, ok := v.upSince[n]; ok {
			up = append(up, n)
			delete(v.upSince, n)
		}
	}
	for d, g := range v.upSince {
		if g <= started {
			delete(v.upSince, d)
		}
	}
	v.mu.Unlock()
	for _, d := range up {
		q.destinationUp(ctx, d)
	}
	return nil
}
