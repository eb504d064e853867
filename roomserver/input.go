package roomserver

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// prepared is an event whose fate has been decided against the stored
// DAG but not yet written.
type prepared struct {
	pdu  gomatrixserverlib.PDU
	row  *eventRow
	room *roomRow
	// before is the state before the event: beforeNID when stored,
	// otherwise beforeState (a resolved state to be written).
	beforeNID   int64
	beforeState stateMap
	outcome     InputOutcome
	reason      string
	// builtOn, when set, is the room row the event was built on without
	// reading it (a pipelined send, see pipeline.go): commit saves the
	// room only if its stored row is still builtOn (saveRoomIf) and then
	// sets builtOnChecked.
	builtOn        *roomRow
	builtOnChecked bool
	// outlierNID is, when the event is held only as an outlier and now
	// arrives as a timeline event, the NID of that outlier row, which
	// commit replaces (outlier_promotion.go); 0 for a new event.
	outlierNID int64
	// stateGiven: beforeState is a whole state given by another server
	// (a send_join answer), not derived from the prev events, so the
	// prev events' partial state does not reach it (commit,
	// markAfterPartialStretch).
	stateGiven bool
}

// prepare runs the checks of server-server-api, "Checks performed on
// receipt of a PDU", from step 4 on (the caller has checked format,
// signatures and hashes): auth against the event's auth_events, against
// the state before the event (rejection), and against the current state
// (soft failure). It only reads. q sees tx's writes when tx is non-nil.
func (s *Server) prepare(ctx context.Context, q storage.Querier, tx storage.Tx, room *roomRow, pdu gomatrixserverlib.PDU) (*prepared, error) {
	row, err := guard("reading event", func() (*eventRow, error) { return rowFromPDU(pdu), nil })
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.BadJSON, "invalid event")
	}
	if row.RoomID != room.RoomID {
		return nil, mxerr.New(mxerr.BadJSON, "event %s is not in room %s", row.EventID, room.RoomID)
	}
	if err := CheckPDUFieldLimits(pdu); err != nil {
		return nil, err
	}
	// Security case 5: depth must be a safe integer.
	if row.Depth < 0 || row.Depth > maxSafeInt {
		return nil, mxerr.New(mxerr.BadJSON, "depth %d out of range", row.Depth)
	}
	p := &prepared{pdu: pdu, row: row, room: room, outcome: Accepted}
	reject := func(format string, args ...any) (*prepared, error) {
		p.outcome, p.reason = Rejected, fmt.Sprintf(format, args...)
		return p, nil
	}

	if isCreate(pdu) {
		if room.CurrentSnapshot != 0 || len(room.Extremities) > 0 {
			return reject("room already has a create event")
		}
		if err := allowed(pdu, nil); err != nil {
			return reject("create event not allowed: %v", err)
		}
		p.beforeState = stateMap{}
		return p, nil
	}

	// Auth against the event's own auth_events. Security cases 11, 20.
	// An event rejected here still gets the state before it (when its
	// prev events are known): a rejected event leaves the state as it
	// was, and events built on it take that state.
	rejectByAuth := func(format string, args ...any) (*prepared, error) {
		if nid, state, reason, err := s.stateFromPrevs(ctx, q, tx, room, pdu); err == nil && reason == "" {
			p.beforeNID, p.beforeState = nid, state
		} else if err != nil && !mxerr.Is(err, mxerr.NotFound) {
			return nil, err
		}
		return reject(format, args...)
	}
	if listsImpliedCreate(pdu) {
		return rejectByAuth("%s", impliedCreateReason)
	}
	authIDs := pdu.AuthEventIDs()
	authEvents, err := s.loadEventsByID(ctx, q, tx, authIDs)
	if err != nil {
		return nil, err
	}
	var authList []gomatrixserverlib.PDU
	seen := map[tuple]bool{}
	for _, id := range authIDs {
		ae, ok := authEvents[id]
		if !ok {
			return nil, mxerr.New(mxerr.NotFound, "auth event %s of %s is unknown", id, row.EventID)
		}
		if ae.row.RoomID != room.RoomID {
			return rejectByAuth("auth event %s is in another room", id)
		}
		if ae.row.Rejected {
			return rejectByAuth("auth event %s was rejected", id)
		}
		if ae.row.StateKey == nil {
			return rejectByAuth("auth event %s is not a state event", id)
		}
		k := tuple{ae.row.Type, *ae.row.StateKey}
		if seen[k] {
			return rejectByAuth("two auth events for (%s, %s)", k.Type, k.StateKey)
		}
		seen[k] = true
		authList = append(authList, ae.pdu)
	}
	if err := allowed(pdu, authList); err != nil {
		return rejectByAuth("not allowed by its auth events: %v", err)
	}

	// The state before the event, from its prev_events.
	nid, state, reason, err := s.stateFromPrevs(ctx, q, tx, room, pdu)
	if err != nil {
		return nil, err
	}
	if reason != "" {
		return reject("%s", reason)
	}
	p.beforeNID, p.beforeState = nid, state

	// Auth against the state before the event.
	needed := neededTuples(pdu)
	// With the policy server configuration: when the state before is the
	// current state, the policy check of a federation event (inputEvent)
	// then finds it remembered (policy.go).
	beforeAuth, err := s.stateEventsFor(ctx, q, tx, room, p.beforeNID, p.beforeState, append(needed, policyTuple))
	if err != nil {
		return nil, err
	}
	beforeAuth = slices.DeleteFunc(beforeAuth, isPolicyConfig)
	if room.Partial {
		// Partial state may lack what the auth rules look at: resolve it
		// with the event's own auth events (see partial_state.go).
		if beforeAuth, err = s.partialAuthState(ctx, q, tx, room, beforeAuth, authList); err != nil {
			return nil, err
		}
	}
	// A local event's auth_events are chosen from the state it is built
	// on, so the two sets are usually the same events: the same check
	// again cannot decide differently.
	if !sameEvents(beforeAuth, authList) {
		if err := allowed(pdu, beforeAuth); err != nil {
			return reject("not allowed by the state before it: %v", err)
		}
	}

	// Soft failure: auth against the current state.
	// Spec: server-server-api, "Soft failure".
	// A room with partial state skips it: its current state lacks the
	// members the check would need; the resync re-checks instead.
	if !room.Partial && (p.beforeState != nil || p.beforeNID != room.CurrentSnapshot) {
		current, err := s.stateEventsFor(ctx, q, tx, room, room.CurrentSnapshot, nil, needed)
		if err != nil {
			return nil, err
		}
		if err := allowed(pdu, current); err != nil {
			p.outcome, p.reason = SoftFailed, fmt.Sprintf("not allowed by the current state: %v", err)
		}
	}
	return p, nil
}

