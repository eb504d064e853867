package roomserver

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Bounds of one /event_relationships walk. The MSC lets the server
// override the client's limit, and a negative max_depth or max_breadth
// ("unbounded") is read as the cap.
const (
	defaultRelDepth   = 3
	defaultRelBreadth = 10
	defaultRelLimit   = 100
	maxRelDepth       = 50
	maxRelBreadth     = 100
	maxRelLimit       = 100
	// maxRelOffset bounds how far next_batch tokens page into a walk.
	maxRelOffset = 1000
	// maxRelVisits bounds the events one walk loads.
	maxRelVisits = 5000
	// maxRelFetches bounds the federation requests one client walk
	// makes, and relFetchBudget the time they may take together.
	maxRelFetches  = 5
	relFetchBudget = 20 * time.Second
)

// RelationshipsRequest is the body of POST /event_relationships, the
// same for clients and servers, with defaults applied and bounds
// enforced by ParseRelationshipsRequest.
// Spec: MSC2836, "Querying relationships".
type RelationshipsRequest struct {
	EventID         string `json:"event_id"`
	RoomID          string `json:"room_id,omitempty"`
	MaxDepth        int    `json:"max_depth"`
	MaxBreadth      int    `json:"max_breadth"`
	Limit           int    `json:"limit"`
	DepthFirst      bool   `json:"depth_first"`
	RecentFirst     bool   `json:"recent_first"`
	IncludeParent   bool   `json:"include_parent"`
	IncludeChildren bool   `json:"include_children"`
	Direction       string `json:"direction"`
	Batch           string `json:"batch,omitempty"`
}

// ParseRelationshipsRequest reads a request body: M_NOT_JSON or
// M_BAD_JSON for a body that is not a JSON object of the right shape,
// M_MISSING_PARAM without event_id, M_INVALID_PARAM for a malformed
// event_id or room_id, a direction other than up or down, a limit below
// 1 or a batch this server did not issue.
func ParseRelationshipsRequest(body []byte) (*RelationshipsRequest, error) {
	var in struct {
		EventID         *string `json:"event_id"`
		RoomID          *string `json:"room_id"`
		MaxDepth        *int    `json:"max_depth"`
		MaxBreadth      *int    `json:"max_breadth"`
		Limit           *int    `json:"limit"`
		DepthFirst      *bool   `json:"depth_first"`
		RecentFirst     *bool   `json:"recent_first"`
		IncludeParent   *bool   `json:"include_parent"`
		IncludeChildren *bool   `json:"include_children"`
		Direction       *string `json:"direction"`
		Batch           *string `json:"batch"`
	}
	if err := httpx.Unmarshal(body, &in); err != nil {
		return nil, err
	}
	if in.EventID == nil {
		return nil, mxerr.New(mxerr.MissingParam, "event_id is required")
	}
	req := &RelationshipsRequest{
		EventID: *in.EventID, MaxDepth: defaultRelDepth, MaxBreadth: defaultRelBreadth, Limit: defaultRelLimit,
		RecentFirst: true, Direction: "down",
	}
	if !validEventID(req.EventID) {
		return nil, mxerr.New(mxerr.InvalidParam, "event_id %q is not an event ID", req.EventID)
	}
	if in.RoomID != nil {
		req.RoomID = *in.RoomID
		if len(req.RoomID) < 2 || len(req.RoomID) > 255 || req.RoomID[0] != '!' {
			return nil, mxerr.New(mxerr.InvalidParam, "room_id %q is not a room ID", req.RoomID)
		}
	}
	bound := func(v *int, def, cap int) int {
		switch {
		case v == nil:
			return def
		case *v < 0 || *v > cap: // negative: unbounded, which is the cap
			return cap
		}
		return *v
	}
	req.MaxDepth = bound(in.MaxDepth, defaultRelDepth, maxRelDepth)
	req.MaxBreadth = bound(in.MaxBreadth, defaultRelBreadth, maxRelBreadth)
	if in.Limit != nil && *in.Limit < 1 {
		return nil, mxerr.New(mxerr.InvalidParam, "limit must be at least 1")
	}
	req.Limit = bound(in.Limit, defaultRelLimit, maxRelLimit)
	for _, f := range []struct {
		dst *bool
		src *bool
	}{{&req.DepthFirst, in.DepthFirst}, {&req.RecentFirst, in.RecentFirst},
		{&req.IncludeParent, in.IncludeParent}, {&req.IncludeChildren, in.IncludeChildren}} {
		if f.src != nil {
			*f.dst = *f.src
		}
	}
	if in.Direction != nil {
		req.Direction = *in.Direction
		if req.Direction != "up" && req.Direction != "down" {
			return nil, mxerr.New(mxerr.InvalidParam, "direction must be up or down")
		}
	}
	if in.Batch != nil && *in.Batch != "" {
		req.Batch = *in.Batch
		if _, err := parseRelBatch(req.Batch); err != nil {
			return nil, err
		}
	}
	return req, nil
}

