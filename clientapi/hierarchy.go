package clientapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// Space hierarchy limits.
const (
	defaultHierarchyLimit = 50
	maxHierarchyLimit     = 100
	// maxHierarchyDepth is both the default and the largest max_depth.
	maxHierarchyDepth = 20
	// maxHierarchyRooms bounds how many rooms one request looks at, so
	// a huge or cyclic space tree cannot make a request unbounded.
	maxHierarchyRooms = 2000
)

// hierarchyParams are a /hierarchy request's query parameters.
type hierarchyParams struct {
	suggestedOnly bool
	limit         int
	maxDepth      int
	// offset is how many rooms earlier pages returned.
	offset int
}

// token is the next_batch of a page: the rooms already returned
// and the parameters that must not change between pages. The tree is
// walked again from the root for each page, so no state is kept.
func (p hierarchyParams) token(offset int) string {
	suggested := 0
	if p.suggestedOnly {
		suggested = 1
	}
	return fmt.Sprintf("h%d_%d_%d", offset, p.maxDepth, suggested)
}

func parseHierarchyParams(r *http.Request) (hierarchyParams, error) {
	v := r.URL.Query()
	p := hierarchyParams{limit: defaultHierarchyLimit, maxDepth: maxHierarchyDepth}
	switch v.Get("suggested_only") {
	case "", "false":
	case "true":
		p.suggestedOnly = true
	default:
		return p, mxerr.New(mxerr.InvalidParam, "suggested_only must be true or false")
	}
	if raw := v.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 {
			return p, mxerr.New(mxerr.InvalidParam, "limit must be an integer greater than zero")
		}
		p.limit = min(n, maxHierarchyLimit)
	}
	if raw := v.Get("max_depth"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 0 {
			return p, mxerr.New(mxerr.InvalidParam, "max_depth must be a non-negative integer")
		}
		p.maxDepth = min(n, maxHierarchyDepth)
	}
	if from := v.Get("from"); from != "" {
		var offset, depth, suggested int
		if _, err := fmt.Sscanf(from, "h%d_%d_%d", &offset, &depth, &suggested); err != nil || offset < 0 ||
			p.token(offset) != from {
			if err == nil && offset >= 0 {
				return p, mxerr.New(mxerr.InvalidParam, "suggested_only and max_depth cannot change on paginated requests")
			}
			return p, mxerr.New(mxerr.InvalidParam, "from is not a token from this server")
		}
		p.offset = offset
	}
	return p, nil
}

// hierarchy pages depth-first through a space's tree. Rooms this server
// is not in are described by the servers in their m.space.child via
// (hierarchy_federation.go).
// Spec: client-server-api, "GET /_matrix/client/v1/rooms/{roomId}/hierarchy" and "Spaces".
func (s *Server) hierarchy(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	p, err := parseHierarchyParams(r)
	if err != nil {
		return err
	}
	me := caller(r).UserID
	root, err := s.summarise(ctx, roomID)
	if mxerr.Is(err, mxerr.NotFound) {
		return mxerr.New(mxerr.Forbidden, "room %s is unknown, or you may not see it", roomID)
	}
	if err != nil {
		return err
	}
	if ok, err := s.inHierarchy(ctx, me, root); err != nil {
		return err
	} else if !ok {
		return mxerr.New(mxerr.Forbidden, "you may not see room %s", roomID)
	}

	type pending struct {
		roomID string
		depth  int
		via    []string
	}
	spaces := s.newRemoteSpaces(p.suggestedOnly)
	stack := []pending{{roomID, 0, nil}}
	seen := map[string]bool{}
	rooms := []map[string]any{}
	listed := 0 // rooms the walk included, earlier pages' too
	for len(stack) > 0 && len(seen) < maxHierarchyRooms {
		next := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[next.roomID] {
			continue
		}
		seen[next.roomID] = true
		rs := root
		if next.depth > 0 {
			if rs, err = spaces.summary(ctx, next.roomID, next.via); mxerr.Is(err, mxerr.NotFound) {
				continue // an unknown room no via server described
			} else if err != nil {
				return err
			}
			if ok, err := s.inHierarchy(ctx, me, rs); err != nil {
				return err
			} else if !ok {
				continue
			}
		}
		var children []*roomserver.Event
		if rs.RoomType == "m.space" {
			children = orderedChildren(rs.children, p.suggestedOnly)
		}
		if listed >= p.offset {
			if len(rooms) == p.limit {
				// One more room is listable: this page ends before it.
				stack = append(stack, next)
				break
			}
			rooms = append(rooms, hierarchyRoom(rs, children))
		}
		listed++
		if next.depth < p.maxDepth {
			for i := len(children) - 1; i >= 0; i-- {
				stack = append(stack, pending{*children[i].StateKey, next.depth + 1, childVia(children[i])})
			}
		}
	}
	body := map[string]any{"rooms": rooms}
	if len(rooms) == p.limit && len(stack) > 0 {
		body["next_batch"] = p.token(p.offset + len(rooms))
	}
	return httpx.OK(w, body)
}

