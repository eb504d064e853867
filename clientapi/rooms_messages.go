package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// Pagination limits for /messages and /context.
const (
	defaultPageLimit = 10
	maxPageLimit     = 1000
	// maxFilteredPages bounds how many roomserver pages one /messages call
	// reads while a filter discards events, so a filter that matches
	// nothing cannot make one request scan a whole room.
	maxFilteredPages = 20
)

// topoToken is a position in a room's topological order, as the
// roomserver writes it ("t<depth>_<stream>", roomserver.MessagesRequest):
// clientapi reads it to stop at a `to` token and makes one for an event
// to paginate around it (/context).
type topoToken struct{ depth, stream int64 }

func (t topoToken) String() string {
	return "t" + strconv.FormatInt(t.depth, 10) + "_" + strconv.FormatInt(t.stream, 10)
}

func parseTopoToken(s string) (topoToken, bool) {
	rest, ok := strings.CutPrefix(s, "t")
	d, st, ok2 := strings.Cut(rest, "_")
	if !ok || !ok2 {
		return topoToken{}, false
	}
	depth, err1 := strconv.ParseInt(d, 10, 64)
	stream, err2 := strconv.ParseInt(st, 10, 64)
	if err1 != nil || err2 != nil {
		return topoToken{}, false
	}
	return topoToken{depth, stream}, true
}

// syncTokenRoomPos reads the room stream position out of a /sync
// next_batch token: "s<room position>_<other streams>..." (syncapi's
// syncToken; the room position is the roomserver stream, the event
// stream positions of roomserver.Event.StreamPos). The spec lets clients
// pass that token as from/to of /messages and /relations and as at of
// /members.
func syncTokenRoomPos(s string) (int64, bool) {
	rest, ok := strings.CutPrefix(s, "s")
	if !ok {
		return 0, false
	}
	first, _, _ := strings.Cut(rest, "_")
	n, err := strconv.ParseInt(first, 10, 64)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != first {
		return 0, false
	}
	return n, true
}

// paginationToken turns a from/to/at token into a topological one: a
// /messages token as is, a /sync token into the position of roomID's
// timeline at that stream position, for paging in direction dir. ok is
// false for anything else.
func (s *Server) paginationToken(ctx context.Context, roomID, token string, dir roomserver.Direction) (string, bool, error) {
	if _, ok := parseTopoToken(token); ok {
		return token, true, nil
	}
	pos, ok := syncTokenRoomPos(token)
	if !ok {
		return "", false, nil
	}
	t, err := s.rooms.rooms.TopologicalTokenAt(ctx, roomID, pos, dir)
	return t, err == nil, err
}

// tokenOf is the position of an event itself.
func tokenOf(ev *roomserver.Event) topoToken { return topoToken{ev.Depth, ev.StreamPos} }

// before reports whether t comes before u in topological order.
func (t topoToken) before(u topoToken) bool {
	return t.depth < u.depth || t.depth == u.depth && t.stream < u.stream
}

// roomEventFilter parses the filter query parameter of /messages and
// /context: a JSON RoomEventFilter, validated like the filters of POST
// /filter. Spec: client-server-api, "Filtering".
func roomEventFilter(r *http.Request) (*RoomEventFilter, error) {
	raw := r.URL.Query().Get("filter")
	if raw == "" {
		return nil, nil
	}
	var f RoomEventFilter
	if err := httpx.Unmarshal([]byte(raw), &f); err != nil {
		return nil, err
	}
	if err := f.validate("filter"); err != nil {
		return nil, err
	}
	return &f, nil
}

