package roomserver

// Reads for the federation API. Unlike API's reads, which answer for a
// user, these answer for a server: a server may read a room when one of
// its users is joined (or the room is world_readable), and an event when
// history visibility lets some user of that server see it.
// Spec: server-server-api, "Retrieving events" and client-server-api,
// "History visibility" (server behaviour). Security case 21.

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// serverVisibility decides what one server may see, caching per snapshot.
type serverVisibility struct {
	s      *Server
	q      storage.Querier
	server string
	// atSnapshot caches (history_visibility, best membership of the
	// server's users: "join" > "invite" > other) per snapshot.
	atSnapshot map[int64][2]string
}

func (s *Server) newServerVisibility(q storage.Querier, server string) *serverVisibility {
	return &serverVisibility{s: s, q: q, server: server, atSnapshot: map[int64][2]string{}}
}

func (v *serverVisibility) at(ctx context.Context, version string, nid int64) (hv, membership string, err error) {
	if got, ok := v.atSnapshot[nid]; ok {
		return got[0], got[1], nil
	}
	state, err := loadSnapshot(ctx, v.q, nid)
	if err != nil {
		return "", "", err
	}
	hv = "shared"
	var nids []int64
	for k, eventNID := range state {
		if k.Type == "m.room.history_visibility" && k.StateKey == "" ||
			k.Type == "m.room.member" && domainOf(k.StateKey) == v.server {
			nids = append(nids, eventNID)
		}
	}
	evs, err := v.s.loadEvents(ctx, v.q, nil, version, nids)
	if err != nil {
		return "", "", err
	}
	for _, e := range evs {
		if e.row.Type == "m.room.history_visibility" {
			if h, err := e.pdu.HistoryVisibility(); err == nil {
				hv = string(h)
			}
			continue
		}
		if m := e.row.Membership; m != nil {
			if *m == "join" || *m == "invite" && membership != "join" {
				membership = *m
			}
		}
	}
	v.atSnapshot[nid] = [2]string{hv, membership}
	return hv, membership, nil
}

// canSee: world_readable and shared history is visible to any server in
// the room; invited and joined history only to servers with a user
// invited or joined at the event.
func (v *serverVisibility) canSee(ctx context.Context, room *roomRow, e *loadedEvent) (bool, error) {
	if e.row.Rejected {
		return false, nil
	}
	nid := e.row.StateBefore
	if nid == 0 {
		// An outlier (state received on joining): its state is unknown,
		// so judge by the room's current state.
		nid = room.CurrentSnapshot
	}
	hv, membership, err := v.at(ctx, room.Version, nid)
	if err != nil {
		return false, err
	}
	switch hv {
	case "invited":
		return membership == "join" || membership == "invite", nil
	case "joined":
		return membership == "join", nil
	default: // world_readable, shared
		return true, nil
	}
}

// ServerInRoom reports whether server has a joined user in roomID or,
// while the room has partial state, was named by send_join.
func (s *Server) ServerInRoom(ctx context.Context, server, roomID string) (bool, error) {
	servers, err := s.joinedServers(ctx, roomID, true)
	return slices.Contains(servers, server), err
}

// CheckServerAccess returns nil if server may read roomID now: it has a
// joined user there or the room is world_readable. Otherwise M_FORBIDDEN
// (M_NOT_FOUND for a room we do not know).
func (s *Server) CheckServerAccess(ctx context.Context, server, roomID string) error {
	room, err := loadRoom(ctx, s.db.Reader(), roomID)
	if err != nil {
		return err
	}
	in, err := s.ServerInRoom(ctx, server, roomID)
	if err != nil || in {
		return err
	}
	// A room every local user left while its state was partial keeps
	// that partial state as its current state: the servers send_join
	// named read it as they did while it was partial
	// (partial_state_purge.go).
	if in, err := leftPartialServer(ctx, s.db.Reader(), roomID, server); err != nil || in {
		return err
	}
	hv, _, err := s.newServerVisibility(s.db.Reader(), server).at(ctx, room.Version, room.CurrentSnapshot)
	if err != nil {
		return err
	}
	if hv == "world_readable" {
		return nil
	}
	return mxerr.New(mxerr.Forbidden, "%s is not in room %s", server, roomID)
}

