package clientapi

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// transferableState are the state types an upgrade copies to the new
// room. Spec: client-server-api, "Room Upgrades", "Server behaviour" 3.
var transferableState = []string{
	"m.room.server_acl", "m.room.encryption", "m.room.name", "m.room.avatar", "m.room.topic",
	"m.room.guest_access", "m.room.history_visibility", "m.room.join_rules", "m.room.canonical_alias",
}

// upgradeRoom replaces a room with a new one of another version.
// Spec: client-server-api, "POST /_matrix/client/v3/rooms/{roomId}/upgrade".
func (s *Server) upgradeRoom(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	oldID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	var body struct {
		NewVersion         *string  `json:"new_version"`
		AdditionalCreators []string `json:"additional_creators"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.NewVersion == nil {
		return mxerr.New(mxerr.MissingParam, "new_version is required")
	}
	for _, u := range body.AdditionalCreators {
		if !validUserID(u) {
			return mxerr.New(mxerr.InvalidParam, "%q in additional_creators is not a user ID", u)
		}
	}
	me := caller(r)
	// 1. The upgrader must be able to send the tombstone.
	if err := s.requirePowerFor(ctx, me.UserID, oldID, "m.room.tombstone"); err != nil {
		return err
	}
	state, err := s.rooms.rooms.CurrentState(ctx, me.UserID, oldID)
	if err != nil {
		return err
	}
	req, err := s.upgradeRequest(ctx, me.UserID, oldID, *body.NewVersion, body.AdditionalCreators, state)
	if err != nil {
		return err
	}
	// 2, 3. The replacement room, with the transferable state.
	created, err := s.rooms.rooms.CreateRoom(ctx, *req)
	if err != nil {
		if mxerr.Is(err, mxerr.Forbidden) {
			e, _ := mxerr.As(err)
			return mxerr.Wrap(err, mxerr.InvalidRoomState, "%s", e.Message)
		}
		return err
	}
	newID := created.RoomID
	// From here on the new room exists; finish even if the client leaves.
	ctx = context.WithoutCancel(ctx)
	// 4. Local aliases and the directory listing move to the new room.
	if err := s.moveAliases(ctx, oldID, newID); err != nil {
		return err
	}
	// 5. The tombstone.
	_, err = s.rooms.rooms.SendEvent(ctx, roomserver.SendEventRequest{
		RoomID: oldID, Sender: me.UserID, Type: "m.room.tombstone", StateKey: ptrTo(""),
		Content: mustJSON(map[string]string{"body": "This room has been replaced", "replacement_room": newID}),
	})
	if err != nil {
		return err
	}
	// 6. Quieten the old room; failing this is not failing the upgrade.
	if err := s.restrictOldRoom(ctx, me.UserID, oldID, state); err != nil {
		s.log.Warn("upgrade: restricting the old room's power levels", "room", oldID, "err", err)
	}
	// Members of an invite-only room could not follow without an invite.
	s.inviteFollowers(ctx, me.UserID, newID, state)
	return httpx.OK(w, map[string]string{"replacement_room": newID})
}

func ptrTo[T any](v T) *T { return &v }

// upgradeRequest builds the replacement room's creation request.
func (s *Server) upgradeRequest(ctx context.Context, upgrader, oldID, version string, additional []string, state []*roomserver.Event) (*roomserver.CreateRoomRequest, error) {
	creation := map[string]any{}
	predecessor := map[string]any{"room_id": oldID}
	var oldPL map[string]any
	joinRule := ""
	req := &roomserver.CreateRoomRequest{
		Creator: upgrader, RoomVersion: version, Preset: roomserver.PresetPrivateChat,
		CreatorMemberContent: s.memberProfile(ctx, upgrader),
	}
	for _, e := range state {
		if e.StateKey == nil || *e.StateKey != "" {
			continue
		}
		switch e.Type {
		case "m.room.create":
			var c struct {
				Type string `json:"type"`
			}
			if json.Unmarshal(e.Content, &c) == nil && c.Type != "" {
				creation["type"] = c.Type
			}
		case "m.room.power_levels":
			_ = json.Unmarshal(e.Content, &oldPL)
		case "m.room.join_rules":
			var c struct {
				JoinRule string `json:"join_rule"`
			}
			_ = json.Unmarshal(e.Content, &c)
			joinRule = c.JoinRule
		}
		if contains(transferableState, e.Type) {
			req.InitialState = append(req.InitialState, roomserver.StateEvent{Type: e.Type, Content: e.Content})
		}
	}
	if joinRule == "public" {
		req.Preset = roomserver.PresetPublicChat
	}
	// Spec: rooms v12 MAY omit predecessor.event_id; older versions name
	// the last event of the old room.
	if version != "12" {
		last, err := s.rooms.rooms.Messages(ctx, roomserver.MessagesRequest{UserID: upgrader, RoomID: oldID, Dir: roomserver.Backward, Limit: 1})
		if err != nil {
			return nil, err
		}
		if len(last.Events) > 0 {
			predecessor["event_id"] = last.Events[0].EventID
		}
	}
	creation["predecessor"] = predecessor
	privileged := version == "12"
	if privileged && len(additional) > 0 {
		// As decoded JSON, the form creation_content arrives in.
		list := make([]any, len(additional))
		for i, u := range additional {
			list[i] = u
		}
		creation["additional_creators"] = list
	}
	req.CreationContent = creation
	if oldPL != nil {
		pl := maps.Clone(oldPL)
		users := map[string]any{}
		if u, ok := oldPL["users"].(map[string]any); ok {
			users = maps.Clone(u)
		}
		if privileged {
			// Creators outrank every level and may not be listed.
			delete(users, upgrader)
			for _, u := range additional {
				delete(users, u)
			}
		} else {
			users[upgrader] = 100
		}
		pl["users"] = users
		req.PowerLevelContentOverride = pl
	}
	return req, nil
}

// moveAliases points oldID's local aliases at newID, and moves its
// directory listing, and its listings in application services' network
// directories with it. Spec: "Room Upgrades", "Server behaviour" 4.
func (s *Server) moveAliases(ctx context.Context, oldID, newID string) error {
	published, err := s.isPublished(ctx, oldID)
	if err != nil {
		return err
	}
	return s.db.Write(ctx, func(tx storage.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE room_aliases SET room_id = $1 WHERE room_id = $2`, newID, oldID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO appservice_room_directory (appservice_id, network_id, room_id, published_ts)
			SELECT appservice_id, network_id, $1, $2 FROM appservice_room_directory WHERE room_id = $3
			ON CONFLICT (appservice_id, network_id, room_id) DO NOTHING`, newID, nowMillis(), oldID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM appservice_room_directory WHERE room_id = $1`, oldID); err != nil {
			return err
		}
		if !published {
			return nil
		}
		if _, err := tx.Exec(ctx, `DELETE FROM room_directory WHERE room_id = $1`, oldID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO room_directory (room_id, published_ts) VALUES ($1, $2)
			ON CONFLICT (room_id) DO NOTHING`, newID, nowMillis())
		return err
	})
}

// restrictOldRoom raises events_default and invite in the old room to
// the greater of 50 and users_default + 1.
// Spec: "Room Upgrades", "Server behaviour" 6.
func (s *Server) restrictOldRoom(ctx context.Context, upgrader, oldID string, state []*roomserver.Event) error {
	for _, e := range state {
		if e.Type != "m.room.power_levels" {
			continue
		}
		var pl map[string]any
		if err := json.Unmarshal(e.Content, &pl); err != nil {
			return err
		}
		usersDefault, _ := pl["users_default"].(float64)
		level := max(50, usersDefault+1)
		pl["events_default"], pl["invite"] = level, level
		_, err := s.rooms.rooms.SendEvent(ctx, roomserver.SendEventRequest{
			RoomID: oldID, Sender: upgrader, Type: "m.room.power_levels", StateKey: ptrTo(""), Content: mustJSON(pl),
		})
		return err
	}
	return nil
}

// inviteFollowers invites the old room's joined members to the new one
// when it is not public, so they can follow the tombstone.
func (s *Server) inviteFollowers(ctx context.Context, upgrader, newID string, state []*roomserver.Event) {
	for _, e := range state {
		if e.Type == "m.room.join_rules" {
			var c struct {
				JoinRule string `json:"join_rule"`
			}
			if json.Unmarshal(e.Content, &c) == nil && c.JoinRule == "public" {
				return
			}
		}
	}
	for _, e := range state {
		if e.Type != "m.room.member" || e.Membership != "join" || e.StateKey == nil || *e.StateKey == upgrader {
			continue
		}
		if _, err := s.rooms.rooms.Invite(ctx, roomserver.MembershipRequest{RoomID: newID, Sender: upgrader, Target: *e.StateKey}); err != nil {
			s.log.Warn("upgrade: inviting a member to the new room", "room", newID, "err", err)
		}
	}
}
