package clientapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// Relations limits.
const (
	defaultRelationsLimit = 50
	maxRelationsLimit     = 500
	// maxRecursionDepth is how deep ?recurse=true follows relations.
	// Spec: "servers should ... recurse to at least 3 levels".
	maxRecursionDepth = 3
)

func (s *Server) relationRoutes(r chi.Router) {
	const v1 = "/_matrix/client/v1/rooms/{roomId}"
	handle(r, http.MethodGet, v1+"/relations/{eventId}", s.relations)
	handle(r, http.MethodGet, v1+"/relations/{eventId}/{relType}", s.relations)
	handle(r, http.MethodGet, v1+"/relations/{eventId}/{relType}/{eventType}", s.relations)
	handle(r, http.MethodGet, v1+"/threads", s.threads)
}

// streamToken is a relations/threads pagination token: "r<stream pos>".
func streamToken(pos int64) string { return "r" + strconv.FormatInt(pos, 10) }

func parseStreamToken(name, s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	// A /sync next_batch or a /messages token also names a stream
	// position. Spec: GET /rooms/{roomId}/relations/...: from "can be a
	// next_batch or prev_batch token from a previous call, or a returned
	// start token from /messages, or a next_batch token from /sync".
	// Complement: TestRelationsPaginationSync.
	if pos, ok := syncTokenRoomPos(s); ok {
		return pos, nil
	}
	if t, ok := parseTopoToken(s); ok && t.stream > 0 {
		return t.stream, nil
	}
	n, err := strconv.ParseInt(strings.TrimPrefix(s, "r"), 10, 64)
	if err != nil || !strings.HasPrefix(s, "r") || n <= 0 {
		return 0, mxerr.New(mxerr.InvalidParam, "%s is not a valid token", name)
	}
	return n, nil
}

// relations lists the events relating to one event.
// Spec: client-server-api, "GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}".
func (s *Server) relations(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, eventID, err := pathRoomEventIDs(r)
	if err != nil {
		return err
	}
	q := relationsQuery{RoomID: roomID, Limit: defaultRelationsLimit}
	if q.RelType, err = unescapedParam(r, "relType"); err != nil {
		return err
	}
	if q.EventType, err = unescapedParam(r, "eventType"); err != nil {
		return err
	}
	v := r.URL.Query()
	if q.From, err = parseStreamToken("from", v.Get("from")); err != nil {
		return err
	}
	if q.To, err = parseStreamToken("to", v.Get("to")); err != nil {
		return err
	}
	switch v.Get("dir") {
	case "", "b":
	case "f":
		q.Forward = true
	default:
		return mxerr.New(mxerr.InvalidParam, "dir must be b or f")
	}
	if raw := v.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 {
			return mxerr.New(mxerr.InvalidParam, "limit must be a positive integer")
		}
		q.Limit = min(n, maxRelationsLimit)
	}
	recurse := false
	switch v.Get("recurse") {
	case "", "false":
	case "true":
		recurse = true
	default:
		return mxerr.New(mxerr.InvalidParam, "recurse must be true or false")
	}
	me := caller(r)
	if _, err := s.visibleEvent(ctx, me.UserID, roomID, eventID); err != nil {
		return err
	}
	if err := s.rooms.relations.catchUp(ctx); err != nil {
		return err
	}
	// Read one extra row to know whether there is a next page.
	want := q.Limit
	q.Limit = want + 1
	rels, depth, err := s.relationTree(ctx, q, eventID, recurse)
	if err != nil {
		return err
	}
	body := map[string]any{}
	if len(rels) > want {
		rels = rels[:want]
		body["next_batch"] = streamToken(rels[want-1].StreamPos)
	}
	if v.Get("from") != "" {
		body["prev_batch"] = v.Get("from")
	}
	if recurse {
		body["recursion_depth"] = depth
	}
	events, err := s.visibleEvents(ctx, me.UserID, rels)
	if err != nil {
		return err
	}
	if body["chunk"], err = s.formatter(me.UserID, me.DeviceID).many(ctx, events); err != nil {
		return err
	}
	return httpx.OK(w, body)
}

// relationTree reads the children of eventID and, when recurse is set,
// their children, up to maxRecursionDepth levels, merged in stream
// order. It returns how deep it went.
func (s *Server) relationTree(ctx context.Context, q relationsQuery, eventID string, recurse bool) ([]relation, int, error) {
	if !recurse {
		rels, err := s.children(ctx, q, []string{eventID})
		return rels, 1, err
	}
	// The filters apply to every level; collect every level's matches,
	// then order and cut once.
	var all []relation
	parents := []string{eventID}
	depth := 0
	unfiltered := q
	unfiltered.RelType, unfiltered.EventType = "", ""
	for depth < maxRecursionDepth && len(parents) > 0 {
		depth++
		matched, err := s.children(ctx, q, parents)
		if err != nil {
			return nil, 0, err
		}
		all = append(all, matched...)
		next, err := s.children(ctx, unfiltered, parents)
		if err != nil {
			return nil, 0, err
		}
		parents = parents[:0]
		for _, r := range next {
			parents = append(parents, r.EventID)
		}
	}
	sortRelations(all, q.Forward)
	if len(all) > q.Limit {
		all = all[:q.Limit]
	}
	return all, depth, nil
}

