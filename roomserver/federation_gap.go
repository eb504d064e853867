package roomserver

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Gap filling. When a federation event's prev events cannot be fetched
// (get_missing_events does not reach what we hold), the federation API
// asks the sending server for the state after each missing prev event
// (state_ids plus the prev event itself) and the events of it we lack,
// and hands them here. Spec: server-server-api, "Retrieving events" and
// "Checks performed on receipt of a PDU" step 5 (state before an event
// whose prev events are missing).

// InputWithStateRequest is a federation event whose prev events are not
// all held, with the state after each missing one.
type InputWithStateRequest struct {
	RoomVersion string
	JSON        json.RawMessage
	// PrevStates holds, for each prev event not held, the state after it
	// (full events; the prev event itself included if it is a state
	// event).
	PrevStates [][]json.RawMessage
	// AuthEvents are further events the states' events need for their
	// own auth checks (their auth chain), those not held here.
	AuthEvents []json.RawMessage
}

// maxGapEvents bounds the events one InputWithState call may bring in.
const maxGapEvents = 5000

// InputWithState persists a federation event whose prev events are
// missing, with the state before it taken as the resolution of the
// states after its prev events: the given states for those not held, our
// own for those held. Events of the given states and auth events that
// are not held are checked against their own auth events (all of which
// must be given or held) and stored as outliers. The event is then
// auth-checked like InputEvent (its auth events, the state before it,
// the current state for soft failure) and becomes a forward extremity,
// so the room's current state is the resolution of that state with
// ours. Signatures and hashes must already be verified.
func (s *Server) InputWithState(ctx context.Context, req InputWithStateRequest) (*InputEventResponse, error) {
	impl, err := roomVersion(req.RoomVersion)
	if err != nil {
		return nil, err
	}
	parse := func(raw json.RawMessage) (gomatrixserverlib.PDU, error) {
		return NewUntrustedPDU(impl, raw)
	}
	pdu, err := parse(req.JSON)
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.BadJSON, "invalid PDU")
	}
	if n := len(pdu.JSON()); n > maxEventBytes {
		return nil, mxerr.New(mxerr.TooLarge, "PDU is %d bytes", n)
	}
	if isCreate(pdu) {
		return nil, mxerr.New(mxerr.BadJSON, "a create event has no prev events")
	}
	roomID, err := guard("room ID", func() (string, error) { return pdu.RoomID().String(), nil })
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.BadJSON, "invalid room ID")
	}
	given, prevStates, err := parseGivenStates(impl, roomID, req.PrevStates, req.AuthEvents)
	if err != nil {
		return nil, err
	}

	// The room's policy server is asked (once) before the room lock is
	// taken; the signature is judged again in the write.
	if pdu, err = s.policyPresign(ctx, roomID, pdu); err != nil {
		return nil, err
	}

	unlock := s.lockRoom(ctx, roomID)
	defer unlock()
	var p *prepared
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		p = nil
		outlierNID, duplicate, err := heldOutlier(ctx, tx, pdu.EventID())
		if err != nil || duplicate {
			return err
		}
		room, err := loadRoom(ctx, tx, roomID)
		if err != nil {
			return err
		}
		if room.Version != req.RoomVersion {
			return mxerr.New(mxerr.BadJSON, "room %s is version %s, not %s", roomID, room.Version, req.RoomVersion)
		}
		if err := refuseForeignCreate(ctx, tx, roomID, given); err != nil {
			return err
		}
		nids, err := s.storeGapOutliers(ctx, tx, room, given)
		if err != nil {
			return err
		}
		// The state sets: the given ones, and ours after each held prev.
		var sets []stateMap
		for _, st := range prevStates {
			m, err := givenStateMap(st, nids)
			if err != nil {
				return err
			}
			sets = append(sets, m)
		}
		held, err := s.loadEventsByID(ctx, tx, tx, pdu.PrevEventIDs())
		if err != nil {
			return err
		}
		for _, id := range pdu.PrevEventIDs() {
			pe, ok := held[id]
			if !ok {
				continue
			}
			if pe.row.RoomID != roomID {
				return mxerr.New(mxerr.BadJSON, "prev event %s is in another room", id)
			}
			if pe.row.StateAfter == 0 {
				continue // an outlier: its state is what was given
			}
			m, err := loadSnapshot(ctx, tx, pe.row.StateAfter)
			if err != nil {
				return err
			}
			sets = append(sets, m)
		}
		if len(sets) == 0 {
			return mxerr.New(mxerr.NotFound, "no state for the prev events of %s", pdu.EventID())
		}
		before := sets[0]
		if len(sets) > 1 {
			if before, err = s.resolveStates(ctx, tx, tx, room.Version, sets); err != nil {
				return err
			}
		}
		p, err = s.prepareWithState(ctx, tx, room, pdu, before)
		if err != nil {
			return err
		}
		if err := s.policySoftFail(ctx, tx, p); err != nil {
			return err
		}
		p.outlierNID = outlierNID // outlier_promotion.go
		return s.commit(ctx, tx, p)
	})
	if err != nil {
		return nil, err
	}
	if p == nil {
		return &InputEventResponse{EventID: pdu.EventID(), Outcome: Duplicate}, nil
	}
	resp := &InputEventResponse{EventID: p.row.EventID, Outcome: p.outcome, Reason: p.reason}
	if p.outcome == Accepted {
		resp.StreamPos = p.row.NID
	}
	return resp, nil
}