// A batch token is "r" and the number of events of the walk already
// served. The walk is repeated from its anchor, with the original
// request's bounds, and those events are skipped.
func relBatch(offset int) string { return "r" + strconv.Itoa(offset) }

func parseRelBatch(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	rest, ok := strings.CutPrefix(s, "r")
	n, err := strconv.Atoi(rest)
	if !ok || err != nil || strconv.Itoa(n) != rest || n < 1 || n > maxRelOffset {
		return 0, mxerr.New(mxerr.InvalidParam, "invalid batch token")
	}
	return n, nil
}

// RelationshipsQuery is one walk: the request, and who asks, a local
// user (UserID) or another server (Server), exactly one of them.
type RelationshipsQuery struct {
	Request *RelationshipsRequest
	UserID  string
	Server  string
	// Fetch, for client walks only, asks other servers in roomID about
	// req.EventID (an event this server lacks, or one with children
	// other servers reported that this server has not seen) with a
	// federated /event_relationships and stores what they answer. Nil:
	// the walk uses what is stored (always so for a server's request,
	// which must not fan out further: MSC2836 forbids routing loops).
	Fetch func(ctx context.Context, roomID string, req RelationshipsRequest) error
}

// RelatedEvent is one event of a walk with its unsigned children
// figures. Outlier is set for an event stored without a place in the
// timeline (fetched from another server): the state at it is unknown.
type RelatedEvent struct {
	*Event
	Children ChildrenSummary
	Outlier  bool
}

// RelationshipsResponse is the walk's answer. NextBatch is set when
// Limited and the walk can go on from there.
type RelationshipsResponse struct {
	Events    []*RelatedEvent
	NextBatch string
	Limited   bool
}

// EventRelationships walks the thread around q.Request.EventID and
// returns the events the asker may see, closest to the anchor first:
// the anchor, its parent (include_parent), its children
// (include_children), then the walk up or down, breadth or depth first,
// bounded by max_depth, max_breadth and limit. An event the asker may
// not see is left out and its relationships are not followed. The
// anchor unknown (after asking other servers, for a client with a
// room_id hint), or hidden from the asker, is M_NOT_FOUND; a server not
// in the anchor's room is M_FORBIDDEN.
// Spec: MSC2836, "Querying relationships", server implementation.
func (s *Server) EventRelationships(ctx context.Context, q RelationshipsQuery) (*RelationshipsResponse, error) {
	req := q.Request
	offset, err := parseRelBatch(req.Batch)
	if err != nil {
		return nil, err
	}
	w := &relWalk{s: s, q: q, fetched: map[string]bool{}, rooms: map[string]*roomRow{},
		fetchDeadline: time.Now().Add(relFetchBudget)}
	db := s.db.Reader()
	if q.Server != "" {
		w.server = s.newServerVisibility(db, q.Server)
	} else {
		w.user = s.newVisibility(db, q.UserID)
	}
	notFound := mxerr.New(mxerr.NotFound, "event %s not found", req.EventID)
	anchor, err := w.load(ctx, req.EventID, req.RoomID)
	if err != nil {
		return nil, err
	}
	if anchor == nil || req.RoomID != "" && anchor.row.RoomID != req.RoomID {
		return nil, notFound
	}
	roomID := anchor.row.RoomID
	if q.Server != "" {
		if err := s.CheckServerAccess(ctx, q.Server, roomID); err != nil {
			return nil, err
		}
	}
	if ok, err := w.canSee(ctx, anchor); err != nil {
		return nil, err
	} else if !ok {
		return nil, notFound
	}
	if req.Direction == "down" || req.IncludeChildren {
		if err := w.explore(ctx, anchor); err != nil {
			return nil, err
		}
	}

	want := offset + req.Limit + 1 // one more than served tells whether the walk was limited
	var out []*loadedEvent
	added := map[string]bool{}
	add := func(e *loadedEvent) {
		if !added[e.row.EventID] {
			added[e.row.EventID] = true
			out = append(out, e)
		}
	}
	// visible loads an event of the room the asker may see, or nil.
	visible := func(id string) (*loadedEvent, error) {
		e, err := w.load(ctx, id, roomID)
		if err != nil || e == nil || e.row.RoomID != roomID {
			return nil, err
		}
		if ok, err := w.canSee(ctx, e); err != nil || !ok {
			return nil, err
		}
		return e, nil
	}
	add(anchor)
	if req.IncludeParent {
		parent, err := parentOf(ctx, db, anchor.row.EventID)
		if err != nil {
			return nil, err
		}
		if parent != "" {
			e, err := visible(parent)
			if err != nil {
				return nil, err
			}
			if e != nil {
				add(e)
			}
		}
	}
	if req.IncludeChildren {
		children, err := w.children(ctx, roomID, anchor.row.EventID)
		if err != nil {
			return nil, err
		}
		for _, id := range children {
			if len(out) >= want {
				break
			}
			e, err := visible(id)
			if err != nil {
				return nil, err
			}
			if e != nil {
				add(e)
			}
		}
	}

	// The walk. Every event is processed once; an event deeper than
	// max_depth, or a child beyond the first max_breadth of its parent,
	// is never queued.
	type step struct {
		id    string
		depth int
	}
	var frontier []step
	queue := func(from *loadedEvent, depth int) error {
		if depth > req.MaxDepth {
			return nil
		}
		next, err := w.next(ctx, roomID, from)
		if err != nil {
			return err
		}
		if req.DepthFirst {
			// A stack: the first neighbour is taken first.
			for i := len(next) - 1; i >= 0; i-- {
				frontier = append(frontier, step{next[i], depth})
			}
		} else {
			for _, id := range next {
				frontier = append(frontier, step{id, depth})
			}
		}
		return nil
	}
	visited := map[string]bool{anchor.row.EventID: true}
	if err := queue(anchor, 1); err != nil {
		return nil, err
	}
	for len(frontier) > 0 && len(out) < want && len(visited) < maxRelVisits {
		var st step
		if req.DepthFirst {
			st, frontier = frontier[len(frontier)-1], frontier[:len(frontier)-1]
		} else {
			st, frontier = frontier[0], frontier[1:]
		}
		if visited[st.id] {
			continue
		}
		visited[st.id] = true
		e, err := visible(st.id)
		if err != nil {
			return nil, err
		}
		if e == nil {
			continue
		}
		add(e)
		if err := queue(e, st.depth+1); err != nil {
			return nil, err
		}
	}

	res := &RelationshipsResponse{Events: []*RelatedEvent{}}
	end := offset + req.Limit
	if len(out) > end {
		res.Limited = true
		out = out[:end]
		if end < maxRelOffset {
			res.NextBatch = relBatch(end)
		}
	}
	if offset < len(out) {
		out = out[offset:]
	} else {
		out = nil
	}
	for _, e := range out {
		sum, err := w.summary(ctx, roomID, e.row.EventID)
		if err != nil {
			return nil, err
		}
		res.Events = append(res.Events, &RelatedEvent{Event: toEvent(e), Children: sum, Outlier: isOutlier(e)})
	}
	return res, nil
}