func sortRelations(rels []relation, forward bool) {
	for i := 1; i < len(rels); i++ {
		for j := i; j > 0; j-- {
			a, b := rels[j-1].StreamPos, rels[j].StreamPos
			if forward && a > b || !forward && a < b {
				rels[j-1], rels[j] = rels[j], rels[j-1]
			} else {
				break
			}
		}
	}
}

// visibleEvents loads the events of rels that userID may see.
func (s *Server) visibleEvents(ctx context.Context, userID string, rels []relation) ([]*roomserver.Event, error) {
	var out []*roomserver.Event
	for _, rel := range rels {
		ev, err := s.rooms.rooms.Event(ctx, userID, rel.EventID)
		if mxerr.Is(err, mxerr.NotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// threads lists a room's threads, most recently active first.
// Spec: client-server-api, "GET /_matrix/client/v1/rooms/{roomId}/threads".
func (s *Server) threads(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	v := r.URL.Query()
	me := caller(r)
	participant := ""
	switch v.Get("include") {
	case "", "all":
	case "participated":
		participant = me.UserID
	default:
		return mxerr.New(mxerr.InvalidParam, "include must be all or participated")
	}
	limit := defaultRelationsLimit
	if raw := v.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 {
			return mxerr.New(mxerr.InvalidParam, "limit must be a positive integer")
		}
		limit = min(n, maxRelationsLimit)
	}
	before, err := parseStreamToken("from", v.Get("from"))
	if err != nil {
		return err
	}
	if err := s.requireJoinedOrWorldReadable(ctx, roomID, me.UserID); err != nil {
		if m, _ := s.rooms.rooms.Membership(ctx, roomID, me.UserID); m == "" {
			return err
		}
		// Former members may list the threads they can see.
	}
	if err := s.rooms.relations.catchUp(ctx); err != nil {
		return err
	}
	roots, err := s.threadRoots(ctx, roomID, participant, before, limit+1)
	if err != nil {
		return err
	}
	body := map[string]any{}
	if len(roots) > limit {
		roots = roots[:limit]
		body["next_batch"] = streamToken(roots[limit-1].LatestPos)
	}
	var events []*roomserver.Event
	for _, t := range roots {
		ev, err := s.rooms.rooms.Event(ctx, me.UserID, t.RootID)
		if mxerr.Is(err, mxerr.NotFound) {
			continue
		}
		if err != nil {
			return err
		}
		events = append(events, ev)
	}
	if body["chunk"], err = s.formatter(me.UserID, me.DeviceID).many(ctx, events); err != nil {
		return err
	}
	return httpx.OK(w, body)
}

// BundledAggregations is bundledAggregations for another component's
// rendering of events to userID's device deviceID (sync): the content
// of unsigned.m.relations by event ID, for the events that have any.
func (s *Server) BundledAggregations(ctx context.Context, userID, deviceID string, evs []*roomserver.Event) (map[string]json.RawMessage, error) {
	return s.formatter(userID, deviceID).bundledAggregations(ctx, evs)
}

// CatchUpAggregations catches the relations index up to the room
// stream's head, for a sync that reads bundled aggregations later.
func (s *Server) CatchUpAggregations(ctx context.Context) error {
	return s.rooms.relations.catchUp(ctx)
}

// bundledAggregations computes unsigned.m.relations for evs: m.thread
// (latest_event, count, current_user_participated), m.replace (the most
// recent valid edit) and m.reference (the referencing event IDs).
// Spec: client-server-api, "Aggregations of child events".
func (f *eventFormatter) bundledAggregations(ctx context.Context, evs []*roomserver.Event) (map[string]json.RawMessage, error) {
	s := f.s
	if err := s.rooms.relations.catchUp(ctx); err != nil {
		return nil, err
	}
	byRoom := map[string][]*roomserver.Event{}
	for _, ev := range evs {
		byRoom[ev.RoomID] = append(byRoom[ev.RoomID], ev)
	}
	const limit = 10000
	var relsByRoom map[string][]relation
	if len(byRoom) > 1 {
		// Many rooms (an initial /sync): their relations in one read.
		idsByRoom := make(map[string][]string, len(byRoom))
		for roomID, roomEvents := range byRoom {
			for _, ev := range roomEvents {
				idsByRoom[roomID] = append(idsByRoom[roomID], ev.EventID)
			}
		}
		var err error
		if relsByRoom, err = s.childrenOfRooms(ctx, idsByRoom, limit); err != nil {
			return nil, err
		}
	}
	out := map[string]json.RawMessage{}
	for roomID, roomEvents := range byRoom {
		if relsByRoom != nil && len(relsByRoom[roomID]) == 0 {
			// No child of any of the room's events: nothing to bundle
			// (most rooms of an initial /sync), so their contents are
			// not decoded for latestEdit.
			continue
		}
		ids := make([]string, len(roomEvents))
		byID := map[string]*roomserver.Event{}
		for i, ev := range roomEvents {
			ids[i] = ev.EventID
			byID[ev.EventID] = ev
		}
		rels := relsByRoom[roomID]
		if relsByRoom == nil {
			var err error
			if rels, err = s.children(ctx, relationsQuery{RoomID: roomID, Forward: true, Limit: limit}, ids); err != nil {
				return nil, err
			}
		}
		agg := map[string]map[string]any{}
		threads := map[string][]relation{}
		for _, rel := range rels {
			switch rel.RelType {
			case "m.thread":
				threads[rel.RelatesTo] = append(threads[rel.RelatesTo], rel)
			case "m.reference":
				if ok, err := s.rooms.rooms.CanSee(ctx, f.userID, rel.EventID); err != nil {
					return nil, err
				} else if ok {
					a := aggregationFor(agg, rel.RelatesTo)
					ref, _ := a["m.reference"].(map[string]any)
					if ref == nil {
						ref = map[string]any{"chunk": []map[string]string{}}
						a["m.reference"] = ref
					}
					ref["chunk"] = append(ref["chunk"].([]map[string]string), map[string]string{"event_id": rel.EventID})
				}
			}
		}
		for parentID, replies := range threads {
			thread, err := f.threadAggregation(ctx, byID[parentID], replies)
			if err != nil {
				return nil, err
			}
			if thread != nil {
				aggregationFor(agg, parentID)["m.thread"] = thread
			}
		}
		for _, ev := range roomEvents {
			edit, err := f.latestEdit(ctx, ev, rels)
			if err != nil {
				return nil, err
			}
			if edit != nil {
				aggregationFor(agg, ev.EventID)["m.replace"] = edit
			}
		}
		for id, a := range agg {
			out[id] = mustJSON(a)
		}
	}
	return out, nil
}

func aggregationFor(agg map[string]map[string]any, id string) map[string]any {
	if agg[id] == nil {
		agg[id] = map[string]any{}
	}
	return agg[id]
}

// threadAggregation is the m.thread bundle of root: its latest visible
// reply (itself with aggregations, one level deep), the reply count and
// whether the caller took part.
func (f *eventFormatter) threadAggregation(ctx context.Context, root *roomserver.Event, replies []relation) (map[string]any, error) {
	participated := root.Sender == f.userID
	var latest *roomserver.Event
	for i := len(replies) - 1; i >= 0; i-- {
		if replies[i].Sender == f.userID {
			participated = true
		}
		if latest != nil {
			continue
		}
		ev, err := f.s.rooms.rooms.Event(ctx, f.userID, replies[i].EventID)
		if mxerr.Is(err, mxerr.NotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		latest = ev
	}
	if latest == nil {
		return nil, nil
	}
	inner := *f
	inner.depth++
	rendered, err := inner.one(ctx, latest)
	if err != nil {
		return nil, err
	}
	return map[string]any{"latest_event": rendered, "count": len(replies), "current_user_participated": participated}, nil
}

// isEditOf reports whether rel may replace original: an m.replace of it
// by its sender, of its event type.
func isEditOf(rel *relation, original *roomserver.Event) bool {
	return rel.RelatesTo == original.EventID && rel.RelType == "m.replace" && rel.Sender == original.Sender &&
		rel.EventType == original.Type
}

// latestEdit is the m.replace bundle of original: the most recent valid
// replacement the caller may see, rendered in full; nil if none, or if
// the original is redacted.
// Spec: client-server-api, "Validity of replacement events" and
// "Server-side aggregation of m.replace relationships".
func (f *eventFormatter) latestEdit(ctx context.Context, original *roomserver.Event, rels []relation) (json.RawMessage, error) {
	if original.RedactedBecause != "" || original.StateKey != nil {
		return nil, nil
	}
	// An edit's candidates first: they are few, and relationOf decodes
	// the original's content.
	if !slices.ContainsFunc(rels, func(rel relation) bool { return isEditOf(&rel, original) }) {
		return nil, nil
	}
	if own, ok := relationOf(original); ok && own.RelType == "m.replace" {
		return nil, nil
	}
	var best *relation
	for i := range rels {
		rel := &rels[i]
		if !isEditOf(rel, original) {
			continue
		}
		if best == nil || rel.OriginServerTS > best.OriginServerTS ||
			rel.OriginServerTS == best.OriginServerTS && rel.EventID > best.EventID {
			if ok, err := f.s.rooms.rooms.CanSee(ctx, f.userID, rel.EventID); err != nil {
				return nil, err
			} else if ok {
				best = rel
			}
		}
	}
	if best == nil {
		return nil, nil
	}
	ev, err := f.s.rooms.rooms.Event(ctx, f.userID, best.EventID)
	if err != nil {
		return nil, fmt.Errorf("loading edit %s: %w", best.EventID, err)
	}
	inner := *f
	inner.depth = maxAggregationDepth // an edit's own relations are not bundled
	return inner.one(ctx, ev)
}
