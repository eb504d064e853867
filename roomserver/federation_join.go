package roomserver

// Membership handshakes with other servers: the templates this server
// hands out for make_join/make_leave/make_knock, and the import of a
// room this server joins through another server (send_join's state and
// auth chain become the room's starting point).

import (
	"context"
	"encoding/json"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// TemplateRequest asks for a membership event template for a remote user.
type TemplateRequest struct {
	RoomID     string
	UserID     string
	Membership string // join, leave or knock
	// SupportedVersions are the room versions the remote server supports
	// (the ver query parameter); empty means only version 1.
	SupportedVersions []string
}

// MembershipTemplate builds the unsigned event template of
// make_join/make_leave/make_knock: prev_events, auth_events and depth as
// if the event were sent now, after checking the auth rules would allow
// it. Spec: server-server-api, "Joining Rooms" (make_join).
func (s *Server) MembershipTemplate(ctx context.Context, req TemplateRequest) (string, json.RawMessage, error) {
	if _, err := spec.NewUserID(req.UserID, true); err != nil {
		return "", nil, mxerr.New(mxerr.BadJSON, "invalid user ID %q", req.UserID)
	}
	if domainOf(req.UserID) == string(s.serverName) {
		return "", nil, mxerr.New(mxerr.Forbidden, "%s is a local user", req.UserID)
	}
	reader := s.db.Reader()
	room, err := loadRoom(ctx, reader, req.RoomID)
	if err != nil {
		return "", nil, err
	}
	supported := req.SupportedVersions
	if len(supported) == 0 {
		supported = []string{"1"}
	}
	if !slices.Contains(supported, room.Version) {
		return "", nil, mxerr.New(mxerr.IncompatibleRoomVersion, "room %s is version %s", req.RoomID, room.Version).
			With("room_version", room.Version)
	}
	content := map[string]any{"membership": req.Membership}
	if req.Membership == "join" {
		via, err := s.restrictedJoinAuthoriser(ctx, req.RoomID, req.UserID)
		if err != nil {
			return "", nil, err
		}
		if via != "" {
			content["join_authorised_via_users_server"] = via
		}
	}
	raw, err := json.Marshal(content)
	if err != nil {
		return "", nil, err
	}
	impl, err := roomVersion(room.Version)
	if err != nil {
		return "", nil, err
	}
	stateKey := req.UserID
	proto := &gomatrixserverlib.ProtoEvent{
		SenderID: req.UserID, RoomID: req.RoomID, Type: "m.room.member", StateKey: &stateKey, Content: raw,
		PrevEvents: append([]string{}, room.Extremities...), Depth: min(room.MaxDepth+1, maxSafeInt), Version: impl,
	}
	needed, err := guard("auth events needed", func() (gomatrixserverlib.StateNeeded, error) {
		return gomatrixserverlib.StateNeededForProtoEvent(proto)
	})
	if err != nil {
		return "", nil, mxerr.Wrap(err, mxerr.BadJSON, "invalid event")
	}
	keys := []tuple{{"m.room.create", ""}}
	for _, t := range needed.Tuples() {
		keys = append(keys, tuple{t.EventType, t.StateKey})
	}
	state, err := s.stateEventsFor(ctx, reader, nil, room, room.CurrentSnapshot, nil, keys)
	if err != nil {
		return "", nil, err
	}
	template, err := guard("building template", func() (json.RawMessage, error) {
		eb := impl.NewEventBuilderFromProtoEvent(proto)
		provider, err := gomatrixserverlib.NewAuthEvents(state)
		if err != nil {
			return nil, err
		}
		if err := eb.AddAuthEvents(provider); err != nil {
			return nil, mxerr.Wrap(err, mxerr.Forbidden, "cannot select auth events")
		}
		// Check the auth rules would allow it, on a throwaway signed copy.
		trial, err := eb.Build(s.now(), s.serverName, s.keyID, s.key.PrivateKey)
		if err != nil {
			return nil, buildError(err)
		}
		if err := allowed(trial, state); err != nil {
			return nil, mxerr.Wrap(err, mxerr.Forbidden, "%s may not %s: %v", req.UserID, req.Membership, err)
		}
		out, err := json.Marshal(eb)
		if err != nil {
			return nil, err
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(out, &m); err != nil {
			return nil, err
		}
		m["origin"], _ = json.Marshal(domainOf(req.UserID))
		m["origin_server_ts"], _ = json.Marshal(s.now().UnixMilli())
		delete(m, "signatures")
		return json.Marshal(m)
	})
	if err != nil {
		return "", nil, err
	}
	return room.Version, template, nil
}

// StateAndAuthChainBefore returns the state before eventID and the auth
// chain of it and of the event, for the send_join response.
func (s *Server) StateAndAuthChainBefore(ctx context.Context, eventID string) (state, authChain []*Event, err error) {
	state, _, err = s.stateBeforeWithAuthChain(ctx, eventID)
	if err != nil {
		return nil, nil, err
	}
	ids := []string{eventID}
	for _, e := range state {
		ids = append(ids, e.EventID)
	}
	authChain, err = s.AuthChain(ctx, ids)
	return state, authChain, err
}

// ImportRoomRequest carries what send_join answered: the room version,
// our signed join event, the state before it and its auth chain. The
// caller has verified every signature and hash.
type ImportRoomRequest struct {
	RoomVersion string
	Join        json.RawMessage
	State       []json.RawMessage
	AuthChain   []json.RawMessage
	// PartialState is set when send_join answered members_omitted: the
	// room is stored with the partial-state flag (partial_state.go).
	PartialState bool
	// Servers to resync a partial-state room from: the join server,
	// then send_join's servers_in_room.
	Servers []string
}

// ImportJoinedRoom makes a room this server joined through another
// server: it checks the state and auth chain form a consistent, allowed
// whole, stores them as outliers (known events with no timeline place:
// stored soft-failed so they never show as timeline events) and persists
// the join with that state before it, all in one transaction. A room
// already known only gets the join event through InputEvent.
// Spec: server-server-api, "Joining Rooms" (send_join response checks).
func (s *Server) ImportJoinedRoom(ctx context.Context, req ImportRoomRequest) (*InputEventResponse, error) {
	impl, err := roomVersion(req.RoomVersion)
	if err != nil {
		return nil, err
	}
	parse := func(raw json.RawMessage) (gomatrixserverlib.PDU, error) {
		return parseUntrustedPDU(impl, raw)
	}
	join, err := parse(req.Join)
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.BadJSON, "invalid join event")
	}
	roomID, err := guard("room ID", func() (string, error) { return join.RoomID().String(), nil })
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.BadJSON, "invalid room ID")
	}
	// A room we are still in takes the join as any other event. One we
	// left is imported again: our copy of its state is stale, so the
	// send_join state replaces it and the join is its only extremity.
	rejoin, err := loadRoom(ctx, s.db.Reader(), roomID)
	if err == nil {
		servers, err := s.JoinedServers(ctx, roomID)
		if err != nil {
			return nil, err
		}
		if slices.Contains(servers, string(s.serverName)) {
			return s.InputEvent(ctx, InputEventRequest{RoomVersion: req.RoomVersion, JSON: req.Join})
		}
	} else if !mxerr.Is(err, mxerr.NotFound) {
		return nil, err
	} else {
		rejoin = nil
	}
	byID := map[string]gomatrixserverlib.PDU{}
	var stateIDs []string
	for i, list := range [][]json.RawMessage{req.State, req.AuthChain} {
		for _, raw := range list {
			pdu, err := parse(raw)
			if err != nil {
				return nil, mxerr.Wrap(err, mxerr.BadJSON, "invalid event in send_join response")
			}
			if pdu.RoomID().String() != roomID {
				return nil, mxerr.New(mxerr.BadJSON, "event %s of the send_join response is in another room", pdu.EventID())
			}
			if err := CheckPDUFieldLimits(pdu); err != nil {
				return nil, err
			}
			byID[pdu.EventID()] = pdu
			if i == 0 {
				if pdu.StateKey() == nil {
					return nil, mxerr.New(mxerr.BadJSON, "state event %s has no state key", pdu.EventID())
				}
				stateIDs = append(stateIDs, pdu.EventID())
			}
		}
	}
	// Every event must be allowed by its own auth events, all of which
	// must be in the response. One that is not (its auth event was
	// dropped by the caller for a bad signature, say) is rejected and
	// dropped, and so is whatever depends on it; the join needs only
	// what remains to let it in. Spec: server-server-api, "Checks
	// performed on receipt of a PDU"; Complement
	// TestJoinFederatedRoomWithUnverifiableEvents.
	for dropped := true; dropped; {
		dropped = false
		for _, id := range sortedByDepth(byID) {
			pdu := byID[id]
			var auth []gomatrixserverlib.PDU
			complete := true
			for _, a := range pdu.AuthEventIDs() {
				ae, ok := byID[a]
				if !ok {
					complete = false
					break
				}
				auth = append(auth, ae)
			}
			if !complete || allowed(pdu, auth) != nil {
				delete(byID, id)
				dropped = true
			}
		}
	}
	stateIDs = slices.DeleteFunc(stateIDs, func(id string) bool { return byID[id] == nil })
	// The join itself must pass the auth rules against its own auth
	// events (the template's choice), from the response or already held:
	// a resident server that leaves the joiner's ban out of the state it
	// answers (partial state omits members) still named it there.
	// Spec: server-server-api, "Checks performed on receipt of a PDU"
	// (step 4).
	if err := s.joinAllowedByOwnAuth(ctx, join, roomID, byID); err != nil {
		return nil, err
	}
	// The state must hold the create event, one event per key, and let
	// the join in.
	stateByKey := map[tuple]gomatrixserverlib.PDU{}
	for _, id := range stateIDs {
		pdu := byID[id]
		k := tuple{pdu.Type(), *pdu.StateKey()}
		if k == (tuple{"m.room.member", string(join.SenderID())}) && id == join.EventID() {
			continue // a server that includes the join itself
		}
		stateByKey[k] = pdu
	}
	if _, ok := stateByKey[tuple{"m.room.create", ""}]; !ok {
		return nil, mxerr.New(mxerr.BadJSON, "the send_join state has no create event")
	}
	var stateList []gomatrixserverlib.PDU
	for _, k := range sortedKeys(stateByKey) {
		stateList = append(stateList, stateByKey[k])
	}
	if req.PartialState {
		// Partial state may lack a membership the join needs (a
		// restricted join's authoriser): the join's own auth events
		// fill the keys it lacks (partial_state.go).
		for _, id := range join.AuthEventIDs() {
			if ae, ok := byID[id]; ok && ae.StateKey() != nil {
				if _, have := stateByKey[tuple{ae.Type(), *ae.StateKey()}]; !have {
					stateList = append(stateList, ae)
				}
			}
		}
	}
	if err := allowed(join, stateList); err != nil {
		return nil, mxerr.New(mxerr.Forbidden, "the join is not allowed by the room state: %v", err)
	}

	unlock := s.lockRoom(ctx, roomID)
	defer unlock()
	room := &roomRow{RoomID: roomID, Version: req.RoomVersion}
	var p *prepared
	cleared := false
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		cleared = false
		if rejoin != nil {
			if room, err = loadRoom(ctx, tx, roomID); err != nil {
				return err
			}
			room.Extremities = nil
			if err := refuseForeignCreate(ctx, tx, roomID, byID); err != nil {
				return err
			}
			if err := closePartialStateLeft(ctx, tx, roomID); err != nil {
				return err
			}
		} else if err := insertRoom(ctx, tx, roomID, req.RoomVersion, s.now().UnixMilli()); err != nil {
			return err
		}
		known, err := eventRowsByID(ctx, tx, mapKeys(byID))
		if err != nil {
			return err
		}
		nids := map[string]int64{}
		for _, id := range sortedByDepth(byID) {
			if r, ok := known[id]; ok {
				nids[id] = r.NID
				continue
			}
			row := rowFromPDU(byID[id])
			row.SoftFailed = true // an outlier: never a timeline event
			if nids[id], err = s.insertEvent(ctx, tx, row); err != nil {
				return err
			}
		}
		before := stateMap{}
		for k, pdu := range stateByKey {
			before[k] = nids[pdu.EventID()]
		}
		p = &prepared{pdu: join, row: rowFromPDU(join), room: room, beforeState: before, outcome: Accepted, stateGiven: true}
		if err := s.commit(ctx, tx, p); err != nil {
			return err
		}
		if req.PartialState && rejoin != nil && room.Partial {
			// A rejoin of a room left while still partial. When the
			// join follows our own timeline events, the resync of the
			// earlier partial-state join replays it with the full state
			// (partial_state_replay.go): the record stays, as a running
			// resync expects. When it follows events we never got (the
			// room went on without us), no replay reaches it: the
			// record moves to this join, whose state is then the one to
			// complete (ErrPartialJoinMoved tells a running resync).
			connected, err := s.followsTimeline(ctx, tx, join)
			if err != nil || connected {
				return err
			}
		}
		if rejoin != nil && room.Partial {
			// The earlier partial-state join's events keep their
			// partial state: no replay will reach them.
			through := p.row.NID - 1
			if err := s.keepPartialStretch(ctx, tx, roomID, &through); err != nil {
				return err
			}
		}
		if req.PartialState {
			return s.markPartial(ctx, tx, roomID, join.EventID(), req.Servers)
		}
		if rejoin != nil && room.Partial {
			// A rejoin answered with the full state completes a room
			// left while still partial: nothing is left to resync.
			cleared = true
			return s.clearPartial(ctx, tx, roomID, p.row.NID)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if cleared {
		s.partial.wake(roomID)
	}
	return &InputEventResponse{EventID: p.row.EventID, Outcome: Accepted, StreamPos: p.row.NID}, nil
}