// JoinedServers lists the servers with a joined user in roomID, sorted,
// and, while the room has partial state, the servers send_join named.
func (s *Server) JoinedServers(ctx context.Context, roomID string) ([]string, error) {
	return s.joinedServers(ctx, roomID, true)
}

// JoinedServersInState is JoinedServers without the servers a
// partial-state room's send_join named: only those with a joined member
// in the state this server holds.
func (s *Server) JoinedServersInState(ctx context.Context, roomID string) ([]string, error) {
	return s.joinedServers(ctx, roomID, false)
}

func (s *Server) joinedServers(ctx context.Context, roomID string, withPartial bool) (out []string, err error) {
	// One snapshot for the current state and the partial-state servers
	// (see withPartialStateServers).
	err = s.read(ctx, func(q storage.Querier) error {
		users, err := storage.QueryColumn[string](ctx, q, `SELECT state_key FROM roomserver_current_state
			WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'`, roomID)
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		out = nil
		for _, u := range users {
			if d := domainOf(u); d != "" && !seen[d] {
				seen[d] = true
				out = append(out, d)
			}
		}
		if withPartial {
			out, err = withPartialStateServers(ctx, q, roomID, out, seen)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(out)
	return out, nil
}

// ServersJoinedSince lists, sorted, the servers of the users whose join
// to roomID at or after eventID (a timeline event of the room) is
// accepted: each had a member in the room at some point since eventID,
// even if that member has left again. After a partial-state resync
// (whose replay decided which of those joins stand) it names the servers
// that were in the room while it was partial.
func (s *Server) ServersJoinedSince(ctx context.Context, roomID, eventID string) ([]string, error) {
	users, err := storage.QueryColumn[string](ctx, s.db.Reader(), `SELECT DISTINCT e.state_key FROM roomserver_events e
		WHERE e.room_id = $1 AND e.type = 'm.room.member' AND e.membership = 'join'
			AND NOT e.rejected AND NOT e.soft_failed AND e.state_before != 0
			AND e.event_nid >= (SELECT j.event_nid FROM roomserver_events j WHERE j.event_id = $2 AND j.room_id = $1)`,
		roomID, eventID)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, u := range users {
		if d := domainOf(u); d != "" && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out, nil
}

// FederationEvent returns a stored, non-rejected event with its room
// version, without any visibility check (for the federation API's own
// checks and for building requests).
func (s *Server) FederationEvent(ctx context.Context, eventID string) (*Event, string, error) {
	e, version, err := s.loadByID(ctx, s.db.Reader(), eventID)
	if err != nil {
		return nil, "", err
	}
	if e.row.Rejected {
		return nil, "", mxerr.New(mxerr.NotFound, "event not found")
	}
	return toEvent(e), version, nil
}

// EventForServer returns an event for GET /event: M_NOT_FOUND if unknown
// or rejected, M_FORBIDDEN if the server may not read the room, and a
// redacted copy if history visibility hides the event from the server.
// Spec: server-server-api, "Retrieving events".
func (s *Server) EventForServer(ctx context.Context, server, eventID string) (*Event, error) {
	return s.eventForServer(ctx, server, eventID, true)
}

// eventForServer is EventForServer; an event hidden from the server is
// redacted, or without redact M_FORBIDDEN.
func (s *Server) eventForServer(ctx context.Context, server, eventID string, redact bool) (*Event, error) {
	q := s.db.Reader()
	e, _, err := s.loadByID(ctx, q, eventID)
	if err != nil {
		return nil, err
	}
	if e.row.Rejected {
		return nil, mxerr.New(mxerr.NotFound, "event not found")
	}
	room, err := loadRoom(ctx, q, e.row.RoomID)
	if err != nil {
		return nil, err
	}
	if err := s.CheckServerAccess(ctx, server, room.RoomID); err != nil {
		return nil, err
	}
	ok, err := s.newServerVisibility(q, server).canSee(ctx, room, e)
	if err != nil {
		return nil, err
	}
	if ok {
		return toEvent(e), nil
	}
	if !redact {
		return nil, mxerr.New(mxerr.Forbidden, "%s may not see event %s", server, eventID)
	}
	return redactedCopy(room.Version, e)
}

// redactedCopy is e as served to a server that history visibility hides
// it from: the redaction algorithm applied, hashes and signatures kept
// (the signatures cover the redacted form; the content hash tells the
// receiver the event was redacted).
// Spec: server-server-api, "Retrieving events" and "Redactions".
func redactedCopy(version string, e *loadedEvent) (*Event, error) {
	impl, err := roomVersion(version)
	if err != nil {
		return nil, err
	}
	redacted, err := impl.RedactEventJSON([]byte(e.row.JSON))
	if err != nil {
		return nil, fmt.Errorf("redacting %s: %w", e.row.EventID, err)
	}
	ev := toEvent(e)
	ev.JSON = redacted
	var parsed struct {
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(redacted, &parsed); err != nil {
		return nil, err
	}
	ev.Content = parsed.Content
	return ev, nil
}

// StateForServer returns the state before eventID in roomID and the auth
// chain of those state events, for GET /state and /state_ids.
func (s *Server) StateForServer(ctx context.Context, server, roomID, eventID string) (state, authChain []*Event, err error) {
	ev, err := s.eventForServer(ctx, server, eventID, false)
	if err != nil {
		return nil, nil, err
	}
	if ev.RoomID != roomID {
		return nil, nil, mxerr.New(mxerr.NotFound, "event %s is not in room %s", eventID, roomID)
	}
	// An event stored with partial state in a room whose partial state
	// was purged has no full state here: refused, as while the room was
	// partial (federationapi checks that flag). Spec: MSC3706.
	if partial, err := partialStateLeftAt(ctx, s.db.Reader(), roomID, ev.StreamPos); err != nil || partial {
		if err == nil {
			err = mxerr.New(mxerr.Forbidden, "this server has only partial state at event %s", eventID)
		}
		return nil, nil, err
	}
	return s.stateBeforeWithAuthChain(ctx, eventID)
}

func (s *Server) stateBeforeWithAuthChain(ctx context.Context, eventID string) (state, authChain []*Event, err error) {
	q := s.db.Reader()
	e, version, err := s.loadByID(ctx, q, eventID)
	if err != nil {
		return nil, nil, err
	}
	if state, err = s.snapshotEvents(ctx, q, version, e.row.StateBefore); err != nil {
		return nil, nil, err
	}
	ids := make([]string, len(state))
	for i, ev := range state {
		ids[i] = ev.EventID
	}
	authChain, err = s.AuthChain(ctx, ids)
	return state, authChain, err
}

// AuthChain returns the auth chain of the given events: their auth
// events, recursively (not the events themselves, unless one is an auth
// event of another), sorted by depth.
func (s *Server) AuthChain(ctx context.Context, eventIDs []string) ([]*Event, error) {
	q := s.db.Reader()
	seen := map[string]bool{}
	var out []*loadedEvent
	frontier := eventIDs
	start := map[string]bool{}
	for _, id := range eventIDs {
		start[id] = true
	}
	// A start event is in the chain too when another one's auth events
	// reach it (the create event always is): servers such as Dendrite
	// refuse a send_join auth_chain without the create event.
	emitted := map[string]bool{}
	for len(frontier) > 0 {
		got, err := s.loadEventsByID(ctx, q, nil, frontier)
		if err != nil {
			return nil, err
		}
		var next []string
		for _, id := range frontier {
			e, ok := got[id]
			if !ok {
				continue
			}
			if (!start[id] || seen[id]) && !emitted[id] {
				emitted[id] = true
				out = append(out, e)
			}
			for _, a := range e.pdu.AuthEventIDs() {
				if !seen[a] {
					seen[a] = true
					next = append(next, a)
				}
			}
		}
		frontier = next
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].row.Depth < out[j].row.Depth })
	evs := make([]*Event, len(out))
	for i, e := range out {
		evs[i] = toEvent(e)
	}
	return evs, nil
}

// EventAuthForServer is GET /event_auth: the auth chain of eventID.
func (s *Server) EventAuthForServer(ctx context.Context, server, roomID, eventID string) ([]*Event, error) {
	ev, err := s.EventForServer(ctx, server, eventID)
	if err != nil {
		return nil, err
	}
	if ev.RoomID != roomID {
		return nil, mxerr.New(mxerr.NotFound, "event %s is not in room %s", eventID, roomID)
	}
	return s.AuthChain(ctx, []string{eventID})
}

// walkPrev walks prev_events breadth-first from the given events, most
// recent (greatest depth) first, keeping events in roomID that server may
// see, until limit events are collected. stop lists events not to walk
// into; include says whether the start events are returned too.
func (s *Server) walkPrev(ctx context.Context, server, roomID string, from, stop []string, limit int, minDepth int64, include bool) ([]*Event, error) {
	if limit <= 0 {
		return nil, nil
	}
	q := s.db.Reader()
	room, err := loadRoom(ctx, q, roomID)
	if err != nil {
		return nil, err
	}
	vis := s.newServerVisibility(q, server)
	seen := map[string]bool{}
	for _, id := range stop {
		seen[id] = true
	}
	var out []*Event
	var queue []*loadedEvent
	got, err := s.loadEventsByID(ctx, q, nil, from)
	if err != nil {
		return nil, err
	}
	for _, id := range from {
		e, ok := got[id]
		// Security case 11: never walk from an event of another room.
		if !ok || e.row.RoomID != roomID || seen[id] {
			continue
		}
		seen[id] = true
		if include {
			queue = append(queue, e)
		} else {
			for _, p := range e.pdu.PrevEventIDs() {
				if !seen[p] {
					seen[p] = true
					queue = append(queue, &loadedEvent{row: &eventRow{EventID: p}})
				}
			}
		}
	}
	for len(queue) > 0 && len(out) < limit {
		// Load the placeholders.
		var ids []string
		for _, e := range queue {
			if e.pdu == nil {
				ids = append(ids, e.row.EventID)
			}
		}
		loaded, err := s.loadEventsByID(ctx, q, nil, ids)
		if err != nil {
			return nil, err
		}
		var level []*loadedEvent
		for _, e := range queue {
			if e.pdu == nil {
				if e = loaded[e.row.EventID]; e == nil {
					continue
				}
			}
			if e.row.RoomID != roomID || e.row.Depth < minDepth {
				continue
			}
			level = append(level, e)
		}
		sort.SliceStable(level, func(i, j int) bool { return level[i].row.Depth > level[j].row.Depth })
		queue = nil
		for _, e := range level {
			if len(out) >= limit {
				break
			}
			ok, err := vis.canSee(ctx, room, e)
			if err != nil {
				return nil, err
			}
			if ok {
				out = append(out, toEvent(e))
			} else if !e.row.Rejected {
				// Hidden by history visibility: a redacted copy keeps the
				// DAG walkable. Spec: server-server-api, "Retrieving events".
				red, err := redactedCopy(room.Version, e)
				if err != nil {
					return nil, err
				}
				out = append(out, red)
			}
			for _, p := range e.pdu.PrevEventIDs() {
				if !seen[p] {
					seen[p] = true
					queue = append(queue, &loadedEvent{row: &eventRow{EventID: p}})
				}
			}
		}
	}
	return out, nil
}

// BackfillForServer is GET /backfill: up to limit events before and
// including from, most recent first.
func (s *Server) BackfillForServer(ctx context.Context, server, roomID string, from []string, limit int) ([]*Event, error) {
	if err := s.CheckServerAccess(ctx, server, roomID); err != nil {
		return nil, err
	}
	return s.walkPrev(ctx, server, roomID, from, nil, min(limit, 1000), 0, true)
}

// MissingEventsForServer is POST /get_missing_events: events before
// latest and after earliest, oldest first.
func (s *Server) MissingEventsForServer(ctx context.Context, server, roomID string, earliest, latest []string, limit int, minDepth int64) ([]*Event, error) {
	if err := s.CheckServerAccess(ctx, server, roomID); err != nil {
		return nil, err
	}
	out, err := s.walkPrev(ctx, server, roomID, latest, earliest, min(limit, 1000), minDepth, false)
	if err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Depth < out[j].Depth })
	return out, nil
}

// EventNearTimestamp finds the closest non-rejected, visible-to-server
// timeline event at or after (Forward) or at or before (Backward) ts.
// Spec: server-server-api, "GET /timestamp_to_event".
func (s *Server) EventNearTimestamp(ctx context.Context, server, roomID string, ts int64, dir Direction) (*Event, error) {
	if err := s.CheckServerAccess(ctx, server, roomID); err != nil {
		return nil, err
	}
	q := s.db.Reader()
	room, err := loadRoom(ctx, q, roomID)
	if err != nil {
		return nil, err
	}
	query := `SELECT ` + eventColumns + ` FROM roomserver_events WHERE room_id = $1 AND NOT rejected AND NOT soft_failed AND `
	if dir == Forward {
		query += `origin_server_ts >= $2 ORDER BY origin_server_ts, depth, event_nid LIMIT 50`
	} else {
		query += `origin_server_ts <= $2 ORDER BY origin_server_ts DESC, depth DESC, event_nid DESC LIMIT 50`
	}
	rows, err := queryEventRows(ctx, q, query, roomID, ts)
	if err != nil {
		return nil, err
	}
	vis := s.newServerVisibility(q, server)
	for _, r := range rows {
		evs, err := s.loadEvents(ctx, q, nil, room.Version, []int64{r.NID})
		if err != nil {
			return nil, err
		}
		if ok, err := vis.canSee(ctx, room, evs[0]); err != nil {
			return nil, err
		} else if ok {
			return toEvent(evs[0]), nil
		}
	}
	return nil, mxerr.New(mxerr.NotFound, "no event found")
}

// RoomStateEvent returns one current state event of roomID without a
// visibility check (server ACLs, join rules), M_NOT_FOUND if absent.
func (s *Server) RoomStateEvent(ctx context.Context, roomID, eventType, stateKey string) (*Event, error) {
	q := s.db.Reader()
	room, err := loadRoom(ctx, q, roomID)
	if err != nil {
		return nil, err
	}
	k := tuple{eventType, stateKey}
	picked, err := currentStateNIDs(ctx, q, roomID, []tuple{k})
	if err != nil {
		return nil, err
	}
	nid, ok := picked[k]
	if !ok {
		return nil, mxerr.New(mxerr.NotFound, "no %s state", eventType)
	}
	evs, err := s.loadEvents(ctx, q, nil, room.Version, []int64{nid})
	if err != nil {
		return nil, err
	}
	return toEvent(evs[0]), nil
}

// Extremities returns roomID's forward extremities.
func (s *Server) Extremities(ctx context.Context, roomID string) ([]string, error) {
	room, err := loadRoom(ctx, s.db.Reader(), roomID)
	if err != nil {
		return nil, err
	}
	return room.Extremities, nil
}

// OutboundEvent is a local event to send to other servers.
type OutboundEvent struct {
	Pos          int64
	RoomID       string
	JSON         json.RawMessage
	Destinations []string
}

// LocalEventsAfter reads the timeline events sent by local users at
// stream positions after pos (at most limit rows read), with the servers
// each must go to: those with a joined user in the state after the
// event, plus the target's server for membership events, minus this
// server.
// An event of ours is only ever stored accepted (a local send that fails
// the auth rules is refused, not stored), so one marked rejected was
// rejected later, by a partial-state resync's re-check against the full
// state (partial_state_replay.go). It is still sent: it was acknowledged
// to its sender, later events of ours name it as a prev event, and other
// servers run their own checks on it (server-server-api, "Checks
// performed on receipt of a PDU"); withholding it would make its fate
// depend on whether the sender had read it before the resync landed.
// A local user's join into a room where no user of ours was joined
// before it went through make_join/send_join (a local join needs a
// joined local user; see clientapi heldHere): the resident server
// already has it and sends it to the rest of the room, so it goes
// nowhere; so do a local user's join or knock through a resident server
// into a room held here with partial state (InputEventRequest.Delivered).
// Spec: server-server-api, "Joining Rooms".
// end is the position read up to, which advances past filtered rows.
func (s *Server) LocalEventsAfter(ctx context.Context, pos int64, limit int) (out []*OutboundEvent, end int64, err error) {
	// One read snapshot: a partial-state resync that commits between the
	// read of the events (with their partial state) and the read of the
	// servers send_join named (deleted by that commit) would otherwise
	// leave the events with no destination, and the sender would move
	// past them for good (partial_state_outbound_test.go).
	err = s.read(ctx, func(q storage.Querier) error {
		out, end, err = s.localEventsAfter(ctx, q, pos, limit)
		return err
	})
	if err != nil {
		return nil, pos, err
	}
	return out, end, nil
}

func (s *Server) localEventsAfter(ctx context.Context, q storage.Querier, pos int64, limit int) (out []*OutboundEvent, end int64, err error) {
	end = pos
	rows, err := queryEventRows(ctx, q, `SELECT `+eventColumns+` FROM roomserver_events
		WHERE event_nid > $1 ORDER BY event_nid LIMIT $2`, pos, limit)
	if err != nil {
		return nil, pos, err
	}
	if s.afterOutboundRead != nil {
		s.afterOutboundRead()
	}
	delivered := map[int64]bool{}
	if len(rows) > 0 {
		nids, err := storage.QueryColumn[int64](ctx, q, `SELECT event_nid FROM roomserver_delivered_events
			WHERE event_nid > $1 AND event_nid <= $2`, pos, rows[len(rows)-1].NID)
		if err != nil {
			return nil, pos, err
		}
		for _, nid := range nids {
			delivered[nid] = true
		}
	}
	servers := map[int64][]string{} // snapshot -> joined servers
	joinedAt := func(snapshot int64) ([]string, error) {
		if joined, ok := servers[snapshot]; ok {
			return joined, nil
		}
		state, err := loadSnapshot(ctx, q, snapshot)
		if err != nil {
			return nil, err
		}
		var nids []int64
		for k, nid := range state {
			if k.Type == "m.room.member" {
				nids = append(nids, nid)
			}
		}
		members, err := eventRowsByNID(ctx, q, nids)
		if err != nil {
			return nil, err
		}
		joined := []string{}
		seen := map[string]bool{}
		for _, m := range members {
			if m.Membership != nil && *m.Membership == "join" && m.StateKey != nil {
				if d := domainOf(*m.StateKey); !seen[d] {
					seen[d] = true
					joined = append(joined, d)
				}
			}
		}
		servers[snapshot] = joined
		return joined, nil
	}
	for _, r := range rows {
		end = r.NID
		if r.SoftFailed || domainOf(r.Sender) != string(s.serverName) || delivered[r.NID] {
			continue // outliers, events of other servers, and those a resident server took
		}
		if r.Type == "m.room.member" && r.Membership != nil && *r.Membership == "join" && r.StateKey != nil && *r.StateKey == r.Sender {
			before, err := joinedAt(r.StateBefore)
			if err != nil {
				return nil, pos, err
			}
			if !slices.Contains(before, string(s.serverName)) {
				continue // joined through send_join
			}
		}
		joined, err := joinedAt(r.StateAfter)
		if err != nil {
			return nil, pos, err
		}
		dests := append([]string{}, joined...)
		if r.Type == "m.room.member" && r.StateKey != nil {
			dests = append(dests, domainOf(*r.StateKey))
		}
		ev := &OutboundEvent{Pos: r.NID, RoomID: r.RoomID, JSON: json.RawMessage(r.JSON)}
		seen := map[string]bool{string(s.serverName): true}
		for _, d := range dests {
			if d != "" && !seen[d] {
				seen[d] = true
				ev.Destinations = append(ev.Destinations, d)
			}
		}
		if ev.Destinations, err = withPartialStateServers(ctx, q, r.RoomID, ev.Destinations, seen); err != nil {
			return nil, pos, err
		}
		sort.Strings(ev.Destinations)
		if len(ev.Destinations) > 0 {
			out = append(out, ev)
		}
	}
	return out, end, nil
}

// EventsByPosition returns the JSON of the events at the given stream
// positions (for resending queued PDUs), in the order given.
func (s *Server) EventsByPosition(ctx context.Context, positions []int64) ([]json.RawMessage, error) {
	rows, err := eventRowsByNID(ctx, s.db.Reader(), positions)
	if err != nil {
		return nil, err
	}
	out := make([]json.RawMessage, len(rows))
	for i, r := range rows {
		out[i] = json.RawMessage(r.JSON)
	}
	return out, nil
}
