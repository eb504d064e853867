package clientapi

import (
	"context"
	"encoding/json"

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
