package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// A pushed PDU whose prev events we lack is never lost because its origin
// could not fill the gap when it arrived (issue 7). fetchMissing asks the
// origin for the missing events (POST /get_missing_events) and, if the
// origin does not answer at all (no connection, timeout, 5xx, 401 while it
// cannot fetch our key yet, any error), asks a few of the room's other
// servers the same question. If none answers, the PDU is kept in
// federation_pending_pdus (migration 006) and the gap is retried in the
// background with backoff, and at once when a later event of the room is
// accepted (its get_missing_events may have brought the prev events in).
// A restart resumes the retries: the table is the log. The sender still
// gets an error for the PDU in its /send answer (it is not processed
// yet), and keeps its 200 for the transaction.
//
// A get_missing_events answer that does not reach the prev events is
// another matter: the origin, which sent the event, declines to divulge
// what precedes it, and the PDU is refused (inputConnecting, arrival).
// Only when the answer came from another server, which may simply not
// hold the origin's newest events yet, is the PDU kept.
//
// Spec: server-server-api, "Backfilling and retrieving missing events"
// (a server may use get_missing_events to acquire the events it is
// missing; nothing ties the request to the event's origin), and
// "PUT /_matrix/federation/v1/send/{txnId}" (a per-PDU error result).

const (
	// gmeOriginTimeout and gmeFallbackTimeout bound one get_missing_events
	// request to the origin and to each other server.
	gmeOriginTimeout   = 30 * time.Second
	gmeFallbackTimeout = 10 * time.Second
	// maxGMEFallbacks is how many of the room's other servers are asked
	// when the origin does not answer.
	maxGMEFallbacks = 3

	// maxPendingAttempts and maxPendingAge bound the retries of one kept
	// PDU; after either it is dropped (logged).
	maxPendingAttempts = 30
	maxPendingAge      = 24 * time.Hour
	// pendingBatch is how many due rows one pass of the retry loop reads.
	pendingBatch = 20
	// pendingPoll is the longest the retry loop sleeps (another process
	// sharing the database may have kept a PDU meanwhile).
	pendingPoll = time.Minute
	// pendingRetryTimeout bounds one retry of one PDU.
	pendingRetryTimeout = 2 * time.Minute
)

// pendingLimits are the bounds of federation_pending_pdus and the retry
// backoff. Rows are at most 64 KiB each (checkPDU), so the defaults keep
// the table under 64 MiB; per origin less than per room, so one server
// cannot crowd a room's other servers out.
type pendingLimits struct {
	perOrigin, perRoom, total int
	minBackoff, maxBackoff    time.Duration
}

var defaultPendingLimits = pendingLimits{
	perOrigin: 50, perRoom: 100, total: 1000,
	minBackoff: 30 * time.Second, maxBackoff: time.Hour,
}

// pendingOverride, when set (tests), replaces defaultPendingLimits for
// every server of the process.
var pendingOverride atomic.Pointer[pendingLimits]

func currentPendingLimits() pendingLimits {
	if l := pendingOverride.Load(); l != nil {
		return *l
	}
	return defaultPendingLimits
}

// gapUnanswered: no server answered get_missing_events for a pushed PDU,
// or only a server other than its origin, without reaching its prev
// events. The PDU is kept for a retry (keepPending).
type gapUnanswered struct {
	asked []string
	err   error
}

func (g *gapUnanswered) Error() string {
	return fmt.Sprintf("get_missing_events unanswered (asked %v): %v", g.asked, g.err)
}

func (g *gapUnanswered) Unwrap() error { return g.err }

