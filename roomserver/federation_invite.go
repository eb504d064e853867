package roomserver

import (
	"context"
	"encoding/json"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Inviting a user of another server takes two steps, because the spec
// has the invitee's server sign the invite before the room sees it.
// Spec: server-server-api, "Inviting to a room".

// RemoteInvite is an invite built for a user of another server, signed by
// this server and checked against the room's current state, but not
// persisted.
type RemoteInvite struct {
	RoomVersion string
	EventID     string
	JSON        json.RawMessage
}

// BuildRemoteInvite builds, signs and auth-checks the invite of
// req.Target (a user of another server) by req.Sender without persisting
// it. Send it to the invitee's server (invite v2), then persist the copy
// it returns with PersistRemoteInvite.
func (s *Server) BuildRemoteInvite(ctx context.Context, req MembershipRequest) (*RemoteInvite, error) {
	if err := s.needTarget(req); err != nil {
		return nil, err
	}
	if domainOf(req.Target) == string(s.serverName) {
		return nil, mxerr.New(mxerr.InvalidParam, "%s is a user of this server", req.Target)
	}
	if domainOf(req.Sender) != string(s.serverName) {
		return nil, mxerr.New(mxerr.Forbidden, "sender %s is not a local user", req.Sender)
	}
	content := memberContent(req, "invite")
	if req.IsDirect {
		content["is_direct"] = true
	}
	proto, err := memberProto(req, content)
	if err != nil {
		return nil, err
	}
	p, pol, err := s.buildRemoteInvite(ctx, req.RoomID, proto)
	if err != nil {
		return nil, err
	}
	if pol != nil {
		// Asked without the room lock: nothing is stored here, and
		// PersistRemoteInvite checks the invite against the room as it
		// is then.
		signed, err := s.policySignedLocal(ctx, pol, p.pdu)
		if err != nil {
			return nil, err
		}
		p.setPDU(signed)
	}
	return &RemoteInvite{RoomVersion: p.room.Version, EventID: p.pdu.EventID(), JSON: p.pdu.JSON()}, nil
}

// buildRemoteInvite builds and authorises the invite under the room lock
// and returns it with the policy server that is to sign it, if any.
func (s *Server) buildRemoteInvite(ctx context.Context, roomID string, proto *gomatrixserverlib.ProtoEvent) (*prepared, *roomPolicy, error) {
	unlock := s.lockRoom(ctx, roomID)
	defer unlock()
	room, err := loadRoom(ctx, s.db.Reader(), roomID)
	if err != nil {
		return nil, nil, err
	}
	p, err := s.buildAndAuthorise(ctx, room, proto, "")
	if err != nil {
		return nil, nil, err
	}
	pol, err := s.localPolicy(ctx, s.db.Reader(), p)
	if err != nil {
		return nil, nil, err
	}
	return p, pol, nil
}

// PersistRemoteInvite stores the invite built by BuildRemoteInvite as the
// invitee's server returned it (with that server's signature, which the
// caller has verified). It must be the same event: anything else is
// M_FORBIDDEN. The invite is checked against the state again, since the
// room may have moved on while the invitee's server answered.
func (s *Server) PersistRemoteInvite(ctx context.Context, invite *RemoteInvite, signed json.RawMessage) (*SendEventResponse, error) {
	res, err := s.InputEvent(ctx, InputEventRequest{RoomVersion: invite.RoomVersion, JSON: signed})
	if err != nil {
		return nil, err
	}
	if res.EventID != invite.EventID {
		return nil, mxerr.New(mxerr.Forbidden, "the invitee's server returned a different event")
	}
	switch res.Outcome {
	case Accepted:
		return &SendEventResponse{EventID: res.EventID, StreamPos: res.StreamPos}, nil
	case Duplicate:
		return s.existingSend(ctx, res.EventID)
	}
	return nil, mxerr.New(mxerr.Forbidden, "invite %s: %s", res.Outcome, res.Reason)
}
