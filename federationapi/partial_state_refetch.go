package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/roomserver"
)

// Completing the state of events built on a stretch of partial state
// (roomserver/partial_state_refetch.go). After a rejoin, an event whose
// prev events lie in a stretch of events stored with partial state (a
// partial-state join purged or left behind) is stored with a state
// derived from that partial state, marked, and queued by the roomserver
// (in its database). This worker, in the background, never on the path
// that stores the event, takes each queued event whose next try is due,
// asks a server in the room — the event's sender's first — for the state
// at each of its prev events in a stretch (GET /state_ids and the events
// of it not held, fetched and checked exactly as for a gap: gapFetch),
// and hands it to the roomserver, which checks it against the events it
// holds and, if it fits, completes the event's state and its
// descendants'. When no server gives a state that fits, the roomserver
// keeps the mark and the event is tried again later, with backoff.
// Spec: MSC3706; server-server-api, "GET /_matrix/federation/v1/state_ids/{roomId}".

const (
	// stretchRefetchBatch is how many queued events one read takes.
	stretchRefetchBatch = 16
	// stretchRefetchTimeout bounds one event's attempt on one server.
	stretchRefetchTimeout = time.Minute
	// stretchRefetchReadRetry is the wait after a failed read of the
	// queue.
	stretchRefetchReadRetry = 10 * time.Second
	// stretchRefetchMinWait is the shortest wait between two passes
	// that did not fill a batch.
	stretchRefetchMinWait = time.Second
)

// stretchRefetchHooks change the worker in tests: before runs before
// each attempt to complete an event's state, after after it with its
// outcome, and servers replaces the servers asked.
type stretchRefetchHooks struct {
	before  func(ctx context.Context, eventID string)
	after   func(eventID string, err error)
	servers func(roomID string) []string
}

// WakeStretchRefetch wakes the stretch refetch worker: the roomserver
// queued an event (roomserver Deps.StretchRefetchQueued). In split mode
// it also has the other processes' workers woken (wakes.go). It never
// blocks.
func (s *Server) WakeStretchRefetch() {
	s.wakeStretchWorker()
	if s.wakes != nil {
		select {
		case s.stretchPublish <- struct{}{}:
		default: // an announcement is due already; it covers this one
		}
	}
}

// wakeStretchWorker wakes this process's worker. It never blocks.
func (s *Server) wakeStretchWorker() {
	select {
	case s.stretchWake <- struct{}{}:
	default:
	}
}

// startStretchRefetch runs the worker until bg ends; called once from New.
// The worker never polls: it works through the due events, then sleeps
// until the next queued event is due (its retry, with backoff) or until
// WakeStretchRefetch, so an idle server reads nothing for it. The queue
// is in the roomserver's database: at start the worker reads it once.
func (s *Server) startStretchRefetch(bg context.Context, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		timer := time.NewTimer(0)
		defer timer.Stop()
		<-timer.C
		for {
			// A wake-up that comes while the pass reads is kept in
			// stretchWake (buffered), so an event queued after the read
			// is not missed.
			worked := s.refetchDueStretches(bg)
			wait, ok := s.nextStretchWait(bg)
			if ok && wait == 0 && worked < stretchRefetchBatch {
				// Every due event was tried and one is due still (its
				// failure could not be recorded, or it was queued just
				// now): no busy loop.
				wait = stretchRefetchMinWait
			}
			var due <-chan time.Time
			if ok {
				timer.Reset(wait)
				due = timer.C
			}
			select {
			case <-bg.Done():
				return
			case <-s.stretchWake:
			case <-due:
			}
			if ok && !timer.Stop() {
				select { // drain a timer that fired alongside a wake-up
				case <-timer.C:
				default:
				}
			}
		}
	}()
}

// nextStretchWait returns how long the worker may sleep before a queued
// event is due; ok is false when none is queued (it sleeps until woken).
func (s *Server) nextStretchWait(ctx context.Context) (time.Duration, bool) {
	s.stretchReads.Add(1)
	next, err := s.rooms.NextStretchRefetch(ctx)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			s.log.Warn("reading the stretch refetch queue", "err", err)
		}
		return stretchRefetchReadRetry, true
	case next.IsZero():
		return 0, false
	}
	return max(next.Sub(s.now()), 0), true
}