// askMissingEvents sends the get_missing_events request body for roomID
// to origin and, if origin does not answer, to up to maxGMEFallbacks of
// the room's other joined servers (current state; ours and origin
// excluded; none in backoff: gmeFallbacks), each with a short timeout.
// It returns the events of the first answer and who gave it, or a
// *gapUnanswered.
func (s *Server) askMissingEvents(ctx context.Context, origin, roomID string, body any) ([]json.RawMessage, string, error) {
	uri := "/_matrix/federation/v1/get_missing_events/" + pathEscape(roomID)
	ask := func(server string, timeout time.Duration) ([]json.RawMessage, error) {
		rctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		var resp struct {
			Events []json.RawMessage `json:"events"`
		}
		err := s.client.signed(rctx, server, http.MethodPost, uri, body, &resp)
		return resp.Events, err
	}
	events, err := ask(origin, gmeOriginTimeout)
	if err == nil {
		return events, origin, nil
	}
	if ctx.Err() != nil {
		return nil, "", ctx.Err()
	}
	firstErr := err
	asked := []string{origin}
	servers, err := s.rooms.JoinedServers(ctx, roomID)
	if err != nil {
		return nil, "", err
	}
	servers = slices.DeleteFunc(servers, func(x string) bool { return x == origin || x == s.serverName })
	fallbacks, err := s.gmeFallbacks(ctx, servers)
	if err != nil {
		return nil, "", err
	}
	for _, server := range fallbacks {
		asked = append(asked, server)
		events, err := ask(server, gmeFallbackTimeout)
		if err == nil {
			s.log.Debug("get_missing_events answered by another server", "origin", origin, "server", server, "room_id", roomID)
			return events, server, nil
		}
		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}
		s.log.Debug("get_missing_events fallback failed", "server", server, "room_id", roomID, "err", err)
	}
	return nil, "", &gapUnanswered{asked: asked, err: firstErr}
}