// stateFromPrevs is the state before pdu from its prev_events: a stored
// snapshot (nid) or, when they disagree, a resolved state. reason says
// why pdu is to be rejected instead; an unknown prev event is
// M_NOT_FOUND.
func (s *Server) stateFromPrevs(ctx context.Context, q storage.Querier, tx storage.Tx, room *roomRow, pdu gomatrixserverlib.PDU) (nid int64, state stateMap, reason string, err error) {
	prevIDs := pdu.PrevEventIDs()
	if len(prevIDs) == 0 {
		return 0, nil, "no prev_events", nil
	}
	if sameSet(prevIDs, room.Extremities) {
		return room.CurrentSnapshot, nil, "", nil
	}
	prevs, err := s.loadEventsByID(ctx, q, tx, prevIDs)
	if err != nil {
		return 0, nil, "", err
	}
	var snaps []int64
	for _, id := range prevIDs {
		pe, ok := prevs[id]
		if !ok {
			return 0, nil, "", mxerr.New(mxerr.NotFound, "prev event %s of %s is unknown", id, pdu.EventID())
		}
		if pe.row.RoomID != room.RoomID {
			return 0, nil, fmt.Sprintf("prev event %s is in another room", id), nil
		}
		if isOutlierRow(pe.row) {
			// Its state is unknown: as unconnected as an unknown prev
			// event (outlier_promotion.go, UnconnectedEvents).
			return 0, nil, "", mxerr.New(mxerr.NotFound, "prev event %s of %s is held only as an outlier", id, pdu.EventID())
		}
		if !slices.Contains(snaps, pe.row.StateAfter) {
			snaps = append(snaps, pe.row.StateAfter)
		}
	}
	if len(snaps) == 1 {
		return snaps[0], nil, "", nil
	}
	sets := make([]stateMap, len(snaps))
	for i, nid := range snaps {
		if sets[i], err = loadSnapshot(ctx, q, nid); err != nil {
			return 0, nil, "", err
		}
	}
	if state, err = s.resolveStates(ctx, q, tx, room.Version, sets); err != nil {
		return 0, nil, "", err
	}
	return 0, state, "", nil
}