// inHierarchy reports whether userID may see rs in a hierarchy: the
// room summary's rules, except that a banned user may not.
// Spec: "The server should return any rooms where at least one of the
// following conditions is true" (GET .../hierarchy, rooms).
func (s *Server) inHierarchy(ctx context.Context, userID string, rs *roomSummary) (bool, error) {
	membership, ok, err := s.canPreview(ctx, userID, rs)
	return ok && membership != "ban", err
}

// orderedChildren sorts a space's m.space.child events as the spec
// orders them and keeps only suggested ones if asked.
// Spec: client-server-api, "Ordering of children within a space".
func orderedChildren(children []*roomserver.Event, suggestedOnly bool) []*roomserver.Event {
	type child struct {
		ev        *roomserver.Event
		order     string
		hasOrder  bool
		suggested bool
	}
	var list []child
	for _, ev := range children {
		var c struct {
			Order     any  `json:"order"`
			Suggested bool `json:"suggested"`
		}
		_ = json.Unmarshal(ev.Content, &c) // summarise kept only decodable children
		if suggestedOnly && !c.Suggested {
			continue
		}
		order, isString := c.Order.(string)
		list = append(list, child{ev: ev, order: order, hasOrder: isString && validChildOrder(order), suggested: c.Suggested})
	}
	sort.SliceStable(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if a.hasOrder != b.hasOrder {
			return a.hasOrder
		}
		if a.hasOrder && a.order != b.order {
			return a.order < b.order
		}
		if a.ev.OriginServerTS != b.ev.OriginServerTS {
			return a.ev.OriginServerTS < b.ev.OriginServerTS
		}
		return *a.ev.StateKey < *b.ev.StateKey
	})
	out := make([]*roomserver.Event, len(list))
	for i, c := range list {
		out[i] = c.ev
	}
	return out
}

// validChildOrder: "order ... must consist of ASCII characters within
// the range \x20 (space) and \x7E (~), inclusive", at most 50 of them.
func validChildOrder(order string) bool {
	if len(order) > 50 {
		return false
	}
	for i := 0; i < len(order); i++ {
		if order[i] < 0x20 || order[i] > 0x7e {
			return false
		}
	}
	return true
}

// hierarchyRoom is one entry of rooms: the room's summary and its
// children as stripped state with origin_server_ts (empty for rooms that
// are not spaces). Spec: "SpaceHierarchyRoomsChunk".
func hierarchyRoom(rs *roomSummary, children []*roomserver.Event) map[string]any {
	out := map[string]any{}
	_ = json.Unmarshal(mustJSON(rs), &out) // a summary always round-trips
	out["room_version"] = rs.roomVersion
	if rs.encryption != "" {
		out["encryption"] = rs.encryption
	}
	if len(rs.allowedRoomIDs) > 0 {
		out["allowed_room_ids"] = rs.allowedRoomIDs
	}
	state := stripped(children)
	for i, ev := range children {
		state[i]["origin_server_ts"] = ev.OriginServerTS
	}
	out["children_state"] = state
	return out
}