// relWalk is the state of one walk.
type relWalk struct {
	s *Server
	q RelationshipsQuery
	// Exactly one of user and server is set: the asker's visibility.
	user   *visibility
	server *serverVisibility
	rooms  map[string]*roomRow
	// fetched holds the events other servers were asked about, all
	// before fetchDeadline.
	fetched       map[string]bool
	fetchDeadline time.Time
}

// load returns a stored event, asking other servers in roomHint first
// when it is unknown and the walk may fetch; nil if still unknown.
func (w *relWalk) load(ctx context.Context, eventID, roomHint string) (*loadedEvent, error) {
	for attempt := 0; ; attempt++ {
		got, err := w.s.loadEventsByID(ctx, w.s.db.Reader(), nil, []string{eventID})
		if err != nil {
			return nil, err
		}
		if e, ok := got[eventID]; ok {
			return e, nil
		}
		if attempt > 0 || roomHint == "" || !w.fetch(ctx, roomHint, eventID) {
			return nil, nil
		}
	}
}

// fetch asks other servers about eventID (at most once per walk, and
// within the walk's budget) and reports whether it did. A failure only
// means the walk goes on with what is stored.
func (w *relWalk) fetch(ctx context.Context, roomID, eventID string) bool {
	if w.q.Fetch == nil || w.fetched[eventID] || len(w.fetched) >= maxRelFetches || !time.Now().Before(w.fetchDeadline) {
		return false
	}
	w.fetched[eventID] = true
	sub := *w.q.Request
	sub.EventID, sub.RoomID, sub.Batch = eventID, roomID, ""
	fetchCtx, cancel := context.WithDeadline(ctx, w.fetchDeadline)
	err := w.q.Fetch(fetchCtx, roomID, sub)
	cancel()
	if err != nil {
		slog.DebugContext(ctx, "event_relationships: asking other servers failed", "event_id", eventID, "err", err)
	}
	// Explored whatever the answer: a server that cannot supply the
	// children is not asked again on every walk (MSC2836).
	if err := w.s.markExplored(ctx, eventID); err != nil {
		slog.WarnContext(ctx, "event_relationships: marking explored", "event_id", eventID, "err", err)
	}
	return true
}