// followsTimeline reports whether every prev event of pdu is a timeline
// event this server holds (not an outlier, not unknown).
func (s *Server) followsTimeline(ctx context.Context, tx storage.Tx, pdu gomatrixserverlib.PDU) (bool, error) {
	prevs := pdu.PrevEventIDs()
	rows, err := eventRowsByID(ctx, tx, prevs)
	if err != nil {
		return false, err
	}
	for _, id := range prevs {
		r, ok := rows[id]
		if !ok || isOutlierRow(r) || r.StateAfter == 0 {
			return false, nil
		}
	}
	return len(prevs) > 0, nil
}

func sortedKeys(m map[tuple]gomatrixserverlib.PDU) []tuple {
	sm := make(stateMap, len(m))
	for k := range m {
		sm[k] = 0
	}
	return sortedTuples(sm)
}

func mapKeys(m map[string]gomatrixserverlib.PDU) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// sortedByDepth orders events by depth, then ID, so outliers are stored
// in a stable, roughly causal order.
func sortedByDepth(m map[string]gomatrixserverlib.PDU) []string {
	ids := mapKeys(m)
	slices.SortFunc(ids, func(a, b string) int {
		da, db := m[a].Depth(), m[b].Depth()
		if da != db {
			return int(max(min(da-db, 1), -1))
		}
		if a < b {
			return -1
		}
		if a > b {
			return 1
		}
		return 0
	})
	return ids
}