// parseGivenStates parses states another server gave (each a whole room
// state: one create event, one event per state key) and further auth
// events, all of roomID, into the events by ID and each state by key.
// The events are only parsed: storeGapOutliers checks them.
func parseGivenStates(impl gomatrixserverlib.IRoomVersion, roomID string, states [][]json.RawMessage, authEvents []json.RawMessage) (map[string]gomatrixserverlib.PDU, []map[tuple]string, error) {
	total := len(authEvents)
	for _, st := range states {
		total += len(st)
	}
	if total > maxGapEvents {
		return nil, nil, mxerr.New(mxerr.TooLarge, "%d state and auth events, more than %d", total, maxGapEvents)
	}
	given := map[string]gomatrixserverlib.PDU{}
	add := func(raw json.RawMessage) (gomatrixserverlib.PDU, error) {
		e, err := NewUntrustedPDU(impl, raw)
		if err != nil {
			return nil, mxerr.Wrap(err, mxerr.BadJSON, "invalid state or auth event")
		}
		if e.RoomID().String() != roomID {
			return nil, mxerr.New(mxerr.BadJSON, "event %s is in another room", e.EventID())
		}
		if err := CheckPDUFieldLimits(e); err != nil {
			return nil, err
		}
		given[e.EventID()] = e
		return e, nil
	}
	sets := make([]map[tuple]string, len(states))
	for i, list := range states {
		sets[i] = map[tuple]string{}
		for _, raw := range list {
			e, err := add(raw)
			if err != nil {
				return nil, nil, err
			}
			if e.StateKey() == nil {
				return nil, nil, mxerr.New(mxerr.BadJSON, "state event %s has no state key", e.EventID())
			}
			k := tuple{e.Type(), *e.StateKey()}
			if _, dup := sets[i][k]; dup {
				return nil, nil, mxerr.New(mxerr.BadJSON, "two state events for (%s, %s)", k.Type, k.StateKey)
			}
			sets[i][k] = e.EventID()
		}
		if _, ok := sets[i][tuple{"m.room.create", ""}]; !ok {
			return nil, nil, mxerr.New(mxerr.BadJSON, "a given state has no create event")
		}
	}
	for _, raw := range authEvents {
		if _, err := add(raw); err != nil {
			return nil, nil, err
		}
	}
	return given, sets, nil
}

// givenStateMap is a given state (by event ID) as NIDs of the events
// storeGapOutliers kept; an event it refused makes the state refused.
func givenStateMap(st map[tuple]string, nids map[string]int64) (stateMap, error) {
	m := stateMap{}
	for k, id := range st {
		nid, ok := nids[id]
		if !ok {
			return nil, mxerr.New(mxerr.Forbidden, "state event %s was rejected", id)
		}
		m[k] = nid
	}
	return m, nil
}