// neededTuples lists the state keys auth rules look at for pdu, always
// including the create event.
func neededTuples(pdu gomatrixserverlib.PDU) []tuple {
	needed := gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{pdu})
	out := []tuple{{"m.room.create", ""}}
	for _, t := range needed.Tuples() {
		k := tuple{t.EventType, t.StateKey}
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

// stateEventsFor returns the events of state (snapshot nid, or the given
// map) at the given keys. The room's current snapshot is read from the
// indexed current-state table.
func (s *Server) stateEventsFor(ctx context.Context, q storage.Querier, tx storage.Tx, room *roomRow, nid int64, state stateMap, keys []tuple) ([]gomatrixserverlib.PDU, error) {
	var picked stateMap
	var err error
	switch {
	case state == nil && tx == nil && nid != 0:
		// Snapshots are immutable, so what a committed snapshot holds at a
		// key can be remembered by snapshot NID and never goes stale. What
		// is remembered is read from the snapshot itself, never from the
		// current-state table: outside the room's lock a write may move the
		// current state past nid (room was read earlier), and its entries
		// would then be remembered under nid.
		picked, err = s.snapshotKeys(ctx, q, nid, keys)
	case state != nil:
		picked = stateMap{}
		for _, k := range keys {
			if v, ok := state[k]; ok {
				picked[k] = v
			}
		}
	case nid == room.CurrentSnapshot:
		picked, err = currentStateNIDs(ctx, q, room.RoomID, keys)
	default:
		picked, err = loadSnapshotKeys(ctx, q, nid, keys)
	}
	if err != nil {
		return nil, err
	}
	nids := make([]int64, 0, len(picked))
	for _, k := range sortedTuples(picked) {
		nids = append(nids, picked[k])
	}
	loaded, err := s.loadEvents(ctx, q, tx, room.Version, nids)
	if err != nil {
		return nil, err
	}
	out := make([]gomatrixserverlib.PDU, len(loaded))
	for i, e := range loaded {
		out[i] = e.pdu
	}
	return out, nil
}

// allowed runs the room version's auth rules, turning panics into errors.
// Every auth decision of the roomserver (auth events, state before,
// current state, state resolution) goes through here. Rules that
// gomatrixserverlib gets wrong are checked here as well: see
// auth_thirdparty.go.
// Spec: rooms/vN, "Authorization rules".
func allowed(pdu gomatrixserverlib.PDU, authEvents []gomatrixserverlib.PDU) error {
	_, err := guard("auth check", func() (struct{}, error) {
		// Inside the guard: reading the room ID panics on a bad one.
		key, remember := authDecisionKeyFor(pdu, authEvents)
		if remember && authDecisions.isAllowed(key) {
			return struct{}{}, nil // see authcache.go
		}
		events, err := gomatrixserverlib.NewAuthEvents(authEvents)
		if err != nil {
			return struct{}{}, err
		}
		var provider gomatrixserverlib.AuthEventProvider = events
		checked, err := ownedStateCheck(pdu, events)
		if err != nil {
			return struct{}{}, err
		}
		if invite, ok, err := thirdPartyInviteOf(pdu); err != nil {
			return struct{}{}, err
		} else if ok {
			if err := checkThirdPartyInvite(pdu, invite, events); err != nil {
				return struct{}{}, err
			}
			provider = thirdPartyKeysProvider{events}
		}
		if err := gomatrixserverlib.Allowed(checked, provider, userIDForSender); err != nil {
			return struct{}{}, err
		}
		if remember {
			authDecisions.rememberAllowed(key)
		}
		return struct{}{}, nil
	})
	return err
}

// sameEvents reports whether a and b hold the same events (by ID).
func sameEvents(a, b []gomatrixserverlib.PDU) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.ContainsFunc(b, func(y gomatrixserverlib.PDU) bool { return y.EventID() == x.EventID() }) {
			return false
		}
	}
	return true
}