// matches reports whether ev passes the filter (nil passes everything).
func (f *RoomEventFilter) matches(ev *roomserver.Event) bool {
	if f == nil {
		return true
	}
	if f.Rooms != nil && !contains(f.Rooms, ev.RoomID) || contains(f.NotRooms, ev.RoomID) {
		return false
	}
	if f.Senders != nil && !contains(f.Senders, ev.Sender) || contains(f.NotSenders, ev.Sender) {
		return false
	}
	if f.Types != nil && !matchesAnyType(f.Types, ev.Type) || matchesAnyType(f.NotTypes, ev.Type) {
		return false
	}
	if f.ContainsURL != nil {
		var c struct {
			URL any `json:"url"`
		}
		_ = json.Unmarshal(ev.Content, &c)
		if (c.URL != nil) != *f.ContainsURL {
			return false
		}
	}
	return f.RelTypeAllows(ev.Content)
}

// matchesAnyType matches event types against patterns where '*' stands
// for any run of characters. Spec: client-server-api, "Filtering",
// EventFilter.types.
func matchesAnyType(patterns []string, t string) bool {
	for _, p := range patterns {
		if p == t {
			return true
		}
		if strings.Contains(p, "*") && wildcardMatch(p, t) {
			return true
		}
	}
	return false
}

