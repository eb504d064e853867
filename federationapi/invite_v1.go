package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Invites through the v1 API, for room versions 1 and 2 only: servers
// that predate invite v2 neither send nor accept anything else.
// Spec: server-server-api, "PUT /_matrix/federation/v1/invite/{roomId}/{eventId}".

// inviteV1Request is the v1 body: the invite event itself, with the
// stripped room state in its unsigned section.
type inviteV1Request struct {
	Unsigned struct {
		InviteRoomState []json.RawMessage `json:"invite_room_state"`
	} `json:"unsigned"`
}

// inviteV1 is PUT /_matrix/federation/v1/invite/{roomId}/{eventId}: the
// same checks as v2 (only invites of our users, sent by users of the
// origin), under room version 1 or 2, answered as [200, {"event": …}].
func (s *Server) inviteV1(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	var event json.RawMessage
	if err := httpx.DecodeJSON(r, &event); err != nil {
		return err
	}
	var req inviteV1Request
	if err := json.Unmarshal(event, &req); err != nil {
		return mxerr.New(mxerr.BadJSON, "invalid event")
	}
	version, err := v1InviteRoomVersion(req.Unsigned.InviteRoomState)
	if err != nil {
		return err
	}
	signed, err := s.acceptInvite(ctx, originOf(ctx), pathParam(r, "roomID"), pathParam(r, "eventID"), inviteRequest{
		RoomVersion: version, Event: event, InviteRoomState: req.Unsigned.InviteRoomState,
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, []any{http.StatusOK, map[string]json.RawMessage{"event": signed}})
}

// v1InviteRoomVersion is the room version of a v1 invite: "1" or "2"
// ("servers which receive a v1 invite request must assume that the room
// version is either 1 or 2"), read from the create event in the stripped
// state when it is there. A create event naming any other version is
// refused: that room cannot be joined through a v1 invite.
func v1InviteRoomVersion(stripped []json.RawMessage) (string, error) {
	for _, raw := range stripped {
		var ev struct {
			Type     string `json:"type"`
			StateKey string `json:"state_key"`
			Content  struct {
				RoomVersion *string `json:"room_version"`
			} `json:"content"`
		}
		if json.Unmarshal(raw, &ev) != nil || ev.Type != "m.room.create" || ev.StateKey != "" {
			continue
		}
		if ev.Content.RoomVersion == nil {
			return "1", nil // Spec: m.room.create, "room_version": defaults to "1"
		}
		switch v := *ev.Content.RoomVersion; v {
		case "1", "2":
			return v, nil
		default:
			return "", mxerr.New(mxerr.IncompatibleRoomVersion, "room version %q cannot be used with invite v1", v).
				With("room_version", v)
		}
	}
	return "1", nil
}

// useInviteV1 says whether an invite v2 failure means the invitee's
// server only has v1, and the room's version allows v1.
// Spec: server-server-api, PUT /v2/invite: "Servers should prefer to use
// the v2 API"; v1 is the fallback for rooms of versions 1 and 2.
func useInviteV1(err error, roomVersion string) bool {
	var re *RemoteError
	return (roomVersion == "1" || roomVersion == "2") && errors.As(err, &re) &&
		re.Status == http.StatusNotFound && re.Code == string(mxerr.Unrecognized)
}

// sendInviteV1 sends an invite through PUT /v1/invite and returns the
// event the invitee's server signed.
func (s *Server) sendInviteV1(ctx context.Context, server, roomID, eventID string, event json.RawMessage, stripped []json.RawMessage) (json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(event, &fields); err != nil {
		return nil, err
	}
	unsigned := map[string]json.RawMessage{}
	if raw, ok := fields["unsigned"]; ok {
		_ = json.Unmarshal(raw, &unsigned)
	}
	strippedJSON, err := json.Marshal(stripped)
	if err != nil {
		return nil, err
	}
	unsigned["invite_room_state"] = strippedJSON
	if fields["unsigned"], err = json.Marshal(unsigned); err != nil {
		return nil, err
	}
	var resp []json.RawMessage
	uri := "/_matrix/federation/v1/invite/" + pathEscape(roomID) + "/" + pathEscape(eventID)
	if err := s.client.signed(ctx, server, http.MethodPut, uri, fields, &resp); err != nil {
		return nil, err
	}
	var answer struct {
		Event json.RawMessage `json:"event"`
	}
	if len(resp) != 2 || string(resp[0]) != "200" || json.Unmarshal(resp[1], &answer) != nil || len(answer.Event) == 0 {
		return nil, &RemoteError{Server: server, Status: http.StatusBadGateway, Message: "invite v1 answer is not [200, {\"event\": …}]"}
	}
	return answer.Event, nil
}
