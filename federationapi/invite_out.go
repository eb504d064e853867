package federationapi

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// maxInviteRoomState bounds the stripped state sent with an invite, so an
// invite no peer would take is refused here (security case 7).
const maxInviteRoomState = 32 << 10

// InviteRemote implements RemoteMemberships: the roomserver builds and
// checks the invite without storing it, the invitee's server signs it,
// and the roomserver stores the countersigned copy, which the sender
// then delivers to the room's servers. It returns the invite's event ID.
// Spec: server-server-api, "PUT /_matrix/federation/v2/invite/{roomId}/{eventId}".
func (s *Server) InviteRemote(ctx context.Context, req roomserver.MembershipRequest) (string, error) {
	server := domainOf(req.Target)
	if server == "" || server == s.serverName {
		return "", mxerr.New(mxerr.InvalidParam, "%q is not a user of another server", req.Target)
	}
	invite, err := s.rooms.BuildRemoteInvite(ctx, req)
	if err != nil {
		return "", err
	}
	stripped, err := s.strippedState(ctx, req.RoomID)
	if err != nil {
		return "", err
	}
	size := 0
	for _, st := range stripped {
		size += len(st)
	}
	if size > maxInviteRoomState {
		return "", mxerr.New(mxerr.TooLarge, "the room's stripped state is too large to send with an invite")
	}
	body := map[string]any{"room_version": invite.RoomVersion, "event": invite.JSON, "invite_room_state": stripped}
	var resp struct {
		Event json.RawMessage `json:"event"`
	}
	uri := "/_matrix/federation/v2/invite/" + pathEscape(req.RoomID) + "/" + pathEscape(invite.EventID)
	if err := s.client.signed(ctx, server, http.MethodPut, uri, body, &resp); err != nil {
		if !useInviteV1(err, invite.RoomVersion) {
			return "", ClientError(err)
		}
		if resp.Event, err = s.sendInviteV1(ctx, server, req.RoomID, invite.EventID, invite.JSON, stripped); err != nil {
			return "", ClientError(err)
		}
	}
	// Both signatures must hold: ours, and the invitee's server's
	// (VerifyEventSignatures requires it for invites).
	p, id, err := s.checkPDUVersion(ctx, resp.Event, invite.RoomVersion)
	if err != nil || id != invite.EventID {
		s.log.Info("invite: bad answer", "server", server, "event_id", id, "err", err)
		return "", mxerr.New(mxerr.Unknown, "%s returned an invalid invite", server).WithStatus(http.StatusBadGateway)
	}
	res, err := s.rooms.PersistRemoteInvite(ctx, invite, p.pdu.JSON())
	if err != nil {
		return "", err
	}
	return res.EventID, nil
}