// explore asks other servers about e's children when they reported
// children this server has not seen: more than it knows of, or as many
// with another hash, and not already asked about at those figures.
// Spec: MSC2836, "Exploring dense threads".
func (w *relWalk) explore(ctx context.Context, e *loadedEvent) error {
	if w.q.Fetch == nil {
		return nil
	}
	remote, err := loadRemoteChildren(ctx, w.s.db.Reader(), e.row.EventID)
	if err != nil || remote == nil {
		return err
	}
	if remote.exploredTotal == remote.total && remote.exploredHash == remote.Hash {
		return nil
	}
	children, err := childrenOf(ctx, w.s.db.Reader(), e.row.RoomID, e.row.EventID)
	if err != nil {
		return err
	}
	local := summarise(children)
	if remote.total < local.Total() || remote.total == local.Total() && remote.Hash == local.Hash {
		return nil
	}
	w.fetch(ctx, e.row.RoomID, e.row.EventID)
	return nil
}

// children lists the known children of eventID in roomID, in the
// request's order (recent_first: newest first).
func (w *relWalk) children(ctx context.Context, roomID, eventID string) ([]string, error) {
	children, err := childrenOf(ctx, w.s.db.Reader(), roomID, eventID)
	if err != nil {
		return nil, err
	}
	if w.q.Request.RecentFirst {
		slices.Reverse(children)
	}
	ids := make([]string, len(children))
	for i, c := range children {
		ids[i] = c.EventID
	}
	return ids, nil
}

// next lists the events the walk goes to from e: its parent going up;
// going down, its first max_breadth children (after asking other
// servers about children it lacks).
func (w *relWalk) next(ctx context.Context, roomID string, e *loadedEvent) ([]string, error) {
	if w.q.Request.Direction == "up" {
		parent, err := parentOf(ctx, w.s.db.Reader(), e.row.EventID)
		if err != nil || parent == "" {
			return nil, err
		}
		return []string{parent}, nil
	}
	if err := w.explore(ctx, e); err != nil {
		return nil, err
	}
	ids, err := w.children(ctx, roomID, e.row.EventID)
	if err != nil {
		return nil, err
	}
	if len(ids) > w.q.Request.MaxBreadth {
		ids = ids[:w.q.Request.MaxBreadth]
	}
	return ids, nil
}

// summary is the unsigned children figures of eventID: those of its
// children this server knows of, or those another server reported if
// they count more (MSC2836: "always return the unsigned section which
// produces the most children").
func (w *relWalk) summary(ctx context.Context, roomID, eventID string) (ChildrenSummary, error) {
	q := w.s.db.Reader()
	children, err := childrenOf(ctx, q, roomID, eventID)
	if err != nil {
		return ChildrenSummary{}, err
	}
	local := summarise(children)
	remote, err := loadRemoteChildren(ctx, q, eventID)
	if err != nil {
		return ChildrenSummary{}, err
	}
	if remote != nil && remote.total > local.Total() {
		return remote.ChildrenSummary, nil
	}
	return local, nil
}

func (w *relWalk) room(ctx context.Context, q storage.Querier, roomID string) (*roomRow, error) {
	if r, ok := w.rooms[roomID]; ok {
		return r, nil
	}
	r, err := loadRoom(ctx, q, roomID)
	if err != nil {
		return nil, err
	}
	w.rooms[roomID] = r
	return r, nil
}

// canSee applies history visibility for the asker. For a user, an
// outlier (an event stored without a place in the timeline, such as one
// fetched by an earlier walk) has no state to judge it by, so it is
// judged by the room's current state, and only allowed when that alone
// settles it: the room is world_readable, or its history is shared and
// the user is joined now. Under invited or joined history an outlier is
// not shown: whether the user was in the room when it was sent is not
// known. A soft-failed timeline event is never shown to users.
// Spec: client-server-api, "Room History Visibility"; MSC2836 ("normal
// history visibility checks apply").
func (w *relWalk) canSee(ctx context.Context, e *loadedEvent) (bool, error) {
	q := w.s.db.Reader()
	room, err := w.room(ctx, q, e.row.RoomID)
	if err != nil {
		return false, err
	}
	if w.server != nil {
		return w.server.canSee(ctx, room, e)
	}
	if e.row.Rejected {
		return false, nil
	}
	if isOutlier(e) {
		hv, err := w.user.historyVisibilityAt(ctx, room.Version, room.CurrentSnapshot)
		if err != nil || hv == "world_readable" {
			return err == nil, err
		}
		if hv != "shared" {
			return false, nil
		}
		cur, err := w.user.currentMembership(ctx, room.RoomID)
		return cur == "join", err
	}
	return w.user.canSee(ctx, room.Version, e)
}

// isOutlier reports whether e was stored without a place in the
// timeline (InputOutliers, a send_join's state): soft-failed, with no
// state before it.
func isOutlier(e *loadedEvent) bool { return e.row.SoftFailed && e.row.StateBefore == 0 }
