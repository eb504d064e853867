package roomserver

// The joining side of a partial-state ("faster") join, MSC3706/MSC3902.
// Spec: server-server-api, "PUT /_matrix/federation/v2/send_join"
// (omit_members).
//
// A room joined with members_omitted is stored with the partial state
// send_join answered and a row in roomserver_partial_state_rooms (its
// flag). While the flag is set:
//
//   - events are checked against the state before them resolved with
//     their own auth events (the partial state may lack the sender's
//     membership), and the soft-failure check is skipped;
//   - readers that need every member (the member lists) wait in
//     AwaitFullState.
//
// The federation API fetches the full state before the join (the
// resync) and hands it to CompletePartialState, which stores it, checks
// the join and every later event again against full state (an event
// accepted on partial state may now be rejected, and one rejected may
// now be accepted), recomputes the current state and clears the flag, all
// in one transaction. The flag is in the database, so a resync
// interrupted by a restart starts again from PartialStateRooms.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// PartialStateRoom is a room whose state is still partial.
type PartialStateRoom struct {
	RoomID      string
	RoomVersion string
	// JoinEventID is the join that was answered with partial state.
	JoinEventID string
	// Servers to fetch the full state from: the join server first, then
	// the servers send_join said were in the room.
	Servers []string
}

// partialWaiters wakes AwaitFullState callers of this process when a
// room's resync completes (callers in other processes poll).
type partialWaiters struct {
	mu sync.Mutex
	ch map[string]chan struct{} // guarded by mu
}

func (w *partialWaiters) wait(roomID string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ch == nil {
		w.ch = map[string]chan struct{}{}
	}
	c, ok := w.ch[roomID]
	if !ok {
		c = make(chan struct{})
		w.ch[roomID] = c
	}
	return c
}

func (w *partialWaiters) wake(roomID string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c, ok := w.ch[roomID]; ok {
		close(c)
		delete(w.ch, roomID)
	}
}

// partialPoll is how often AwaitFullState re-reads the flag, for a resync
// finished by another process.
const partialPoll = time.Second

// IsPartialState reports whether roomID has partial state.
func (s *Server) IsPartialState(ctx context.Context, roomID string) (bool, error) {
	var n int
	err := s.db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM roomserver_partial_state_rooms WHERE room_id = $1`, roomID).Scan(&n)
	return n > 0, err
}

// PartialStateServers implements ClientReads.
func (s *Server) PartialStateServers(ctx context.Context, roomID string) ([]string, bool, error) {
	var raw string
	err := s.db.Reader().QueryRow(ctx, `SELECT servers FROM roomserver_partial_state_rooms WHERE room_id = $1`, roomID).Scan(&raw)
	if storage.IsNoRows(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	var servers []string
	if err := json.Unmarshal([]byte(raw), &servers); err != nil {
		return nil, false, fmt.Errorf("partial state room %s: bad servers: %w", roomID, err)
	}
	return servers, true, nil
}

// AddPartialStateServers appends to the servers of roomID's partial-state
// record those of servers it lacks (a later send_join's servers_in_room):
// the resync may fail over to them, and they get the room's events while
// the state is partial. A room without partial state is left alone.
func (s *Server) AddPartialStateServers(ctx context.Context, roomID string, servers []string) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		var raw string
		err := tx.QueryRow(ctx, `SELECT servers FROM roomserver_partial_state_rooms WHERE room_id = $1`, roomID).Scan(&raw)
		if storage.IsNoRows(err) {
			return nil
		}
		if err != nil {
			return err
		}
		var have []string
		if err := json.Unmarshal([]byte(raw), &have); err != nil {
			return fmt.Errorf("partial state room %s: bad servers: %w", roomID, err)
		}
		n := len(have)
		for _, d := range servers {
			if d != "" && d != string(s.serverName) && !slices.Contains(have, d) {
				have = append(have, d)
			}
		}
		if len(have) == n {
			return nil
		}
		out, err := json.Marshal(have)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE roomserver_partial_state_rooms SET servers = $1 WHERE room_id = $2`, string(out), roomID)
		return err
	})
}

