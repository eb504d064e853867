package federationapi

import (
	"context"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// Wake-ups between processes (split mode: Deps.Wakes set).
//
// Two of the federation API's in-memory states follow rows that another
// process of the deployment may write: the stretch refetch worker sleeps
// until the roomserver queues an event (partial_state_refetch.go), and
// the view of the destinations with failures (backoffView) skips the
// read of federation_destinations after a successful request. In one
// process both are told directly. Across processes each change is a
// position on its own stream of Deps.Wakes: the writer raises the
// stream's row of federation_wake_positions in a write transaction
// (after, or with, the change it announces) and notifies the position;
// every process, hearing an advance, reads the rows again.
//
// The positions come from the database, not a clock or a process's
// memory, because the notifier drops a position not above one already
// heard: the row is locked from its raise to the commit, so positions
// are taken in commit order. A process that hears N and then reads sees
// every change announced at N or below, so a dropped (lower, or
// coalesced) notification loses nothing. A notification lost with Redis
// down is caught up by wakeFallbackEvery: it delays, never loses.
//
// Deps.Wakes must not be the broadcaster /sync waits on: the sync waker
// wakes every waiting client at an advance of a stream it does not know.
const (
	// stretchWakeStream advances when the roomserver of some process
	// queued an event for the stretch refetch worker.
	stretchWakeStream = "federation_stretch_refetch"
	// backoffWakeStream advances when a destination with no failures
	// recorded gets its first.
	backoffWakeStream = "federation_backoff"
	// resyncWakeStream advances when a process that does not run the
	// partial-state resyncs (it does not hold the federation lease)
	// joined a room with partial state.
	resyncWakeStream = "federation_partial_state"
	// wakeFallbackEvery is how often, in split mode, the worker and the
	// view of failing destinations read again without a notification.
	wakeFallbackEvery = time.Minute
)

// raiseWakePosition raises stream's position in tx and returns it.
func raiseWakePosition(ctx context.Context, tx storage.Tx, stream string) (int64, error) {
	var pos int64
	err := tx.QueryRow(ctx, `INSERT INTO federation_wake_positions (stream, pos) VALUES ($1, 1)
		ON CONFLICT (stream) DO UPDATE SET pos = federation_wake_positions.pos + 1 RETURNING pos`, stream).Scan(&pos)
	return pos, err
}

// startWakes runs, in split mode, the publisher of the stretch refetch
// wake-ups queued in this process (WakeStretchRefetch) and the listener
// that hands the other processes' wake-ups to the worker and to the
// backoff view, until bg ends.
func (s *Server) startWakes(bg context.Context) {
	if s.wakes == nil {
		return
	}
	s.wg.Add(4)
	go func() {
		defer s.wg.Done()
		s.sender.reloadLoop(bg)
	}()
	go func() {
		defer s.wg.Done()
		s.publishWakes(bg, s.stretchPublish, stretchWakeStream, "a queued stretch refetch")
	}()
	go func() {
		defer s.wg.Done()
		s.publishWakes(bg, s.resyncPublish, resyncWakeStream, "a room joined with partial state")
	}()
	go func() {
		defer s.wg.Done()
		ticker := time.NewTicker(wakeFallbackEvery)
		defer ticker.Stop()
		seen := s.wakes.Positions()
		for {
			changed := s.wakes.Changed()
			now := s.wakes.Positions()
			if now[stretchWakeStream] > seen[stretchWakeStream] {
				s.wakeStretchWorker()
			}
			if now[backoffWakeStream] > seen[backoffWakeStream] {
				s.sender.view.kickReload()
			}
			if now[resyncWakeStream] > seen[resyncWakeStream] {
				s.resumeResyncs(bg)
			}
			seen = now
			select {
			case <-bg.Done():
				return
			case <-changed:
			case <-ticker.C:
				s.wakeStretchWorker()
				s.sender.view.kickReload()
				s.resumeResyncs(bg)
			}
		}
	}()
}

// publishWakes announces stream to the other processes at each kick,
// until bg ends; what names it in the log.
func (s *Server) publishWakes(bg context.Context, kicks <-chan struct{}, stream, what string) {
	for {
		select {
		case <-bg.Done():
			return
		case <-kicks:
		}
		// One raise covers every change committed before it: kicks
		// that came meanwhile are one more raise.
		var pos int64
		err := s.db.Write(bg, func(tx storage.Tx) error {
			var err error
			pos, err = raiseWakePosition(bg, tx, stream)
			return err
		})
		if err != nil {
			if bg.Err() == nil {
				s.log.Warn("announcing "+what+" to other processes", "err", err)
			}
			continue
		}
		s.wakes.Notify(stream, pos)
	}
}
