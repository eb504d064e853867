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

// roomSummary is what the published room directory, the space
// hierarchy and the room summary show about a room. Its JSON is the
// spec's PublishedRoomsChunk.
// Spec: client-server-api, "GET /_matrix/client/v3/publicRooms".
type roomSummary struct {
	RoomID           string `json:"room_id"`
	Name             string `json:"name,omitempty"`
	Topic            string `json:"topic,omitempty"`
	AvatarURL        string `json:"avatar_url,omitempty"`
	CanonicalAlias   string `json:"canonical_alias,omitempty"`
	NumJoinedMembers int    `json:"num_joined_members"`
	WorldReadable    bool   `json:"world_readable"`
	GuestCanJoin     bool   `json:"guest_can_join"`
	JoinRule         string `json:"join_rule,omitempty"`
	RoomType         string `json:"room_type,omitempty"`

	// Not in the directory chunk; the room summary and hierarchy add them.
	roomVersion    string
	encryption     string
	allowedRoomIDs []string
	// children are the m.space.child events with a non-empty via.
	children []*roomserver.Event
}

// summaryStateTypes are the state types a summary reads: what the spec
// lets anyone considering joining see.
var summaryStateTypes = []string{
	"m.room.create", "m.room.name", "m.room.topic", "m.room.avatar", "m.room.canonical_alias",
	"m.room.history_visibility", "m.room.guest_access", "m.room.join_rules", "m.room.encryption",
	"m.space.child",
}

// summarise reads a local room's summary; M_NOT_FOUND for unknown rooms.
func (s *Server) summarise(ctx context.Context, roomID string) (*roomSummary, error) {
	version, err := s.rooms.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return nil, err
	}
	state, err := s.rooms.rooms.PublicState(ctx, roomID, summaryStateTypes)
	if err != nil {
		return nil, err
	}
	n, err := s.rooms.rooms.JoinedMemberCount(ctx, roomID)
	if err != nil {
		return nil, err
	}
	rs := &roomSummary{RoomID: roomID, NumJoinedMembers: n, roomVersion: version}
	for _, e := range state {
		var c struct {
			Name          string          `json:"name"`
			Topic         any             `json:"topic"`
			URL           string          `json:"url"`
			Alias         string          `json:"alias"`
			HistoryVis    string          `json:"history_visibility"`
			GuestAccess   string          `json:"guest_access"`
			JoinRule      string          `json:"join_rule"`
			Type          string          `json:"type"`
			Algorithm     string          `json:"algorithm"`
			ViaJSON       json.RawMessage `json:"via"`
			AllowJSONList []struct {
				Type   string `json:"type"`
				RoomID string `json:"room_id"`
			} `json:"allow"`
		}
		if json.Unmarshal(e.Content, &c) != nil {
			continue
		}
		switch e.Type {
		case "m.room.create":
			rs.RoomType = c.Type
		case "m.room.name":
			rs.Name = c.Name
		case "m.room.topic":
			if t, ok := c.Topic.(string); ok {
				rs.Topic = t
			}
		case "m.room.avatar":
			rs.AvatarURL = c.URL
		case "m.room.canonical_alias":
			rs.CanonicalAlias = c.Alias
		case "m.room.history_visibility":
			rs.WorldReadable = c.HistoryVis == "world_readable"
		case "m.room.guest_access":
			rs.GuestCanJoin = c.GuestAccess == "can_join"
		case "m.room.join_rules":
			rs.JoinRule = c.JoinRule
			for _, a := range c.AllowJSONList {
				if a.Type == "m.room_membership" && a.RoomID != "" {
					rs.allowedRoomIDs = append(rs.allowedRoomIDs, a.RoomID)
				}
			}
		case "m.room.encryption":
			rs.encryption = c.Algorithm
		case "m.space.child":
			// Spec: client-server-api, "m.space.child": children without
			// a valid via are ignored.
			var via []string
			if json.Unmarshal(c.ViaJSON, &via) == nil && len(via) > 0 && e.StateKey != nil {
				rs.children = append(rs.children, e)
			}
		}
	}
	return rs, nil
}