func isCreate(pdu gomatrixserverlib.PDU) bool {
	return pdu.Type() == "m.room.create" && pdu.StateKeyEquals("")
}

// listsImpliedCreate reports whether pdu, in a room version whose room ID
// is its create event's ID (12 and later), names the create event in its
// auth_events itself. Such an event is rejected: "m.room.create MUST NOT
// be selected" (rooms/v12, authorization rules 3.2). The check reads the
// event's own auth_events, since gomatrixserverlib's AuthEventIDs adds
// the create event implied by the room ID to them (so an event listing it
// would otherwise look like one with two create events).
func listsImpliedCreate(pdu gomatrixserverlib.PDU) bool {
	impl, err := roomVersion(string(pdu.Version()))
	if err != nil || !impl.DomainlessRoomIDs() || isCreate(pdu) {
		return false
	}
	createID := "$" + strings.TrimPrefix(pdu.RoomID().String(), "!")
	if local, ok := pdu.(*localPDU); ok && !local.changed.Load() {
		// Its own auth_events, as written.
		return slices.Contains(local.ev.AuthEvents, createID)
	}
	for _, id := range gjson.GetBytes(pdu.JSON(), "auth_events").Array() {
		if id.Str == createID {
			return true
		}
	}
	return false
}

// impliedCreateReason is the rejection reason for listsImpliedCreate.
const impliedCreateReason = "the create event is listed in auth_events, which room version 12 forbids (its room ID implies it)"

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// commit writes a prepared event: the event row (its NID is its stream
// position), its state snapshots, and for an accepted event the forward
// extremities, the current state and any redaction it completes. room is
// updated in place. Rejected events are stored so they are not fetched
// again, but never enter state, extremities or the timeline.
func (s *Server) commit(ctx context.Context, tx storage.Tx, p *prepared) error {
	room := p.room
	var err error
	if p.beforeState != nil && !isCreate(p.pdu) {
		if p.beforeNID, err = writeSnapshot(ctx, tx, room.RoomID, 0, nil, p.beforeState); err != nil {
			return err
		}
	}
	row := p.row
	row.Rejected = p.outcome == Rejected
	row.SoftFailed = p.outcome == SoftFailed
	row.StateBefore, row.StateAfter = p.beforeNID, p.beforeNID
	if p.outlierNID != 0 {
		err = s.replaceOutlier(ctx, tx, p.outlierNID, row)
	} else {
		_, err = s.insertEvent(ctx, tx, row)
	}
	if err != nil {
		return err
	}
	if !row.Rejected && row.StateKey != nil {
		k := tuple{row.Type, *row.StateKey}
		if row.StateAfter, err = writeSnapshotDelta(ctx, tx, room.RoomID, p.beforeNID, p.beforeState, k, row.NID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE roomserver_events SET state_after = $1 WHERE event_nid = $2`, row.StateAfter, row.NID); err != nil {
			return err
		}
	}
	if !p.stateGiven {
		if err := s.markAfterPartialStretch(ctx, tx, room.RoomID, p.pdu.PrevEventIDs(), row.NID); err != nil {
			return err
		}
	}
	loaded := &loadedEvent{row: row, pdu: p.pdu}
	if p.outlierNID != 0 {
		// After moveEventNID's AfterCommit drop of the outlier's entries
		// (hooks run in registration order).
		tx.AfterCommit(func() { s.events.put(loaded) })
	} else {
		// Cached by the committing goroutine before the send is answered
		// or anyone is notified: a consumer woken by this commit (push,
		// sync) finds the event parsed instead of parsing it again. A
		// redaction later in the same batch drops it again after this
		// (applyRedaction's OnCommit runs in batch order).
		tx.OnCommit(func() { s.events.put(loaded) })
	}
	if p.outcome != Accepted {
		return nil
	}
	if p.outlierNID != 0 {
		if followed, err := followedInTimeline(ctx, tx, row); err != nil || followed {
			if err != nil {
				return err
			}
			return s.commitFollowed(ctx, tx, p, loaded)
		}
	}

	// The hook sees the room's current state before the event moves it.
	afterNotify, err := s.runTimelineHook(ctx, tx, room, loaded)
	if err != nil {
		return err
	}

	// Forward extremities: this event replaces its prev_events.
	// Spec: server-server-api, "Forward extremities" (room DAG).
	prevs := p.pdu.PrevEventIDs()
	ext := []string{row.EventID}
	for _, id := range room.Extremities {
		if !slices.Contains(prevs, id) {
			ext = append(ext, id)
		}
	}
	oldCurrent := room.CurrentSnapshot
	newCurrent := row.StateAfter
	if len(ext) > 1 {
		if newCurrent, err = s.resolveExtremities(ctx, tx, room, ext, row); err != nil {
			return err
		}
	}
	if err := s.moveCurrentState(ctx, tx, room, oldCurrent, newCurrent, p.beforeNID, row); err != nil {
		return err
	}
	room.Extremities = ext
	room.CurrentSnapshot = newCurrent
	room.MaxDepth = max(room.MaxDepth, row.Depth)
	if p.builtOn != nil {
		// A pipelined send: the row must still be the one it was built on.
		err = saveRoomIf(ctx, tx, room, p.builtOn)
		p.builtOnChecked = err == nil
	} else {
		err = saveRoom(ctx, tx, room)
	}
	if err != nil {
		return err
	}
	if row.Membership != nil && (*row.Membership == "join" || *row.Membership == "invite" || *row.Membership == "knock") {
		// Rejoining un-forgets the room.
		if _, err := tx.Exec(ctx, `DELETE FROM roomserver_forgotten WHERE user_id = $1 AND room_id = $2`, *row.StateKey, room.RoomID); err != nil {
			return err
		}
	}
	if row.Membership != nil && s.endPendingMembership != nil && domainOf(*row.StateKey) == string(s.serverName) {
		// The room's own member event now says where the local user
		// stands: a pending invite or knock kept for the room while only
		// other servers held it (or its leave) has ended, in this commit
		// (a join through send_join, a join, leave, invite or ban of a
		// room held here).
		if err := s.endPendingMembership(ctx, tx, *row.StateKey, room.RoomID); err != nil {
			return err
		}
	}
	if err := s.applyRedactions(ctx, tx, room, loaded); err != nil {
		return err
	}
	s.notifyAfterThen(tx, row.NID, afterNotify)
	return nil
}

// writeSnapshotDelta writes the snapshot "parent plus k = nid".
func writeSnapshotDelta(ctx context.Context, tx storage.Tx, roomID string, parent int64, parentState stateMap, k tuple, nid int64) (int64, error) {
	if parentState == nil {
		var chainLen int64
		if parent != 0 {
			if err := tx.QueryRow(ctx, `SELECT chain_len FROM roomserver_snapshots WHERE snapshot_nid = $1`, parent).Scan(&chainLen); err != nil {
				return 0, fmt.Errorf("loading snapshot %d: %w", parent, err)
			}
		}
		if parent != 0 && chainLen+1 < maxSnapshotChain {
			var out int64
			if err := tx.QueryRow(ctx, `INSERT INTO roomserver_snapshots (room_id, parent_nid, chain_len) VALUES ($1, $2, $3)
				RETURNING snapshot_nid`, roomID, parent, chainLen+1).Scan(&out); err != nil {
				return 0, err
			}
			_, err := tx.Exec(ctx, `INSERT INTO roomserver_snapshot_entries (snapshot_nid, type, state_key, event_nid)
				VALUES ($1, $2, $3, $4)`, out, k.Type, k.StateKey, nid)
			return out, err
		}
		var err error
		if parentState, err = loadSnapshot(ctx, tx, parent); err != nil {
			return 0, err
		}
	}
	state := make(stateMap, len(parentState)+1)
	for key, v := range parentState {
		state[key] = v
	}
	state[k] = nid
	return writeSnapshot(ctx, tx, roomID, parent, parentState, state)
}

// resolveExtremities resolves the state after each forward extremity
// into the room's new current state and stores it as a snapshot.
func (s *Server) resolveExtremities(ctx context.Context, tx storage.Tx, room *roomRow, ext []string, newRow *eventRow) (int64, error) {
	rows, err := eventRowsByID(ctx, tx, ext)
	if err != nil {
		return 0, err
	}
	var snaps []int64
	for _, id := range ext {
		r := rows[id]
		if r == nil {
			return 0, fmt.Errorf("forward extremity %s not stored", id)
		}
		if !slices.Contains(snaps, r.StateAfter) {
			snaps = append(snaps, r.StateAfter)
		}
	}
	if len(snaps) == 1 {
		return snaps[0], nil
	}
	sets := make([]stateMap, len(snaps))
	for i, nid := range snaps {
		if sets[i], err = loadSnapshot(ctx, tx, nid); err != nil {
			return 0, err
		}
	}
	resolved, err := s.resolveStates(ctx, tx, tx, room.Version, sets)
	if err != nil {
		return 0, err
	}
	// Share the new event's snapshot when resolution lands on it (the
	// first extremity's when there is no new event: commitFollowed).
	at := 0
	if newRow != nil {
		at = slices.Index(snaps, newRow.StateAfter)
	}
	return writeSnapshot(ctx, tx, room.RoomID, snaps[at], sets[at], resolved)
}

// moveCurrentState updates the current-state table from snapshot oldNID
// to newNID. The common case — the new event's own state change on top of
// the current state — is one row.
func (s *Server) moveCurrentState(ctx context.Context, tx storage.Tx, room *roomRow, oldNID, newNID, beforeNID int64, row *eventRow) error {
	if oldNID == newNID {
		return nil
	}
	if oldNID == beforeNID && newNID == row.StateAfter && row.StateKey != nil {
		k := tuple{row.Type, *row.StateKey}
		return s.updateCurrentState(ctx, tx, room.RoomID, stateMap{}, stateMap{k: row.NID}, map[int64]*eventRow{row.NID: row}, row.NID)
	}
	oldState, err := loadSnapshot(ctx, tx, oldNID)
	if err != nil {
		return err
	}
	newState, err := loadSnapshot(ctx, tx, newNID)
	if err != nil {
		return err
	}
	return s.replaceCurrentState(ctx, tx, room.RoomID, oldState, newState, row.NID)
}

// replaceCurrentState moves the room's current state from oldState to
// newState, loading the rows of the events that changed; pos is the
// position of the change (updateCurrentState: 0 when no event makes it).
func (s *Server) replaceCurrentState(ctx context.Context, tx storage.Tx, roomID string, oldState, newState stateMap, pos int64) error {
	var changed []int64
	for k, v := range newState {
		if oldState[k] != v {
			changed = append(changed, v)
		}
	}
	rows, err := eventRowsByNID(ctx, tx, changed)
	if err != nil {
		return err
	}
	byNID := make(map[int64]*eventRow, len(rows))
	for _, r := range rows {
		byNID[r.NID] = r
	}
	return s.updateCurrentState(ctx, tx, roomID, oldState, newState, byNID, pos)
}