// wildcardMatch matches p against t with '*' standing for any run of
// characters.
func wildcardMatch(p, t string) bool {
	parts := strings.Split(p, "*")
	if !strings.HasPrefix(t, parts[0]) {
		return false
	}
	t = t[len(parts[0]):]
	for i, part := range parts[1:] {
		if i == len(parts)-2 {
			return strings.HasSuffix(t, part)
		}
		idx := strings.Index(t, part)
		if idx < 0 {
			return false
		}
		t = t[idx+len(part):]
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// pageLimit reads the limit query parameter.
func pageLimit(r *http.Request) (int, error) {
	raw := r.URL.Query().Get("limit")
	if raw == "" {
		return defaultPageLimit, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 0 {
		return 0, mxerr.New(mxerr.InvalidParam, "limit must be a non-negative integer")
	}
	return min(n, maxPageLimit), nil
}

// page is one /messages answer before rendering.
type page struct {
	events []*roomserver.Event
	start  string
	end    string // "" when there is nothing further
}

// paginate reads up to limit events matching filter from token in
// direction dir, stopping at to (a token, "" for none).
func (s *Server) paginate(ctx context.Context, userID, roomID, from, to string, dir roomserver.Direction, limit int, filter *RoomEventFilter) (*page, error) {
	out := &page{start: from}
	stop, hasStop := parseTopoToken(to)
	token := from
	for i := 0; i < maxFilteredPages && len(out.events) < limit; i++ {
		got, err := s.rooms.rooms.Messages(ctx, roomserver.MessagesRequest{
			UserID: userID, RoomID: roomID, From: token, Dir: dir, Limit: limit - len(out.events),
		})
		if err != nil {
			return nil, err
		}
		if out.start == "" {
			out.start = got.Start
		}
		if got.End == got.Start {
			return out, nil // nothing read: the end of the timeline
		}
		for _, ev := range got.Events {
			if hasStop && (dir == roomserver.Backward && !stop.before(tokenOf(ev)) || dir == roomserver.Forward && !tokenOf(ev).before(stop)) {
				return out, nil // reached `to`
			}
			if filter.matches(ev) {
				out.events = append(out.events, ev)
			}
		}
		token = got.End
	}
	out.end = token
	if len(out.events) == limit {
		// A full page: look one event further so the last page of a room
		// has no end token.
		probe, err := s.rooms.rooms.Messages(ctx, roomserver.MessagesRequest{UserID: userID, RoomID: roomID, From: token, Dir: dir, Limit: 1})
		if err != nil {
			return nil, err
		}
		if probe.End == probe.Start {
			out.end = ""
		}
	}
	return out, nil
}

// messages pages through a room's timeline.
// Spec: client-server-api, "GET /_matrix/client/v3/rooms/{roomId}/messages".
func (s *Server) messages(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	me := caller(r)
	// Access first, so a caller who may not read the room learns nothing
	// from parameter errors (Complement: "Forgotten room messages cannot
	// be paginated" sends no dir and wants 403).
	if err := s.requireReadable(ctx, me.UserID, roomID); err != nil {
		return err
	}
	q := r.URL.Query()
	var dir roomserver.Direction
	switch q.Get("dir") {
	case "b":
		dir = roomserver.Backward
	case "f":
		dir = roomserver.Forward
	case "":
		return mxerr.New(mxerr.MissingParam, "dir is required")
	default:
		return mxerr.New(mxerr.InvalidParam, "dir must be b or f")
	}
	limit, err := pageLimit(r)
	if err != nil {
		return err
	}
	filter, err := roomEventFilter(r)
	if err != nil {
		return err
	}
	if filter != nil && filter.Limit != nil && *filter.Limit < limit {
		limit = *filter.Limit
	}
	// Spec: from "can be a prev_batch or next_batch token returned by
	// /sync, or a start or end token from a previous request"; to, the
	// other way, stops there. A /sync token as `to` stops after the
	// events up to its position either way, which is the position a
	// backwards page from it starts at.
	tokens := map[string]string{}
	for name, tdir := range map[string]roomserver.Direction{"from": dir, "to": roomserver.Backward} {
		if t := q.Get(name); t != "" {
			topo, ok, err := s.paginationToken(ctx, roomID, t, tdir)
			if err != nil {
				return err
			}
			if !ok {
				return mxerr.New(mxerr.InvalidParam, "%s is not a valid pagination token", name)
			}
			tokens[name] = topo
		}
	}
	p, err := s.paginate(ctx, me.UserID, roomID, tokens["from"], tokens["to"], dir, limit, filter)
	if err != nil {
		return err
	}
	f := s.formatter(me.UserID, me.DeviceID)
	chunk, err := f.many(ctx, p.events)
	if err != nil {
		return err
	}
	body := map[string]any{"start": p.start, "chunk": chunk}
	if p.end != "" {
		body["end"] = p.end
	}
	if filter != nil && filter.LazyLoadMembers {
		state, err := s.senderMembers(ctx, me.UserID, roomID, p.events)
		if err != nil {
			return err
		}
		if body["state"], err = f.many(ctx, state); err != nil {
			return err
		}
	}
	return httpx.OK(w, body)
}

// requireReadable answers M_FORBIDDEN unless userID may read roomID's
// history: members, former members who have not forgotten the room, and
// anyone in a world-readable room. A room this server does not know is
// M_FORBIDDEN too, so room existence does not leak.
// Spec: client-server-api, "GET /rooms/{roomId}/messages" (403 "You
// aren't a member of the room") and "POST /rooms/{roomId}/forget" (after
// it "a user will no longer be able to retrieve history for this room").
func (s *Server) requireReadable(ctx context.Context, userID, roomID string) error {
	if _, err := s.rooms.rooms.RoomVersion(ctx, roomID); mxerr.Is(err, mxerr.NotFound) {
		return mxerr.New(mxerr.Forbidden, "you are not a member of room %s", roomID)
	} else if err != nil {
		return err
	}
	_, err := s.rooms.rooms.CurrentStateEvent(ctx, userID, roomID, "m.room.create", "")
	return err
}

// senderMembers returns the current m.room.member events of the senders
// of evs, for lazy-loading members.
// Spec: client-server-api, "Lazy-loading room members".
func (s *Server) senderMembers(ctx context.Context, userID, roomID string, evs []*roomserver.Event) ([]*roomserver.Event, error) {
	seen := map[string]bool{}
	var out []*roomserver.Event
	for _, ev := range evs {
		if seen[ev.Sender] {
			continue
		}
		seen[ev.Sender] = true
		m, err := s.rooms.rooms.CurrentStateEvent(ctx, userID, roomID, "m.room.member", ev.Sender)
		if mxerr.Is(err, mxerr.NotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// eventContext answers with an event and the events around it.
// Spec: client-server-api, "GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}".
func (s *Server) eventContext(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, eventID, err := pathRoomEventIDs(r)
	if err != nil {
		return err
	}
	limit, err := pageLimit(r)
	if err != nil {
		return err
	}
	filter, err := roomEventFilter(r)
	if err != nil {
		return err
	}
	me := caller(r)
	ev, err := s.visibleEvent(ctx, me.UserID, roomID, eventID)
	if err != nil {
		return err
	}
	at := tokenOf(ev).String()
	beforeLimit := limit / 2
	before, err := s.paginate(ctx, me.UserID, roomID, at, "", roomserver.Backward, beforeLimit, filter)
	if err != nil {
		return err
	}
	after, err := s.paginate(ctx, me.UserID, roomID, at, "", roomserver.Forward, limit-beforeLimit, filter)
	if err != nil {
		return err
	}
	f := s.formatter(me.UserID, me.DeviceID)
	body := map[string]any{}
	if body["event"], err = f.one(ctx, ev); err != nil {
		return err
	}
	if body["events_before"], err = f.many(ctx, before.events); err != nil {
		return err
	}
	if body["events_after"], err = f.many(ctx, after.events); err != nil {
		return err
	}
	// Tokens to continue from: past the last event returned each way, or
	// the event itself when nothing was returned.
	body["start"], body["end"] = at, at
	if before.end != "" {
		body["start"] = before.end
	} else if n := len(before.events); n > 0 {
		body["start"] = tokenOf(before.events[n-1]).String()
	}
	if after.end != "" {
		body["end"] = after.end
	} else if n := len(after.events); n > 0 {
		body["end"] = tokenOf(after.events[n-1]).String()
	}
	// "The state of the room at the last event returned."
	last := ev
	if n := len(after.events); n > 0 {
		last = after.events[n-1]
	}
	stateAt, err := s.rooms.rooms.StateAt(ctx, me.UserID, last.EventID)
	if err != nil {
		return err
	}
	var state []*roomserver.Event
	if filter != nil && filter.LazyLoadMembers {
		senders := map[string]bool{ev.Sender: true}
		for _, e := range append(before.events, after.events...) {
			senders[e.Sender] = true
		}
		for _, e := range stateAt.After {
			if e.Type != "m.room.member" || e.StateKey != nil && senders[*e.StateKey] {
				state = append(state, e)
			}
		}
	} else {
		state = stateAt.After
	}
	var kept []*roomserver.Event
	for _, e := range state {
		if filter.matches(e) {
			kept = append(kept, e)
		}
	}
	if body["state"], err = f.many(ctx, kept); err != nil {
		return err
	}
	return httpx.OK(w, body)
}

// timestampToEvent finds the event closest to a timestamp.
// Spec: client-server-api, "GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event".
func (s *Server) timestampToEvent(w http.ResponseWriter, r *http.Request) error {
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	if q.Get("ts") == "" {
		return mxerr.New(mxerr.MissingParam, "ts is required")
	}
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil {
		return mxerr.New(mxerr.InvalidParam, "ts must be an integer")
	}
	var dir roomserver.Direction
	switch q.Get("dir") {
	case "f":
		dir = roomserver.Forward
	case "b":
		dir = roomserver.Backward
	case "":
		return mxerr.New(mxerr.MissingParam, "dir is required")
	default:
		return mxerr.New(mxerr.InvalidParam, "dir must be f or b")
	}
	// Spec: timestamp_to_event, like /messages, is for users who may read
	// the room; others get 403 (Complement: TestJumpToDateEndpoint "should
	// not be able to query a private/public room you are not a member of").
	if err := s.requireReadable(r.Context(), caller(r).UserID, roomID); err != nil {
		return err
	}
	ev, err := s.rooms.rooms.EventAtTimestamp(r.Context(), caller(r).UserID, roomID, ts, dir)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"event_id": ev.EventID, "origin_server_ts": ev.OriginServerTS})
}