// gmeFallbacks picks, from servers (in JoinedServers order), up to
// maxGMEFallbacks to ask when the origin did not answer: never one the
// sender is backing off from (federation_destinations.retry_at_ts still
// ahead: it failed lately and would most likely cost a timeout for
// nothing), those whose last exchange with us succeeded (no failures)
// first, then those whose backoff has run out, fewest failures first.
func (s *Server) gmeFallbacks(ctx context.Context, servers []string) ([]string, error) {
	type destination struct {
		failures int
		retryAt  int64
	}
	// One read for all of them (a query per server cost a round trip
	// each); a server without a row has never failed.
	known := make(map[string]destination, len(servers))
	for chunk := range slices.Chunk(servers, storage.MaxInList) {
		in, args := storage.InList("server_name IN ", chunk)
		rows, err := s.db.Reader().Query(ctx, `SELECT server_name, failures, retry_at_ts FROM federation_destinations
			WHERE `+in, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var name string
			var d destination
			if err := rows.Scan(&name, &d.failures, &d.retryAt); err != nil {
				rows.Close()
				return nil, err
			}
			known[name] = d
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	type candidate struct {
		server   string
		failures int
	}
	var healthy []string
	var recovering []candidate
	now := s.now().UnixMilli()
	for _, server := range servers {
		if len(healthy) == maxGMEFallbacks {
			break // enough servers that answered lately
		}
		d := known[server]
		switch {
		case d.failures == 0:
			healthy = append(healthy, server)
		case d.retryAt > now:
			// In backoff: skipped.
		default:
			recovering = append(recovering, candidate{server, d.failures})
		}
	}
	// sort.SliceStable: a generic sort would link its own functions for this type.
	sort.SliceStable(recovering, func(i, j int) bool { return recovering[i].failures < recovering[j].failures })
	out := healthy
	for _, c := range recovering {
		if len(out) == maxGMEFallbacks {
			break
		}
		out = append(out, c.server)
	}
	return out, nil
}

// keepPending keeps p, pushed by origin, for a retry of its gap (cause
// says why it could not be input now), unless a bound is reached. The
// error returned is the PDU's /send result either way.
func (s *Server) keepPending(ctx context.Context, origin string, p *parsedPDU, cause error) error {
	limits := currentPendingLimits()
	now := s.now()
	full := ""
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		full = ""
		// Serialise with every other keepPending (migration 007), so the
		// counts below see the rows they keep: the bounds are exact on
		// PostgreSQL too, whatever the origins pushing at once.
		if _, err := tx.Exec(ctx, `UPDATE federation_pending_guard SET checks = checks + 1 WHERE id = 1`); err != nil {
			return err
		}
		for _, bound := range []struct {
			what  string
			query string
			args  []any
			limit int
		}{
			{"origin", `SELECT COUNT(*) FROM federation_pending_pdus WHERE origin = $1`, []any{origin}, limits.perOrigin},
			{"room", `SELECT COUNT(*) FROM federation_pending_pdus WHERE room_id = $1`, []any{p.pdu.RoomID().String()}, limits.perRoom},
			{"server", `SELECT COUNT(*) FROM federation_pending_pdus`, nil, limits.total},
		} {
			var n int
			if err := tx.QueryRow(ctx, bound.query, bound.args...).Scan(&n); err != nil {
				return err
			}
			if n >= bound.limit {
				full = fmt.Sprintf("%d PDUs of this %s already wait", n, bound.what)
				return nil
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO federation_pending_pdus
			(event_id, room_id, origin, room_version, pdu, received_ts, attempts, next_try_ts)
			VALUES ($1, $2, $3, $4, $5, $6, 0, $7) ON CONFLICT (event_id) DO NOTHING`,
			p.pdu.EventID(), p.pdu.RoomID().String(), origin, p.version, string(p.json),
			now.UnixMilli(), now.Add(limits.minBackoff).UnixMilli())
		return err
	})
	switch {
	case err != nil:
		return fmt.Errorf("%v; keeping it for a retry failed: %v", cause, err)
	case full != "":
		s.log.Warn("pushed PDU with a gap not kept for a retry", "origin", origin, "event_id", p.pdu.EventID(), "reason", full)
		return fmt.Errorf("%v; not kept for a retry: %s", cause, full)
	}
	s.log.Info("pushed PDU with a gap kept for a retry", "origin", origin, "event_id", p.pdu.EventID(), "cause", cause)
	s.wakePending("")
	return fmt.Errorf("%v; kept, its prev events will be fetched again", cause)
}

// recheckPending makes the retry loop look at once at the PDUs of roomID
// that wait, if any: an event of the room was just accepted, and what it
// brought may connect them.
func (s *Server) recheckPending(ctx context.Context, roomID string) {
	var one int
	err := s.db.Reader().QueryRow(ctx, `SELECT 1 FROM federation_pending_pdus WHERE room_id = $1 LIMIT 1`, roomID).Scan(&one)
	if err == nil {
		s.wakePending(roomID)
	}
}

// wakePending wakes the retry loop; roomID, if not empty, is a room whose
// waiting PDUs it checks before their time.
func (s *Server) wakePending(roomID string) {
	if roomID != "" {
		s.pendingMu.Lock()
		if s.pendingRooms == nil {
			s.pendingRooms = map[string]bool{}
		}
		s.pendingRooms[roomID] = true
		s.pendingMu.Unlock()
	}
	select {
	case s.pendingWake <- struct{}{}:
	default:
	}
}

// startPendingRetries runs the retry loop until bg is cancelled.
func (s *Server) startPendingRetries(bg context.Context, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			next := s.retryPending(bg)
			wait := pendingPoll
			if !next.IsZero() {
				wait = min(wait, max(next.Sub(s.now()), 0))
			}
			timer := time.NewTimer(wait)
			select {
			case <-bg.Done():
				timer.Stop()
				return
			case <-s.pendingWake:
			case <-timer.C:
			}
			timer.Stop()
		}
	}()
}

// pendingPDU is a row of federation_pending_pdus.
type pendingPDU struct {
	eventID, roomID, origin, version string
	pdu                              json.RawMessage
	receivedTS                       int64
	attempts                         int
}

const pendingColumns = `event_id, room_id, origin, room_version, pdu, received_ts, attempts`

func scanPending(rows interface{ Scan(...any) error }) (pendingPDU, error) {
	var r pendingPDU
	var pdu string
	err := rows.Scan(&r.eventID, &r.roomID, &r.origin, &r.version, &pdu, &r.receivedTS, &r.attempts)
	r.pdu = json.RawMessage(pdu)
	return r, err
}

func (s *Server) queryPending(ctx context.Context, query string, args ...any) ([]pendingPDU, error) {
	rows, err := s.db.Reader().Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []pendingPDU
	for rows.Next() {
		r, err := scanPending(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// retryPending makes one pass: the waiting PDUs of rooms to recheck whose
// prev events are now all connected, then those whose time has come. It
// returns when the next one is due (zero if none waits).
func (s *Server) retryPending(ctx context.Context) time.Time {
	s.pendingMu.Lock()
	rooms := s.pendingRooms
	s.pendingRooms = nil
	s.pendingMu.Unlock()
	for roomID := range rooms {
		rows, err := s.queryPending(ctx, `SELECT `+pendingColumns+` FROM federation_pending_pdus WHERE room_id = $1`, roomID)
		if err != nil {
			s.log.Warn("reading kept PDUs", "room_id", roomID, "err", err)
			continue
		}
		for _, r := range rows {
			if s.pendingConnected(ctx, r) {
				s.retryOnePending(ctx, r)
			}
		}
	}
	rows, err := s.queryPending(ctx, `SELECT `+pendingColumns+` FROM federation_pending_pdus
		WHERE next_try_ts <= $1 ORDER BY next_try_ts LIMIT $2`, s.now().UnixMilli(), pendingBatch)
	if err != nil {
		s.log.Warn("reading kept PDUs", "err", err)
		return s.now().Add(pendingPoll)
	}
	for _, r := range rows {
		if ctx.Err() != nil {
			return time.Time{}
		}
		s.retryOnePending(ctx, r)
	}
	var next *int64
	if err := s.db.Reader().QueryRow(ctx, `SELECT MIN(next_try_ts) FROM federation_pending_pdus`).Scan(&next); err != nil || next == nil {
		return time.Time{}
	}
	return time.UnixMilli(*next)
}

// pendingConnected reports whether r's event is held already or all its
// prev events are connected, so that a retry needs no request.
func (s *Server) pendingConnected(ctx context.Context, r pendingPDU) bool {
	var head struct {
		PrevEvents []any `json:"prev_events"`
	}
	if json.Unmarshal(r.pdu, &head) != nil {
		return false
	}
	if unknown, err := s.rooms.UnknownEvents(ctx, []string{r.eventID}); err == nil && len(unknown) == 0 {
		return true
	}
	var prevs []string
	for _, p := range head.PrevEvents {
		switch v := p.(type) {
		case string: // room versions 3 and later
			prevs = append(prevs, v)
		case []any: // versions 1 and 2: [event_id, hashes]
			if len(v) > 0 {
				if id, ok := v[0].(string); ok {
					prevs = append(prevs, id)
				}
			}
		}
	}
	missing, err := s.rooms.UnconnectedEvents(ctx, prevs)
	return err == nil && len(missing) == 0
}

// retryOnePending tries to input r as if its origin had just pushed it:
// the checks again, then get_missing_events (origin first) and the rest.
// Input (accepted or rejected) or a gap that cannot be filled removes the
// row; any other failure counts an attempt and pushes the next one back,
// up to maxPendingAttempts and maxPendingAge.
func (s *Server) retryOnePending(bg context.Context, r pendingPDU) {
	ctx, cancel := context.WithTimeout(bg, pendingRetryTimeout)
	defer cancel()
	p, _, err := s.checkPDUVersion(ctx, r.pdu, r.version)
	if err == nil {
		if aerr := s.checkACL(ctx, r.roomID, r.origin); aerr != nil {
			s.dropPending(ctx, r, "the room's server ACL now denies its origin")
			return
		}
	}
	if err == nil {
		out, ierr := s.inputPushed(ctx, r.origin, p)
		var gone *unobtainableGap
		switch {
		case ierr == nil:
			s.log.Info("kept PDU input", "event_id", r.eventID, "origin", r.origin, "outcome", out.Outcome, "attempts", r.attempts)
			s.dropPending(ctx, r, "")
			s.recheckPending(ctx, r.roomID)
			return
		case errors.As(ierr, &gone):
			s.dropPending(ctx, r, "rejected: "+ierr.Error())
			return
		}
		err = ierr
	}
	if bg.Err() != nil {
		return // shutting down: not an attempt
	}
	limits := currentPendingLimits()
	attempts := r.attempts + 1
	now := s.now()
	if attempts >= maxPendingAttempts || now.Sub(time.UnixMilli(r.receivedTS)) > maxPendingAge {
		s.dropPending(ctx, r, fmt.Sprintf("given up after %d attempts: %v", attempts, err))
		return
	}
	wait := limits.minBackoff
	for i := 1; i < attempts && wait < limits.maxBackoff; i++ {
		wait *= 2
	}
	wait = min(wait, limits.maxBackoff)
	s.log.Debug("kept PDU still not input", "event_id", r.eventID, "origin", r.origin, "attempts", attempts, "retry_in", wait, "err", err)
	werr := s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE federation_pending_pdus SET attempts = $1, next_try_ts = $2 WHERE event_id = $3`,
			attempts, now.Add(wait).UnixMilli(), r.eventID)
		return err
	})
	if werr != nil {
		s.log.Warn("recording a retry of a kept PDU", "event_id", r.eventID, "err", werr)
	}
}

// dropPending removes r; why, if not empty, is logged as a warning (the
// PDU is given up).
func (s *Server) dropPending(ctx context.Context, r pendingPDU, why string) {
	if why != "" {
		s.log.Warn("kept PDU given up", "event_id", r.eventID, "origin", r.origin, "room_id", r.roomID, "reason", why)
	}
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM federation_pending_pdus WHERE event_id = $1`, r.eventID)
		return err
	})
	if err != nil {
		s.log.Warn("removing a kept PDU", "event_id", r.eventID, "err", err)
	}
}