// ErrPartialJoinMoved is CompletePartialState's answer to a resync of a
// join that is no longer the room's partial-state join: a local user
// joined again through a resident server after every local user had
// left, and that newer join's state is the one to complete. The caller
// reads the room's record again (PartialStateRooms) and resyncs for it.
var ErrPartialJoinMoved = errors.New("the room's partial-state join changed during the resync")

// AwaitFullState returns once roomID no longer has partial state (at
// once for other rooms), or ctx's error.
func (s *Server) AwaitFullState(ctx context.Context, roomID string) error {
	for {
		woken := s.partial.wait(roomID)
		partial, err := s.IsPartialState(ctx, roomID)
		if err != nil || !partial {
			return err
		}
		select {
		case <-woken:
		case <-time.After(partialPoll):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// PartialStateRooms lists the rooms whose resync is still to be done.
func (s *Server) PartialStateRooms(ctx context.Context) ([]PartialStateRoom, error) {
	rows, err := s.db.Reader().Query(ctx, `SELECT p.room_id, r.room_version, p.join_event_id, p.servers
		FROM roomserver_partial_state_rooms p JOIN roomserver_rooms r ON r.room_id = p.room_id ORDER BY p.created_ts`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []PartialStateRoom
	for rows.Next() {
		var r PartialStateRoom
		var servers string
		if err := rows.Scan(&r.RoomID, &r.RoomVersion, &r.JoinEventID, &servers); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(servers), &r.Servers); err != nil {
			return nil, fmt.Errorf("partial state room %s: bad servers: %w", r.RoomID, err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// markPartial sets roomID's partial-state flag in tx.
func (s *Server) markPartial(ctx context.Context, tx storage.Tx, roomID, joinEventID string, servers []string) error {
	raw, err := json.Marshal(servers)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO roomserver_partial_state_rooms (room_id, join_event_id, servers, created_ts)
		VALUES ($1, $2, $3, $4) ON CONFLICT (room_id) DO UPDATE SET join_event_id = excluded.join_event_id,
		servers = excluded.servers`, roomID, joinEventID, string(raw), s.now().UnixMilli())
	return err
}

// partialAuthState is the state an event of a partial-state room is
// checked against: the (partial) state before it, at the keys the auth
// rules need, resolved with the event's own auth events, so that what
// the partial state lacks comes from the auth events and what it holds
// (a ban, a kick) still counts.
func (s *Server) partialAuthState(ctx context.Context, q storage.Querier, tx storage.Tx, room *roomRow, before, claimed []gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, error) {
	var ids []string
	for _, list := range [][]gomatrixserverlib.PDU{before, claimed} {
		for _, e := range list {
			ids = append(ids, e.EventID())
		}
	}
	loaded, err := s.loadEventsByID(ctx, q, tx, ids)
	if err != nil {
		return nil, err
	}
	byNID := map[int64]gomatrixserverlib.PDU{}
	toMap := func(list []gomatrixserverlib.PDU) (stateMap, error) {
		m := stateMap{}
		for _, e := range list {
			le, ok := loaded[e.EventID()]
			if !ok || e.StateKey() == nil {
				return nil, fmt.Errorf("auth event %s not stored", e.EventID())
			}
			m[tuple{e.Type(), *e.StateKey()}] = le.row.NID
			byNID[le.row.NID] = e
		}
		return m, nil
	}
	a, err := toMap(before)
	if err != nil {
		return nil, err
	}
	b, err := toMap(claimed)
	if err != nil {
		return nil, err
	}
	resolved := stateMap{}
	conflict := false
	for k, v := range a {
		resolved[k] = v
	}
	for k, v := range b {
		if old, ok := resolved[k]; ok && old != v {
			conflict = true
		}
		resolved[k] = v
	}
	if conflict {
		if resolved, err = s.resolveStates(ctx, q, tx, room.Version, []stateMap{a, b}); err != nil {
			return nil, err
		}
	}
	out := make([]gomatrixserverlib.PDU, 0, len(resolved))
	for _, k := range sortedTuples(resolved) {
		if e, ok := byNID[resolved[k]]; ok {
			out = append(out, e)
		}
	}
	return out, nil
}

// CompletePartialStateRequest carries the full state before a
// partial-state join, as fetched from a resident server. The caller has
// verified every event's signatures and hashes.
type CompletePartialStateRequest struct {
	RoomID string
	// JoinEventID is the partial-state join whose prev events AtPrevs
	// describes. If the room's record names another join (see
	// ErrPartialJoinMoved), nothing is stored. Empty skips the check.
	JoinEventID string
	// Events holds every event of StateAtPrevs and their auth chains
	// that this server may not have yet.
	Events []json.RawMessage
	// AtPrevs is, for each prev event of the join, the state before it.
	AtPrevs []StateBeforePrev
}

// StateBeforePrev is the room state before one prev event of a join, as
// GET /state_ids answers for it.
type StateBeforePrev struct {
	PrevEventID string
	StateIDs    []string
	// PrevEvent is the prev event itself when this server lacks it. It
	// is stored (as an outlier) only when it is a state event: a message
	// stays unknown, so that backfill can still give it its place in the
	// timeline.
	PrevEvent json.RawMessage
}

// CompletePartialState stores the full state before roomID's
// partial-state join and clears the room's flag (see the file comment).
// A room without the flag is left alone.
func (s *Server) CompletePartialState(ctx context.Context, req CompletePartialStateRequest) error {
	room, err := loadRoom(ctx, s.db.Reader(), req.RoomID)
	if err != nil {
		return err
	}
	if !room.Partial {
		return nil
	}
	impl, err := roomVersion(room.Version)
	if err != nil {
		return err
	}
	byID := map[string]gomatrixserverlib.PDU{}
	for _, raw := range req.Events {
		pdu, err := parseUntrustedPDU(impl, raw)
		if err != nil {
			return mxerr.Wrap(err, mxerr.BadJSON, "invalid event in the room state")
		}
		if pdu.RoomID().String() != req.RoomID {
			return mxerr.New(mxerr.BadJSON, "event %s of the room state is in another room", pdu.EventID())
		}
		if err := checkFieldLimits(pdu.Type(), pdu.StateKey(), string(pdu.SenderID())); err != nil {
			return err
		}
		byID[pdu.EventID()] = pdu
	}
	for _, at := range req.AtPrevs {
		if len(at.PrevEvent) == 0 {
			continue
		}
		pdu, err := parseUntrustedPDU(impl, at.PrevEvent)
		if err != nil || pdu.EventID() != at.PrevEventID || pdu.RoomID().String() != req.RoomID {
			return mxerr.New(mxerr.BadJSON, "invalid prev event %s", at.PrevEventID)
		}
		if pdu.StateKey() != nil {
			byID[pdu.EventID()] = pdu
		}
	}
	unlock := s.lockRoom(ctx, req.RoomID)
	defer unlock()
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		room, err := loadRoom(ctx, tx, req.RoomID)
		if err != nil || !room.Partial {
			return err
		}
		var joinEventID string
		if err := tx.QueryRow(ctx, `SELECT join_event_id FROM roomserver_partial_state_rooms WHERE room_id = $1`,
			req.RoomID).Scan(&joinEventID); err != nil {
			return err
		}
		if req.JoinEventID != "" && req.JoinEventID != joinEventID {
			return ErrPartialJoinMoved
		}
		if err := refuseForeignCreate(ctx, tx, req.RoomID, byID); err != nil {
			return err
		}
		if err := s.storeStateOutliers(ctx, tx, byID); err != nil {
			return err
		}
		full, err := s.stateFromIDs(ctx, tx, room, req.AtPrevs)
		if err != nil {
			return err
		}
		if _, ok := full[tuple{"m.room.create", ""}]; !ok {
			return mxerr.New(mxerr.BadJSON, "the room state has no create event")
		}
		// The flag goes before the replay, which must read the room as
		// complete (clearPartial below deletes nothing more).
		if _, err := tx.Exec(ctx, `DELETE FROM roomserver_partial_state_rooms WHERE room_id = $1`, req.RoomID); err != nil {
			return err
		}
		room.Partial = false
		touched, err := s.replayAfterJoin(ctx, tx, room, joinEventID, full)
		if err != nil {
			return err
		}
		s.dropRewrittenAtCommit(tx, touched)
		var head int64
		if err := tx.QueryRow(ctx, streamHeadQuery).Scan(&head); err != nil {
			return err
		}
		return s.clearPartial(ctx, tx, req.RoomID, head)
	})
	if err != nil {
		return err
	}
	s.partial.wake(req.RoomID)
	return nil
}

// clearPartial clears roomID's partial-state flag in tx and records the
// stream position head the room's state became complete at (for /sync,
// PartialStateOf), waking /sync once tx commits. The caller wakes
// AwaitFullState after the commit (s.partial.wake).
func (s *Server) clearPartial(ctx context.Context, tx storage.Tx, roomID string, head int64) error {
	if _, err := tx.Exec(ctx, `DELETE FROM roomserver_partial_state_rooms WHERE room_id = $1`, roomID); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO roomserver_partial_state_done (room_id, stream_pos) VALUES ($1, $2)
		ON CONFLICT (room_id) DO UPDATE SET stream_pos = excluded.stream_pos`, roomID, head); err != nil {
		return err
	}
	s.notifyAfter(tx, head)
	return nil
}

// storeStateOutliers stores the events of byID this server lacks as
// outliers, each after checking it against its own auth events (from
// byID or already stored).
func (s *Server) storeStateOutliers(ctx context.Context, tx storage.Tx, byID map[string]gomatrixserverlib.PDU) error {
	known, err := eventRowsByID(ctx, tx, mapKeys(byID))
	if err != nil {
		return err
	}
	var authIDs []string
	for _, pdu := range byID {
		for _, a := range pdu.AuthEventIDs() {
			if _, ok := byID[a]; !ok && !slices.Contains(authIDs, a) {
				authIDs = append(authIDs, a)
			}
		}
	}
	stored, err := s.loadEventsByID(ctx, tx, tx, authIDs)
	if err != nil {
		return err
	}
	for _, id := range sortedByDepth(byID) {
		if _, ok := known[id]; ok {
			continue
		}
		pdu := byID[id]
		var auth []gomatrixserverlib.PDU
		for _, a := range pdu.AuthEventIDs() {
			if ae, ok := byID[a]; ok {
				auth = append(auth, ae)
			} else if le, ok := stored[a]; ok {
				auth = append(auth, le.pdu)
			} else {
				return mxerr.New(mxerr.BadJSON, "auth event %s of %s is missing", a, id)
			}
		}
		row := rowFromPDU(pdu)
		row.SoftFailed = true // an outlier: never a timeline event
		row.Rejected = allowed(pdu, auth) != nil
		if _, err := s.insertEvent(ctx, tx, row); err != nil {
			return err
		}
	}
	return nil
}

// stateFromIDs turns the state before each prev event of the join
// (event IDs, all stored) into the state before the join: each prev
// event applied to the state before it, resolved when there are several.
func (s *Server) stateFromIDs(ctx context.Context, tx storage.Tx, room *roomRow, states []StateBeforePrev) (stateMap, error) {
	if len(states) == 0 {
		return nil, mxerr.New(mxerr.BadJSON, "no room state")
	}
	var sets []stateMap
	for _, at := range states {
		ids := append(slices.Clone(at.StateIDs), at.PrevEventID)
		rows, err := eventRowsByID(ctx, tx, ids)
		if err != nil {
			return nil, err
		}
		set := stateMap{}
		for _, id := range at.StateIDs {
			r, ok := rows[id]
			if !ok || r.StateKey == nil {
				return nil, mxerr.New(mxerr.BadJSON, "state event %s is unknown or not a state event", id)
			}
			if r.Rejected {
				continue // a state event that fails its own auth events is no state
			}
			k := tuple{r.Type, *r.StateKey}
			if old, dup := set[k]; dup && old != r.NID {
				return nil, mxerr.New(mxerr.BadJSON, "two state events for (%s, %s)", k.Type, k.StateKey)
			}
			set[k] = r.NID
		}
		prev, ok := rows[at.PrevEventID]
		if !ok && len(at.PrevEvent) == 0 {
			return nil, mxerr.New(mxerr.BadJSON, "prev event %s is unknown", at.PrevEventID)
		}
		if ok && prev.StateKey != nil && !prev.Rejected {
			set[tuple{prev.Type, *prev.StateKey}] = prev.NID
		}
		sets = append(sets, set)
	}
	if len(sets) == 1 {
		return sets[0], nil
	}
	return s.resolveStates(ctx, tx, tx, room.Version, sets)
}

// withPartialStateServers adds to servers (seen marks those in it) the
// servers send_join said were in roomID while the room has partial
// state: its state lacks their members, yet they must get the room's
// events and this server's EDUs until the resync tells who is really in
// the room. q must be the snapshot the caller read the room's state in:
// the resync clears the flag in the transaction that completes the
// state, so one snapshot sees either the partial state and these
// servers or the full state, never the partial state alone.
func withPartialStateServers(ctx context.Context, q storage.Querier, roomID string, servers []string, seen map[string]bool) ([]string, error) {
	var raw string
	err := q.QueryRow(ctx, `SELECT servers FROM roomserver_partial_state_rooms WHERE room_id = $1`, roomID).Scan(&raw)
	if storage.IsNoRows(err) {
		return servers, nil
	}
	if err != nil {
		return nil, err
	}
	var more []string
	if err := json.Unmarshal([]byte(raw), &more); err != nil {
		return nil, fmt.Errorf("partial state room %s: bad servers: %w", roomID, err)
	}
	for _, d := range more {
		if d != "" && !seen[d] {
			seen[d] = true
			servers = append(servers, d)
		}
	}
	return servers, nil
}

// PartialStateOf tells, for the given rooms, which have partial state
// and, for those completed, the stream position the completion happened
// at (for /sync, which leaves partial-state rooms out of syncs that do
// not lazy-load members).
func (s *Server) PartialStateOf(ctx context.Context, roomIDs []string) (partial map[string]bool, done map[string]int64, err error) {
	partial, done = map[string]bool{}, map[string]int64{}
	if len(roomIDs) == 0 {
		return partial, done, nil
	}
	in, args := storage.InList("room_id IN ", roomIDs)
	err = s.read(ctx, func(q storage.Querier) error {
		ids, err := storage.QueryColumn[string](ctx, q, `SELECT room_id FROM roomserver_partial_state_rooms WHERE `+in, args...)
		if err != nil {
			return err
		}
		for _, id := range ids {
			partial[id] = true
		}
		rows, err := q.Query(ctx, `SELECT room_id, stream_pos FROM roomserver_partial_state_done WHERE `+in, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			var pos int64
			if err := rows.Scan(&id, &pos); err != nil {
				return err
			}
			done[id] = pos
		}
		return rows.Err()
	})
	return partial, done, err
}

// SenderMembershipsFromAuth returns, for each of the given events, the
// membership event of its sender among its auth events (once per
// sender). A lazy-loading /sync uses it for senders a partial-state room's
// current state has no membership for yet: the event's own auth events
// say what the sender's membership was.
func (s *Server) SenderMembershipsFromAuth(ctx context.Context, eventIDs []string) ([]*Event, error) {
	q := s.db.Reader()
	events, err := s.loadEventsByID(ctx, q, nil, eventIDs)
	if err != nil {
		return nil, err
	}
	var authIDs []string
	for _, id := range eventIDs {
		if e, ok := events[id]; ok {
			authIDs = append(authIDs, e.pdu.AuthEventIDs()...)
		}
	}
	auth, err := s.loadEventsByID(ctx, q, nil, authIDs)
	if err != nil {
		return nil, err
	}
	var out []*Event
	seen := map[string]bool{}
	for _, id := range eventIDs {
		e, ok := events[id]
		if !ok || seen[e.row.Sender] {
			continue
		}
		for _, a := range e.pdu.AuthEventIDs() {
			ae, ok := auth[a]
			if ok && !ae.row.Rejected && ae.row.Type == "m.room.member" && ae.row.StateKey != nil && *ae.row.StateKey == e.row.Sender {
				seen[e.row.Sender] = true
				out = append(out, toEvent(ae))
				break
			}
		}
	}
	return out, nil
}