// joinAllowedByOwnAuth checks a send_join's join event against its own
// auth events, taken from the response (byID) or from the events this
// server holds. When one is found in neither, the auth rules are not run
// on the rest (a missing join rules event would read as "invite"): the
// state check that follows still judges the join. One held as rejected,
// or of another room, refuses it.
func (s *Server) joinAllowedByOwnAuth(ctx context.Context, join gomatrixserverlib.PDU, roomID string, byID map[string]gomatrixserverlib.PDU) error {
	if listsImpliedCreate(join) {
		return mxerr.New(mxerr.Forbidden, "the join is not allowed: %s", impliedCreateReason)
	}
	var auth []gomatrixserverlib.PDU
	var missing []string
	complete := true
	for _, id := range join.AuthEventIDs() {
		if ae, ok := byID[id]; ok {
			auth = append(auth, ae)
		} else {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		held, err := s.loadEventsByID(ctx, s.db.Reader(), nil, missing)
		if err != nil {
			return err
		}
		for _, id := range missing {
			he, ok := held[id]
			if !ok {
				complete = false
				continue
			}
			if he.row.Rejected || he.row.RoomID != roomID {
				return mxerr.New(mxerr.Forbidden, "the join names auth event %s, which is rejected or of another room", id)
			}
			auth = append(auth, he.pdu)
		}
	}
	seen := map[tuple]bool{}
	for _, ae := range auth {
		if ae.StateKey() == nil {
			return mxerr.New(mxerr.Forbidden, "the join names auth event %s, which is not a state event", ae.EventID())
		}
		k := tuple{ae.Type(), *ae.StateKey()}
		if seen[k] {
			return mxerr.New(mxerr.Forbidden, "the join names two auth events for (%s, %s)", k.Type, k.StateKey)
		}
		seen[k] = true
	}
	if !complete {
		return nil
	}
	if err := allowed(join, auth); err != nil {
		return mxerr.New(mxerr.Forbidden, "the join is not allowed by its auth events: %v", err)
	}
	return nil
}