// storeGapOutliers stores the given events not held as outliers, each
// checked against its auth events (given or held), and returns the NIDs
// of the given events that are usable as state (held and not rejected,
// or newly stored).
func (s *Server) storeGapOutliers(ctx context.Context, tx storage.Tx, room *roomRow, given map[string]gomatrixserverlib.PDU) (map[string]int64, error) {
	ids := mapKeys(given)
	known, err := s.loadEventsByID(ctx, tx, tx, ids)
	if err != nil {
		return nil, err
	}
	nids := map[string]int64{}
	for id, e := range known {
		if e.row.RoomID != room.RoomID {
			return nil, mxerr.New(mxerr.BadJSON, "event %s is in another room", id)
		}
		if !e.row.Rejected {
			nids[id] = e.row.NID
		}
	}
	for _, id := range sortedByDepth(given) {
		if _, ok := known[id]; ok {
			continue
		}
		e := given[id]
		authIDs := e.AuthEventIDs()
		heldAuth, err := s.loadEventsByID(ctx, tx, tx, authIDs)
		if err != nil {
			return nil, err
		}
		var auth []gomatrixserverlib.PDU
		ok := true
		for _, a := range authIDs {
			switch {
			case heldAuth[a] != nil:
				ok = ok && !heldAuth[a].row.Rejected
				auth = append(auth, heldAuth[a].pdu)
			case given[a] != nil:
				ok = ok && nids[a] != 0 // a given auth event that was not allowed
				auth = append(auth, given[a])
			default:
				return nil, mxerr.New(mxerr.NotFound, "auth event %s of %s is neither given nor held", a, id)
			}
		}
		if !ok || allowed(e, auth) != nil {
			// Not allowed: never state. Left out (not stored), so a
			// state naming it is refused below.
			continue
		}
		row := rowFromPDU(e)
		row.SoftFailed = true // an outlier: never a timeline event
		if nids[id], err = s.insertEvent(ctx, tx, row); err != nil {
			return nil, err
		}
	}
	return nids, nil
}

// prepareWithState is prepare for an event whose state before is given:
// auth against its own auth events, the state before, and the current
// state (soft failure).
func (s *Server) prepareWithState(ctx context.Context, tx storage.Tx, room *roomRow, pdu gomatrixserverlib.PDU, before stateMap) (*prepared, error) {
	row, err := guard("reading event", func() (*eventRow, error) { return rowFromPDU(pdu), nil })
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.BadJSON, "invalid event")
	}
	if err := CheckPDUFieldLimits(pdu); err != nil {
		return nil, err
	}
	if row.Depth < 0 || row.Depth > maxSafeInt {
		return nil, mxerr.New(mxerr.BadJSON, "depth %d out of range", row.Depth)
	}
	p := &prepared{pdu: pdu, row: row, room: room, beforeState: before, outcome: Accepted}
	reject := func(format string, args ...any) (*prepared, error) {
		p.outcome, p.reason = Rejected, fmt.Sprintf(format, args...)
		return p, nil
	}
	if listsImpliedCreate(pdu) {
		return reject("%s", impliedCreateReason)
	}
	authIDs := pdu.AuthEventIDs()
	authEvents, err := s.loadEventsByID(ctx, tx, tx, authIDs)
	if err != nil {
		return nil, err
	}
	var authList []gomatrixserverlib.PDU
	var seen []tuple
	for _, id := range authIDs {
		ae, ok := authEvents[id]
		switch {
		case !ok:
			return nil, mxerr.New(mxerr.NotFound, "auth event %s of %s is unknown", id, row.EventID)
		case ae.row.RoomID != room.RoomID:
			return reject("auth event %s is in another room", id)
		case ae.row.Rejected:
			return reject("auth event %s was rejected", id)
		case ae.row.StateKey == nil:
			return reject("auth event %s is not a state event", id)
		}
		k := tuple{ae.row.Type, *ae.row.StateKey}
		if slices.Contains(seen, k) {
			return reject("two auth events for (%s, %s)", k.Type, k.StateKey)
		}
		seen = append(seen, k)
		authList = append(authList, ae.pdu)
	}
	if err := allowed(pdu, authList); err != nil {
		return reject("not allowed by its auth events: %v", err)
	}
	needed := neededTuples(pdu)
	beforeAuth, err := s.stateEventsFor(ctx, tx, tx, room, 0, before, needed)
	if err != nil {
		return nil, err
	}
	if err := allowed(pdu, beforeAuth); err != nil {
		return reject("not allowed by the state before it: %v", err)
	}
	// Soft failure. Across a gap our current state may lack what
	// happened in it (the sender's join, say), so the current state the
	// event is checked against is ours resolved with the state before
	// the event: a ban we hold still counts, a join we missed too. A
	// room with partial state skips the check, as in prepare.
	// Spec: server-server-api, "Soft failure".
	if room.Partial || room.CurrentSnapshot == 0 {
		return p, nil
	}
	ours, err := loadSnapshot(ctx, tx, room.CurrentSnapshot)
	if err != nil {
		return nil, err
	}
	currentState, err := s.resolveStates(ctx, tx, tx, room.Version, []stateMap{ours, before})
	if err != nil {
		return nil, err
	}
	current, err := s.stateEventsFor(ctx, tx, tx, room, 0, currentState, needed)
	if err != nil {
		return nil, err
	}
	if err := allowed(pdu, current); err != nil {
		p.outcome, p.reason = SoftFailed, fmt.Sprintf("not allowed by the current state: %v", err)
	}
	return p, nil
}
