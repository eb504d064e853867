package clientapi

import (
	"context"
	"encoding/json"
	"slices"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// dropFromCanonicalAlias removes a deleted alias from the room's
// m.room.canonical_alias (its alias and alt_aliases), sent as userID. The
// alias is deleted either way: a user without the power to change the
// event still gets a successful answer, and the event keeps the alias.
// Spec: client-server-api, "DELETE /_matrix/client/v3/directory/room/{roomAlias}":
// "Servers may choose to update the alt_aliases for the
// m.room.canonical_alias state event in the room when an alias is
// removed"; Complement TestRoomDeleteAlias "Can delete canonical alias".
func (s *Server) dropFromCanonicalAlias(ctx context.Context, userID, roomID, alias string) error {
	ev, err := s.rooms.rooms.CurrentStateEvent(ctx, userID, roomID, "m.room.canonical_alias", "")
	if mxerr.Is(err, mxerr.NotFound) || mxerr.Is(err, mxerr.Forbidden) {
		return nil
	}
	if err != nil {
		return err
	}
	var content map[string]any
	if json.Unmarshal(ev.Content, &content) != nil || content == nil {
		return nil
	}
	changed := false
	if content["alias"] == alias {
		delete(content, "alias")
		changed = true
	}
	if alts, ok := content["alt_aliases"].([]any); ok {
		kept := slices.DeleteFunc(slices.Clone(alts), func(a any) bool { return a == alias })
		if len(kept) != len(alts) {
			changed = true
			if len(kept) == 0 {
				delete(content, "alt_aliases")
			} else {
				content["alt_aliases"] = kept
			}
		}
	}
	if !changed {
		return nil
	}
	raw, err := json.Marshal(content)
	if err != nil {
		return err
	}
	empty := ""
	_, err = s.rooms.rooms.SendEvent(ctx, roomserver.SendEventRequest{RoomID: roomID, Sender: userID,
		Type: "m.room.canonical_alias", StateKey: &empty, Content: raw})
	if mxerr.Is(err, mxerr.Forbidden) {
		s.log.Info("deleted alias stays in m.room.canonical_alias: the user may not change it", "room_id", roomID)
		return nil
	}
	return err
}