// refetchDueStretches works through the queued events that are due (a
// batch of them); it returns how many it read.
func (s *Server) refetchDueStretches(ctx context.Context) int {
	s.stretchReads.Add(1)
	jobs, err := s.rooms.DueStretchRefetches(ctx, stretchRefetchBatch)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("reading the stretch refetch queue", "err", err)
		}
		return 0
	}
	for _, job := range jobs {
		if ctx.Err() != nil {
			return len(jobs)
		}
		err := s.refetchStretchState(ctx, job)
		if ctx.Err() != nil {
			return len(jobs) // shutting down: not a failure of the servers asked
		}
		if err != nil {
			s.log.Info("completing the state of an event built on partial state", "room_id", job.RoomID,
				"event_id", job.EventID, "attempts", job.Attempts+1, "err", err)
			if ferr := s.rooms.StretchRefetchFailed(ctx, job.EventID, err); ferr != nil {
				s.log.Warn("recording a failed stretch refetch", "event_id", job.EventID, "err", ferr)
			}
		}
		if h := s.refetchHooks.Load(); h != nil && h.after != nil {
			h.after(job.EventID, err)
		}
	}
	return len(jobs)
}

// refetchStretchState completes job's state from the first server that
// gives a state the roomserver accepts.
func (s *Server) refetchStretchState(ctx context.Context, job roomserver.StretchRefetch) error {
	if h := s.refetchHooks.Load(); h != nil && h.before != nil {
		h.before(ctx, job.EventID)
	}
	if len(job.WaitsFor) > 0 {
		// Completed with the events it is built on (the roomserver
		// completes an event's descendants with it), never fetched.
		return fmt.Errorf("waits for the state of %v", job.WaitsFor)
	}
	if len(job.Prevs) == 0 {
		// Its prev events' states were completed meanwhile.
		return s.rooms.CompleteStretchState(ctx, roomserver.StretchStateRequest{EventID: job.EventID})
	}
	servers, err := s.stretchStateServers(ctx, job)
	if err != nil {
		return err
	}
	if len(servers) == 0 {
		return errors.New("no server in the room to ask")
	}
	var errs []error
	for _, server := range servers {
		err := s.stretchStateFrom(ctx, server, job)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		errs = append(errs, fmt.Errorf("%s: %w", server, err))
	}
	return errors.Join(errs...)
}

// stretchStateServers are the servers to ask for job's state: the
// servers with joined members, the event's sender's first, never this
// one.
func (s *Server) stretchStateServers(ctx context.Context, job roomserver.StretchRefetch) ([]string, error) {
	var servers []string
	if h := s.refetchHooks.Load(); h != nil && h.servers != nil {
		servers = h.servers(job.RoomID)
	} else {
		joined, err := s.rooms.JoinedServers(ctx, job.RoomID)
		if err != nil {
			return nil, err
		}
		servers = joined
		if origin := domainOf(job.Sender); slices.Contains(servers, origin) {
			servers = append([]string{origin}, slices.DeleteFunc(slices.Clone(servers), func(x string) bool { return x == origin })...)
		}
	}
	return slices.DeleteFunc(servers, func(x string) bool { return x == s.serverName }), nil
}

// stretchStateFrom asks server for the state at job's prev events in a
// stretch and hands it to the roomserver.
func (s *Server) stretchStateFrom(ctx context.Context, server string, job roomserver.StretchRefetch) error {
	ctx, cancel := context.WithTimeout(ctx, stretchRefetchTimeout)
	defer cancel()
	f := &gapFetch{s: s, origin: server, roomID: job.RoomID, version: job.RoomVersion, got: map[string]json.RawMessage{}}
	req := roomserver.StretchStateRequest{EventID: job.EventID, StatesBefore: map[string][]json.RawMessage{}}
	authIDs := map[string]bool{}
	for _, prev := range job.Prevs {
		at, err := f.stateAt(ctx, prev)
		if err != nil {
			return err
		}
		req.StatesBefore[prev] = at.state
		for _, id := range at.authIDs() {
			authIDs[id] = true
		}
	}
	chain := make([]string, 0, len(authIDs))
	for id := range authIDs {
		chain = append(chain, id)
	}
	sort.Strings(chain)
	auth, err := f.events(ctx, chain)
	if err != nil {
		return err
	}
	req.AuthEvents = auth
	return s.rooms.CompleteStretchState(ctx, req)
}
