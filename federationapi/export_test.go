package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// VerifyPDU runs the checks /send makes before the roomserver sees a PDU
// (format, sizes, signatures, content hash), for benchmarks.
func (s *Server) VerifyPDU(ctx context.Context, raw json.RawMessage) error {
	_, _, err := s.checkPDU(ctx, raw, "")
	return err
}

// HoldResyncs makes every partial-state resync of s wait until release
// is closed (or s closes) before it starts.
func (s *Server) HoldResyncs(release <-chan struct{}) {
	s.beforeResync = func(ctx context.Context, _ string) {
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
}

// ResyncRunning reports whether a partial-state resync of roomID runs
// in s.
func (s *Server) ResyncRunning(roomID string) bool {
	s.resyncMu.Lock()
	defer s.resyncMu.Unlock()
	return s.resyncing[roomID]
}

// ObserveResyncs makes fn hear of every attempt of any server of this
// process to fetch a partial-state room's full state, until the test
// ends.
func ObserveResyncs(t interface{ Cleanup(func()) }, fn func(serverName, roomID string)) {
	resyncObserver.Store(&fn)
	t.Cleanup(func() { resyncObserver.Store(nil) })
}

// SetResyncGiveUp makes s give a partial-state join up after its resync
// failed on every server in rounds rounds in a row spanning after.
func (s *Server) SetResyncGiveUp(after time.Duration, rounds int) {
	s.resyncMu.Lock()
	defer s.resyncMu.Unlock()
	s.giveUpAfter, s.giveUpRounds = after, rounds
}

// ForgetKeyFetches lets s fetch any server's keys again at once (it
// otherwise waits minRefetch between two fetches of one server's keys).
func (s *Server) ForgetKeyFetches() {
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	clear(s.keys.lastFetch)
	clear(s.keys.missing)
}

// KeyFetchCallers is how many callers hold or wait for the lock of
// server's key fetches (0 once none does: the lock is forgotten).
func (s *Server) KeyFetchCallers(server string) int {
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	if m := s.keys.fetching[server]; m != nil {
		return m.users
	}
	return 0
}

// ServeFullStateJoins makes s answer every send_join with the full
// state, omit_members or not (a server without partial-state joins).
func (s *Server) ServeFullStateJoins(on bool) {
	s.fullStateJoins.Store(on)
}

// SilenceJoins makes s announce no device of a local user who joins a
// room held elsewhere (announceDevices), as a server that does not.
func (s *Server) SilenceJoins(on bool) {
	s.silentJoins.Store(on)
}

// HoldStretchRefetches makes every attempt of s to complete the state of
// an event built on a stretch of partial state wait until release is
// closed (or s closes); after, if not nil, hears of each attempt's
// outcome; servers, if not nil, replaces the servers asked.
func (s *Server) HoldStretchRefetches(release <-chan struct{}, after func(eventID string, err error), servers func(roomID string) []string) {
	s.refetchHooks.Store(&stretchRefetchHooks{
		before: func(ctx context.Context, _ string) {
			select {
			case <-release:
			case <-ctx.Done():
			}
		},
		after:   after,
		servers: servers,
	})
}

// SetPendingLimits replaces, for every server of this process until the
// test ends, the bounds of the kept pushed PDUs (per origin, per room,
// in total) and their retry backoff.
func SetPendingLimits(t interface{ Cleanup(func()) }, perOrigin, perRoom, total int, minBackoff, maxBackoff time.Duration) {
	pendingOverride.Store(&pendingLimits{perOrigin: perOrigin, perRoom: perRoom, total: total, minBackoff: minBackoff, maxBackoff: maxBackoff})
	t.Cleanup(func() { pendingOverride.Store(nil) })
}

// PendingPDUs lists the event IDs of the pushed PDUs s keeps for a retry
// of their gap, per origin.
func (s *Server) PendingPDUs(ctx context.Context) (map[string][]string, error) {
	rows, err := s.queryPending(ctx, `SELECT `+pendingColumns+` FROM federation_pending_pdus ORDER BY received_ts, event_id`)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, r := range rows {
		out[r.origin] = append(out[r.origin], r.eventID)
	}
	return out, nil
}

// StretchQueueReads counts the reads of the stretch refetch queue by s's
// worker (the due events, and when the next is due).
func (s *Server) StretchQueueReads() int64 {
	return s.stretchReads.Load()
}

// ObserveStretchRefetches makes before hear of the start of every
// attempt of s to complete the state of an event built on a stretch of
// partial state (the attempts are not held).
func (s *Server) ObserveStretchRefetches(before func(eventID string)) {
	s.refetchHooks.Store(&stretchRefetchHooks{before: func(_ context.Context, eventID string) { before(eventID) }})
}

// DestinationReads counts the reads of federation_destinations by s
// after an exchange with another server went well (sender.destinationUp).
func (s *Server) DestinationReads() int64 {
	return s.sender.reads.Load()
}

// RecordSendFailure records, as the sender does after a transaction to
// destination failed, one more failure and its backoff.
func (s *Server) RecordSendFailure(ctx context.Context, destination string) error {
	if err := s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO federation_destinations (server_name) VALUES ($1) ON CONFLICT (server_name) DO NOTHING`,
			destination)
		return err
	}); err != nil {
		return err
	}
	return s.sender.recordFailure(ctx, destination, errors.New("test: the transaction failed"), s.log)
}

// AskVersion sends destination a signed GET /_matrix/federation/v1/version
// (a request other than /send, as make_join or state_ids are).
func (s *Server) AskVersion(ctx context.Context, destination string) error {
	var out json.RawMessage
	return s.client.signed(ctx, destination, http.MethodGet, "/_matrix/federation/v1/version", nil, &out)
}

// HoldBackoffReloads makes every reload of s's view of the destinations
// with failures (split mode) wait until release is closed (or s closes).
func (s *Server) HoldBackoffReloads(release <-chan struct{}) {
	hold := func(ctx context.Context) {
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
	s.sender.beforeReload.Store(&hold)
}

// BeforePendingAnswer makes fn run in s's handling of a leave that
// answers a pending remote knock or invite, between its read of the
// pending membership and its write.
func (s *Server) BeforePendingAnswer(fn func()) {
	s.beforePendingAnswer = fn
}

// BeforeEndPending makes fn run in the transaction that ends a local
// user's pending membership of a room (EndPendingMembershipInTx), before
// the row is deleted. An error from fn aborts that transaction there,
// as a crash would.
func (s *Server) BeforeEndPending(fn func(userID, roomID string) error) {
	s.beforeEndPending = fn
}

// BeforeUnforget makes fn run in s's store of a pending remote invite or
// knock, after the user's forgotten mark on the room is cleared and
// before the pending membership is written. An error from fn aborts the
// store there, as a crash would.
func (s *Server) BeforeUnforget(fn func() error) {
	s.beforeUnforget = fn
}

// BeforeLocalLeave makes fn run in s's local leave of a pending remote
// invite or knock, between its read of the pending membership and its
// write.
func (s *Server) BeforeLocalLeave(fn func()) {
	s.beforeLocalLeave = fn
}

// CleanStalePending runs the once-only cleanup of pending rows now
// (pending_cleanup.go), as a start would.
func (s *Server) CleanStalePending(ctx context.Context) error { return s.cleanStalePending(ctx) }

// CachedServerKey is the row the key cache holds for server's key keyID:
// its valid_until_ts (current keys) and expired_ts (old keys).
func (s *Server) CachedServerKey(ctx context.Context, server, keyID string) (validUntilTS, expiredTS int64, ok bool, err error) {
	k, ok, err := s.keys.cached(ctx, server, keyID)
	return k.validUntilTS, k.expiredTS, ok, err
}

// SetKeyFetchLimit lets at most n fetches of server keys run at once, a
// fetch waiting at most wait for a place (before s serves requests).
func (s *Server) SetKeyFetchLimit(n int, wait time.Duration) {
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	s.keys.slots, s.keys.slotWait = make(chan struct{}, n), wait
}
