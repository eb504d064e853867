package roomserver

import (
	"context"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// refuseForeignCreate refuses events another server gave for roomID as
// state or auth chain (a gap's /state_ids and /event answers, a resync's
// state) when one of them is a create event other than the room's own.
// Such an event names the room (its room_id is the room's: in room
// versions before 12 the room ID does not derive from the create event)
// and passes its own auth rules (a create event has no auth events), so
// nothing else stops it: stored as an outlier it could stand as the
// create event of a given state, or an auth event of what follows, and
// change who created the room, its version rules or m.federate. A room
// has exactly one create event, stored when this server created or
// joined it; the caller refuses the whole answer.
// Spec: server-server-api, "Checks performed on receipt of a PDU" (auth
// events of the room); rooms/v1 "Authorization rules" (rule 1: the
// create event is the room's first and only one).
func refuseForeignCreate(ctx context.Context, q storage.Querier, roomID string, given map[string]gomatrixserverlib.PDU) error {
	var creates []string
	for id, pdu := range given {
		if isCreate(pdu) {
			creates = append(creates, id)
		}
	}
	if len(creates) == 0 {
		return nil
	}
	var own string
	err := q.QueryRow(ctx, `SELECT event_id FROM roomserver_current_state
		WHERE room_id = $1 AND type = 'm.room.create' AND state_key = ''`, roomID).Scan(&own)
	if storage.IsNoRows(err) {
		return mxerr.New(mxerr.NotFound, "room %s has no create event here", roomID)
	}
	if err != nil {
		return err
	}
	for _, id := range creates {
		if id != own {
			return mxerr.New(mxerr.BadJSON, "create event %s is not the create event %s of room %s", id, own, roomID)
		}
	}
	return nil
}
