package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// createRoomBody is the body of POST /createRoom.
// Spec: client-server-api, "POST /_matrix/client/v3/createRoom".
type createRoomBody struct {
	Visibility                string            `json:"visibility"`
	RoomAliasName             string            `json:"room_alias_name"`
	Name                      string            `json:"name"`
	Topic                     string            `json:"topic"`
	Invite                    []string          `json:"invite"`
	Invite3PID                []json.RawMessage `json:"invite_3pid"`
	RoomVersion               string            `json:"room_version"`
	CreationContent           json.RawMessage   `json:"creation_content"`
	InitialState              []initialState    `json:"initial_state"`
	Preset                    string            `json:"preset"`
	IsDirect                  bool              `json:"is_direct"`
	PowerLevelContentOverride json.RawMessage   `json:"power_level_content_override"`
}

type initialState struct {
	Type     *string         `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

// objectOf decodes an optional JSON object keeping numbers exact.
func objectOf(name string, raw json.RawMessage) (map[string]any, error) {
	if len(raw) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, mxerr.New(mxerr.BadJSON, "%s must be a JSON object", name)
	}
	return m, nil
}

// createRoom creates a room.
// Spec: client-server-api, "POST /_matrix/client/v3/createRoom".
func (s *Server) createRoom(w http.ResponseWriter, r *http.Request) error {
	me := caller(r)
	if me.IsGuest {
		// Spec: client-server-api, "Guest Access": createRoom is not among
		// the endpoints guests may use.
		return mxerr.New(mxerr.GuestAccessForbidden, "guests cannot create rooms")
	}
	var body createRoomBody
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	req, err := s.createRoomRequest(r.Context(), me.UserID, &body)
	if err != nil {
		return err
	}
	ctx := r.Context()
	var reserved string
	req.ReserveAlias = func(ctx context.Context, alias, roomID string) error {
		if err := s.exclusiveAlias(alias, me.AppServiceID); err != nil {
			return err
		}
		if err := s.insertAlias(ctx, alias, roomID, me.UserID); err != nil {
			return err
		}
		reserved = alias
		return nil
	}
	resp, err := s.rooms.rooms.CreateRoom(ctx, *req)
	if err != nil {
		if reserved != "" {
			// The room was not made: free the alias it had claimed.
			if _, derr := s.deleteAlias(context.WithoutCancel(ctx), reserved); derr != nil {
				s.log.Warn("createRoom: releasing alias", "alias", reserved, "err", derr)
			}
		}
		if mxerr.Is(err, mxerr.Forbidden) {
			// The initial events did not pass the auth rules: the request
			// described an invalid room state.
			e, _ := mxerr.As(err)
			return mxerr.Wrap(err, mxerr.InvalidRoomState, "%s", e.Message)
		}
		return err
	}
	if body.Visibility == "public" {
		if err := s.setPublished(ctx, resp.RoomID, true); err != nil {
			return err
		}
	}
	s.inviteRemoteAfterCreate(ctx, resp.RoomID, me.UserID, req)
	return httpx.OK(w, map[string]string{"room_id": resp.RoomID})
}

// inviteRemoteAfterCreate sends the invites of other servers' users named
// in createRoom, each through the invitee's server (invite v2), as
// POST /rooms/{roomId}/invite does. The room exists by now, so a failed
// invite does not fail the request (the client could not learn the room
// ID otherwise); it is logged, and the creator can invite again.
// Spec: client-server-api, "POST /createRoom" (invite); server-server-api,
// "Inviting to a room".
func (s *Server) inviteRemoteAfterCreate(ctx context.Context, roomID, creator string, req *roomserver.CreateRoomRequest) {
	for _, u := range req.RemoteInvites {
		_, err := s.federation.InviteRemote(ctx, roomserver.MembershipRequest{
			RoomID: roomID, Sender: creator, Target: u, IsDirect: req.IsDirect,
		})
		if err != nil {
			s.log.Warn("createRoom: remote invite failed", "room_id", roomID, "invitee", u, "err", err)
		}
	}
}

// createRoomRequest validates the body and maps it to the roomserver's
// request.
func (s *Server) createRoomRequest(ctx context.Context, creator string, body *createRoomBody) (*roomserver.CreateRoomRequest, error) {
	switch body.Visibility {
	case "", "public", "private":
	default:
		return nil, mxerr.New(mxerr.BadJSON, "visibility must be public or private")
	}
	if len(body.Invite3PID) > 0 {
		return nil, mxerr.New(mxerr.InvalidParam, "third-party invites (invite_3pid) are not supported by this server")
	}
	var local, remote []string
	for _, u := range body.Invite {
		if !validUserID(u) {
			return nil, mxerr.New(mxerr.InvalidParam, "%q in invite is not a user ID", u)
		}
		if domainOf(u) == s.serverName {
			// MSC4155: a local invitee who blocks the creator.
			if err := s.CheckInvite(ctx, creator, u); err != nil {
				return nil, err
			}
			local = append(local, u)
			continue
		}
		if s.federation == nil {
			return nil, mxerr.New(mxerr.Forbidden, "%s is on another server and federation is off", u)
		}
		remote = append(remote, u)
	}
	creation, err := objectOf("creation_content", body.CreationContent)
	if err != nil {
		return nil, err
	}
	override, err := objectOf("power_level_content_override", body.PowerLevelContentOverride)
	if err != nil {
		return nil, err
	}
	req := &roomserver.CreateRoomRequest{
		Creator:                   creator,
		RoomVersion:               body.RoomVersion,
		Preset:                    body.Preset,
		Visibility:                body.Visibility,
		RoomAliasName:             body.RoomAliasName,
		Name:                      body.Name,
		Topic:                     body.Topic,
		Invite:                    local,
		RemoteInvites:             remote,
		IsDirect:                  body.IsDirect,
		CreationContent:           creation,
		PowerLevelContentOverride: override,
		CreatorMemberContent:      s.memberProfile(ctx, creator),
	}
	for i, e := range body.InitialState {
		if e.Type == nil {
			return nil, mxerr.New(mxerr.BadJSON, "initial_state[%d] has no type", i)
		}
		if c := bytes.TrimSpace(e.Content); len(c) == 0 || c[0] != '{' {
			return nil, mxerr.New(mxerr.BadJSON, "initial_state[%d].content must be a JSON object", i)
		}
		req.InitialState = append(req.InitialState, roomserver.StateEvent{Type: *e.Type, StateKey: e.StateKey, Content: e.Content})
	}
	return req, nil
}

// validUserID checks the shape of a user ID: @localpart:server, at most
// 255 bytes. Spec: appendices, "User Identifiers".
func validUserID(u string) bool {
	return len(u) >= 4 && len(u) <= 255 && u[0] == '@' && domainOf(u) != "" && len(u) > len(domainOf(u))+2
}
