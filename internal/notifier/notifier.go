// Package notifier is the in-process broadcast of "stream S advanced to N".
//
// Writers call Notify after the transaction that wrote position N has
// committed. Readers never learn what changed from the notifier, only
// that something might have: they re-read the stream (the database is
// the log) from the position they last processed. So a notification may
// be spurious, duplicated or coalesced with others, and a lost one only
// delays a reader until the next one (or its own fallback poll).
//
// Broadcaster is the contract. Notifier implements it in memory for one
// process; Redis (redis.go: PUBLISH "stream pos" on Notify, a SUBSCRIBE
// loop feeding the same max-per-stream table and closing the Changed
// channel) implements it for split deployments.
//
// Concurrency: every method is safe for concurrent use. Notify never
// blocks on readers: it records the position and closes a channel.
package notifier

import (
	"context"
	"maps"
	"sync"
)

// Positions maps stream names to positions.
type Positions map[string]int64

// After reports whether any stream in p is past its position in since
// (a stream missing from since counts as position 0).
func (p Positions) After(since Positions) bool {
	for stream, pos := range p {
		if pos > since[stream] {
			return true
		}
	}
	return false
}

// Broadcaster is what producers and consumers of stream notifications
// use. Implementations: Notifier (in process); Redis pub/sub (split mode).
type Broadcaster interface {
	// Notify says stream has advanced to pos. Positions only grow: a
	// smaller pos than one already heard is ignored. It must not block.
	Notify(stream string, pos int64)
	// Positions returns the highest position heard per stream.
	Positions() Positions
	// Changed returns a channel that is closed at the first Notify that
	// advances any stream after the call. Take the channel before reading
	// what you wait for, so an advance between the read and the wait is
	// not missed.
	Changed() <-chan struct{}
}

// Notifier is the in-memory Broadcaster.
type Notifier struct {
	mu      sync.Mutex
	pos     Positions     // guarded by mu
	changed chan struct{} // guarded by mu; closed and replaced on each advance
}

var _ Broadcaster = (*Notifier)(nil)

// New returns a Notifier with every stream at position 0.
func New() *Notifier {
	return &Notifier{pos: Positions{}, changed: make(chan struct{})}
}

// Notify records that stream reached pos and wakes everyone waiting on
// Changed, unless pos is not past what was already heard.
func (n *Notifier) Notify(stream string, pos int64) {
	n.mu.Lock()
	if pos <= n.pos[stream] {
		n.mu.Unlock()
		return
	}
	n.pos[stream] = pos
	ch := n.changed
	n.changed = make(chan struct{})
	n.mu.Unlock()
	close(ch)
}

// Positions returns a copy of the highest position heard per stream.
func (n *Notifier) Positions() Positions {
	n.mu.Lock()
	defer n.mu.Unlock()
	return maps.Clone(n.pos)
}

// Position returns the highest position heard for one stream.
func (n *Notifier) Position(stream string) int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pos[stream]
}

// Changed returns a channel closed at the next advance of any stream.
func (n *Notifier) Changed() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.changed
}

// WaitPast blocks until some stream's position is past its position in
// since, or ctx ends. It returns the positions it saw, or ctx.Err().
func WaitPast(ctx context.Context, b Broadcaster, since Positions) (Positions, error) {
	for {
		ch := b.Changed()
		if now := b.Positions(); now.After(since) {
			return now, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