// canPreview reports whether userID ("" for anonymous) may see rs: its
// members and invitees, anyone when it is public, knockable or
// world-readable, and members of a room that grants access to a
// restricted one. Spec: client-server-api, "GET /_matrix/client/v1/room_summary/{roomIdOrAlias}"
// and "GET /_matrix/client/v1/rooms/{roomId}/hierarchy".
func (s *Server) canPreview(ctx context.Context, userID string, rs *roomSummary) (membership string, ok bool, err error) {
	if userID != "" {
		if membership, err = s.rooms.rooms.Membership(ctx, rs.RoomID, userID); err != nil {
			return "", false, err
		}
	}
	switch {
	case membership == "join" || membership == "invite" || membership == "knock":
		return membership, true, nil
	case rs.WorldReadable, rs.JoinRule == "public", rs.JoinRule == "knock", rs.JoinRule == "knock_restricted":
		return membership, true, nil
	case userID != "" && (rs.JoinRule == "restricted"):
		for _, allowed := range rs.allowedRoomIDs {
			if m, err := s.rooms.rooms.Membership(ctx, allowed, userID); err != nil {
				return "", false, err
			} else if m == "join" {
				return membership, true, nil
			}
		}
	}
	return membership, false, nil
}

// roomSummaryHandler answers with a room's summary.
// Spec: client-server-api, "GET /_matrix/client/v1/room_summary/{roomIdOrAlias}" (MSC3266).
func (s *Server) roomSummaryHandler(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, remote, err := s.resolveRoom(ctx, r)
	if err != nil {
		return err
	}
	userID := ""
	if me := caller(r); me != nil {
		userID = me.UserID
	}
	var rs *roomSummary
	if remote {
		rs, err = s.remoteRoomSummary(ctx, roomID, joinVia(r))
	} else {
		rs, err = s.summarise(ctx, roomID)
	}
	if err != nil {
		return err
	}
	membership, ok, err := s.canPreview(ctx, userID, rs)
	if err != nil {
		return err
	}
	if !ok {
		return mxerr.New(mxerr.NotFound, "room %s not found, or you may not see it", roomID)
	}
	body := map[string]any{}
	if err := json.Unmarshal(mustJSON(rs), &body); err != nil {
		return err
	}
	body["room_version"] = rs.roomVersion
	if rs.encryption != "" {
		body["encryption"] = rs.encryption
	}
	if membership != "" {
		body["membership"] = membership
	}
	if len(rs.allowedRoomIDs) > 0 {
		body["allowed_room_ids"] = rs.allowedRoomIDs
	}
	return httpx.OK(w, body)
}

// mutualRooms lists the rooms both the caller and another user are joined to.
// Spec: client-server-api, "GET /_matrix/client/v1/mutual_rooms".
func (s *Server) mutualRooms(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	other := r.URL.Query().Get("user_id")
	me := caller(r)
	if !validUserID(other) || other == me.UserID {
		return mxerr.New(mxerr.InvalidParam, "user_id must be another user's ID")
	}
	offset := 0
	if from := r.URL.Query().Get("from"); from != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(from, "o"))
		if err != nil || n < 0 || !strings.HasPrefix(from, "o") {
			return mxerr.New(mxerr.InvalidParam, "from is not a token from this server")
		}
		offset = n
	}
	mine, err := s.rooms.rooms.JoinedRooms(ctx, me.UserID)
	if err != nil {
		return err
	}
	theirs, err := s.rooms.rooms.JoinedRooms(ctx, other)
	if err != nil {
		return err
	}
	joined := []string{}
	for _, id := range mine {
		if contains(theirs, id) {
			joined = append(joined, id)
		}
	}
	body := map[string]any{"count": len(joined)}
	start := min(offset, len(joined))
	end := min(start+mutualRoomsPage, len(joined))
	body["joined"] = joined[start:end]
	if end < len(joined) {
		body["next_batch"] = "o" + strconv.Itoa(end)
	}
	return httpx.OK(w, body)
}

// mutualRoomsPage is the page size of /mutual_rooms.
const mutualRoomsPage = 100
