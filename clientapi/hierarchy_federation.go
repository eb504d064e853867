package clientapi

import (
	"context"
	"encoding/json"
	"slices"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// Space hierarchies across servers: this server answers other servers'
// GET /_matrix/federation/v1/hierarchy for rooms it is in, and asks the
// servers named in m.space.child "via" about the rooms it is not in.
// Spec: server-server-api, "GET /_matrix/federation/v1/hierarchy/{roomId}".

const (
	// maxRemoteHierarchyFetches bounds the federation requests one
	// client request makes, so a space full of remote rooms on dead
	// servers cannot hold a request for long.
	maxRemoteHierarchyFetches = 50
	// maxViaTried is how many of a child's via servers are asked.
	maxViaTried = 3
)

// ServerHierarchy answers another server's hierarchy request
// (federationapi.SpaceHierarchy): the room if this server is in it and
// origin could peek or join it, each child this server is in that
// origin could peek or join, and the IDs of the children it could not.
// Children this server is not in are left out: it cannot describe them.
func (s *Server) ServerHierarchy(ctx context.Context, origin, roomID string, suggestedOnly bool) (json.RawMessage, error) {
	notFound := mxerr.New(mxerr.NotFound, "room %s is not known here, or %s may not see it", roomID, origin)
	if s.rooms.rooms == nil || !validRoomID(roomID) {
		return nil, notFound
	}
	rs, held, err := s.heldSummary(ctx, roomID)
	if err != nil || !held {
		return nil, notFoundOr(err, notFound)
	}
	if ok, err := s.serverCanPreview(ctx, origin, rs); err != nil || !ok {
		return nil, notFoundOr(err, notFound)
	}
	var children []*roomserver.Event
	if rs.RoomType == "m.space" {
		children = orderedChildren(rs.children, suggestedOnly)
	}
	summaries := []map[string]any{}
	inaccessible := []string{}
	for i, ev := range children {
		if i == maxHierarchyRooms {
			break
		}
		child, held, err := s.heldSummary(ctx, *ev.StateKey)
		if err != nil {
			return nil, err
		}
		if !held {
			continue
		}
		if ok, err := s.serverCanPreview(ctx, origin, child); err != nil {
			return nil, err
		} else if !ok {
			inaccessible = append(inaccessible, child.RoomID)
			continue
		}
		var grandchildren []*roomserver.Event
		if child.RoomType == "m.space" {
			grandchildren = orderedChildren(child.children, suggestedOnly)
		}
		summaries = append(summaries, hierarchyRoom(child, grandchildren))
	}
	return mustJSON(map[string]any{
		"room":                  hierarchyRoom(rs, children),
		"children":              summaries,
		"inaccessible_children": inaccessible,
	}), nil
}

func notFoundOr(err error, notFound error) error {
	if err != nil && !mxerr.Is(err, mxerr.NotFound) {
		return err
	}
	return notFound
}

// heldSummary summarises roomID if this server is in it (a room it only
// knew once may have changed since).
func (s *Server) heldSummary(ctx context.Context, roomID string) (*roomSummary, bool, error) {
	held, err := s.heldHere(ctx, roomID)
	if err != nil || !held {
		return nil, false, err
	}
	rs, err := s.summarise(ctx, roomID)
	if mxerr.Is(err, mxerr.NotFound) {
		return nil, false, nil
	}
	return rs, err == nil, err
}

// serverCanPreview reports whether a server could peek or join rs: it
// has a joined user there, the room is world-readable, public or
// knockable, or the room is restricted and the server has a joined user
// in one of the rooms that grant access. (The requesting server filters
// further for its user.)
// Spec: server-server-api, GET /hierarchy, "children": "Rooms which the
// requesting server cannot peek/join will be excluded".
func (s *Server) serverCanPreview(ctx context.Context, server string, rs *roomSummary) (bool, error) {
	if in, err := s.serverJoined(ctx, server, rs.RoomID); err != nil || in {
		return in, err
	}
	switch rs.JoinRule {
	case "public", "knock", "knock_restricted":
		return true, nil
	}
	if rs.WorldReadable {
		return true, nil
	}
	if rs.JoinRule == "restricted" {
		for _, allowed := range rs.allowedRoomIDs {
			if in, err := s.serverJoined(ctx, server, allowed); err != nil || in {
				return in, err
			}
		}
	}
	return false, nil
}

func (s *Server) serverJoined(ctx context.Context, server, roomID string) (bool, error) {
	servers, err := s.rooms.rooms.JoinedServers(ctx, roomID)
	if mxerr.Is(err, mxerr.NotFound) {
		return false, nil
	}
	return slices.Contains(servers, server), err
}

// remoteSpaces finds summaries of rooms for one client hierarchy or
// summary request: local ones for rooms this server is in, otherwise
// from the via servers' federation hierarchy answers, which are kept for
// the rest of the request (one answer describes a space and its
// children).
type remoteSpaces struct {
	s             *Server
	suggestedOnly bool
	// known are summaries from remote answers; spaces among them only if
	// their answer listed their children.
	known        map[string]*roomSummary
	inaccessible map[string]bool
	fetches      int
}

func (s *Server) newRemoteSpaces(suggestedOnly bool) *remoteSpaces {
	return &remoteSpaces{s: s, suggestedOnly: suggestedOnly, known: map[string]*roomSummary{}, inaccessible: map[string]bool{}}
}

// summary returns roomID's summary: local when this server is in the
// room, else remote, else the last local copy if the room was known
// here; M_NOT_FOUND when nothing is known.
func (rsp *remoteSpaces) summary(ctx context.Context, roomID string, via []string) (*roomSummary, error) {
	s := rsp.s
	rs, held, err := s.heldSummary(ctx, roomID)
	if err != nil || held {
		return rs, err
	}
	if rs, ok := rsp.known[roomID]; ok {
		return rs, nil
	}
	if !rsp.inaccessible[roomID] && s.federation != nil {
		tried := 0
		for _, server := range via {
			if server == s.serverName || tried == maxViaTried || rsp.fetches == maxRemoteHierarchyFetches {
				continue
			}
			tried++
			rsp.fetches++
			body, err := s.federation.RemoteHierarchy(ctx, server, roomID, rsp.suggestedOnly)
			if err != nil {
				s.log.Debug("remote space hierarchy", "server", server, "room", roomID, "err", err)
				continue
			}
			room, err := rsp.learn(roomID, body)
			if err != nil {
				s.log.Debug("remote space hierarchy answer refused", "server", server, "room", roomID, "err", err)
				continue
			}
			return room, nil
		}
	}
	return s.summarise(ctx, roomID)
}

// learn reads a federation hierarchy answer about roomID, keeps the
// summaries of the room and of the children it lists, and returns the
// room's. Children the answer did not list in the room's children_state
// are ignored: a server describes a space's own children only.
func (rsp *remoteSpaces) learn(roomID string, body json.RawMessage) (*roomSummary, error) {
	var resp struct {
		Room         json.RawMessage   `json:"room"`
		Children     []json.RawMessage `json:"children"`
		Inaccessible []string          `json:"inaccessible_children"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, err
	}
	room, _, err := parseRemoteSummary(resp.Room)
	if err != nil {
		return nil, err
	}
	if room.RoomID != roomID {
		return nil, mxerr.New(mxerr.Unknown, "answer describes %s, not %s", room.RoomID, roomID)
	}
	rsp.known[roomID] = room
	listed := map[string]bool{}
	for _, ev := range room.children {
		listed[*ev.StateKey] = true
	}
	for _, id := range resp.Inaccessible {
		if listed[id] {
			rsp.inaccessible[id] = true
		}
	}
	for _, raw := range resp.Children {
		child, hasChildren, err := parseRemoteSummary(raw)
		if err != nil || !listed[child.RoomID] || child.RoomID == roomID {
			continue
		}
		if _, seen := rsp.known[child.RoomID]; seen || (child.RoomType == "m.space" && !hasChildren) {
			continue
		}
		rsp.known[child.RoomID] = child
	}
	return room, nil
}

// parseRemoteSummary reads one room of a federation hierarchy answer
// (a room summary with children_state) into a roomSummary, keeping only
// m.space.child events with a room ID state key and a non-empty via, as
// summarise does for local rooms. hasChildren says whether the answer
// carried children_state at all.
func parseRemoteSummary(raw json.RawMessage) (rs *roomSummary, hasChildren bool, err error) {
	rs = &roomSummary{}
	if err := json.Unmarshal(raw, rs); err != nil {
		return nil, false, err
	}
	var extra struct {
		RoomVersion    string   `json:"room_version"`
		Encryption     string   `json:"encryption"`
		AllowedRoomIDs []string `json:"allowed_room_ids"`
		ChildrenState  *[]struct {
			Type           string          `json:"type"`
			StateKey       string          `json:"state_key"`
			Sender         string          `json:"sender"`
			Content        json.RawMessage `json:"content"`
			OriginServerTS int64           `json:"origin_server_ts"`
		} `json:"children_state"`
	}
	if err := json.Unmarshal(raw, &extra); err != nil {
		return nil, false, err
	}
	if !validRoomID(rs.RoomID) {
		return nil, false, mxerr.New(mxerr.Unknown, "room summary without a valid room_id")
	}
	rs.roomVersion, rs.encryption = extra.RoomVersion, extra.Encryption
	for _, id := range extra.AllowedRoomIDs {
		if validRoomID(id) {
			rs.allowedRoomIDs = append(rs.allowedRoomIDs, id)
		}
	}
	if extra.ChildrenState == nil {
		return rs, false, nil
	}
	seen := map[string]bool{}
	for _, c := range *extra.ChildrenState {
		var content struct {
			Via []string `json:"via"`
		}
		if c.Type != "m.space.child" || !validRoomID(c.StateKey) || seen[c.StateKey] ||
			json.Unmarshal(c.Content, &content) != nil || len(content.Via) == 0 {
			continue
		}
		seen[c.StateKey] = true
		stateKey := c.StateKey
		rs.children = append(rs.children, &roomserver.Event{RoomID: rs.RoomID, Type: c.Type, StateKey: &stateKey,
			Sender: c.Sender, Content: c.Content, OriginServerTS: c.OriginServerTS})
	}
	return rs, true, nil
}

// childVia is the via list of an m.space.child event (summarise and
// parseRemoteSummary kept only children with one).
func childVia(ev *roomserver.Event) []string {
	var c struct {
		Via []string `json:"via"`
	}
	_ = json.Unmarshal(ev.Content, &c)
	return c.Via
}

// remoteRoomSummary summarises a room this server is not in (a room ID,
// or an alias of another server) from the federation hierarchy answer of
// the via servers, the alias's servers, or the last local copy.
// Spec: client-server-api, "GET /_matrix/client/v1/room_summary/{roomIdOrAlias}"
// (MSC3266: "the server should ... use the federation hierarchy API").
func (s *Server) remoteRoomSummary(ctx context.Context, target string, via []string) (*roomSummary, error) {
	roomID := target
	if target[0] == '#' {
		if s.federation == nil {
			return nil, mxerr.New(mxerr.NotFound, "room alias %s is on another server and federation is off", target)
		}
		id, servers, err := s.federation.QueryDirectory(ctx, target)
		if err != nil {
			return nil, err
		}
		roomID = id
		for _, server := range servers {
			if !slices.Contains(via, server) {
				via = append(via, server)
			}
		}
	}
	if d := domainOf(roomID); len(via) == 0 && d != "" {
		via = []string{d} // room versions before 12 name a server in the ID
	}
	return s.newRemoteSpaces(false).summary(ctx, roomID, via)
}
