package federationapi

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// Third-party invites, federation side. A user invited by e-mail (an
// m.room.third_party_invite in the room) binds the address at an identity
// server, which tells the user's server through /3pid/onbind, handing it
// a "signed" object per pending invite. That server turns each into an
// m.room.member invite with content.third_party_invite: itself when the
// inviting user is one of its own, otherwise by asking the inviting
// user's server through /exchange_third_party_invite, which sends the
// invite (invite v2) like any other.
// Spec: server-server-api, "Third-party invites".

// thirdPartySigned is the identity server's signed object.
// Spec: event-schemas, components/signed_third_party_invite.
type thirdPartySigned struct {
	MXID       string                       `json:"mxid"`
	Token      string                       `json:"token"`
	Signatures map[string]map[string]string `json:"signatures"`
}

// memberThirdPartyInvite is an m.room.member's third_party_invite.
type memberThirdPartyInvite struct {
	DisplayName string           `json:"display_name"`
	Signed      thirdPartySigned `json:"signed"`
}

// exchangeRequest is the partial m.room.member event of
// PUT /exchange_third_party_invite.
type exchangeRequest struct {
	Type     string `json:"type"`
	RoomID   string `json:"room_id"`
	Sender   string `json:"sender"`
	StateKey string `json:"state_key"`
	Content  struct {
		Membership       string                  `json:"membership"`
		ThirdPartyInvite *memberThirdPartyInvite `json:"third_party_invite"`
	} `json:"content"`
}

// exchangeThirdPartyInvite is PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}:
// the invitee's server asks this server, whose user made the third-party
// invite, to send the invite.
// Spec: server-server-api, "PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}".
func (s *Server) exchangeThirdPartyInvite(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	origin := originOf(ctx)
	var req exchangeRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.Type != "m.room.member" || req.Content.Membership != "invite" || req.Content.ThirdPartyInvite == nil {
		return mxerr.New(mxerr.InvalidParam, "not an m.room.member invite with a third_party_invite")
	}
	if req.RoomID != roomParam(r) {
		return mxerr.New(mxerr.InvalidParam, "room_id does not match the path")
	}
	if domainOf(req.StateKey) != origin {
		return mxerr.New(mxerr.Forbidden, "%s may only exchange invites for its own users", origin)
	}
	if domainOf(req.Sender) != s.serverName {
		return mxerr.New(mxerr.Forbidden, "%s is not a user of this server", req.Sender)
	}
	if _, err := s.sendThirdPartyInvite(ctx, req.RoomID, req.Sender, req.StateKey, req.Content.ThirdPartyInvite.Signed); err != nil {
		return err
	}
	return httpx.OK(w, struct{}{})
}

// sendThirdPartyInvite sends, as sender (a local user), the invite of
// target that completes the room's third-party invite named by
// signed.token, and returns its event ID. The rules the auth check
// leaves out are applied here: the sender must be the one who made the
// third-party invite, and a banned target is refused.
// Spec: rooms, "Authorization rules" (m.room.member, invite with
// third_party_invite).
func (s *Server) sendThirdPartyInvite(ctx context.Context, roomID, sender, target string, signed thirdPartySigned) (string, error) {
	if signed.MXID != target || signed.Token == "" || len(signed.Signatures) == 0 {
		return "", mxerr.New(mxerr.InvalidParam, "signed must name the invitee in mxid and carry a token and signatures")
	}
	if in, err := s.rooms.ServerInRoom(ctx, s.serverName, roomID); err != nil || !in {
		if err == nil || mxerr.Is(err, mxerr.NotFound) {
			err = mxerr.New(mxerr.NotFound, "this server is not in room %s", roomID)
		}
		return "", err
	}
	tpi, err := s.rooms.RoomStateEvent(ctx, roomID, "m.room.third_party_invite", signed.Token)
	if mxerr.Is(err, mxerr.NotFound) || (err == nil && tpi == nil) {
		return "", mxerr.New(mxerr.Forbidden, "no third-party invite with this token in room %s", roomID)
	}
	if err != nil {
		return "", err
	}
	var tpiContent struct {
		DisplayName string `json:"display_name"`
	}
	if json.Unmarshal(tpi.Content, &tpiContent) != nil || tpi.Sender != sender {
		// A redacted or foreign third-party invite cannot be completed.
		return "", mxerr.New(mxerr.Forbidden, "the third-party invite was not made by %s", sender)
	}
	if m, err := s.rooms.Membership(ctx, roomID, target); err != nil {
		return "", err
	} else if m == "ban" {
		return "", mxerr.New(mxerr.Forbidden, "%s is banned from the room", target)
	}
	content, err := json.Marshal(memberThirdPartyInvite{DisplayName: tpiContent.DisplayName, Signed: signed})
	if err != nil {
		return "", err
	}
	req := roomserver.MembershipRequest{RoomID: roomID, Sender: sender, Target: target, ThirdPartyInvite: content}
	if domainOf(target) != s.serverName {
		return s.InviteRemote(ctx, req)
	}
	res, err := s.rooms.Invite(ctx, req)
	if err != nil {
		return "", err
	}
	return res.EventID, nil
}

// onBindRequest is the body of PUT /3pid/onbind.
type onBindRequest struct {
	Medium  string `json:"medium"`
	Address string `json:"address"`
	MXID    string `json:"mxid"`
	Invites []struct {
		Medium  string           `json:"medium"`
		Address string           `json:"address"`
		MXID    string           `json:"mxid"`
		RoomID  string           `json:"room_id"`
		Sender  string           `json:"sender"`
		Signed  thirdPartySigned `json:"signed"`
	} `json:"invites"`
}

// onBind is PUT /_matrix/federation/v1/3pid/onbind. Identity servers
// call it without X-Matrix signatures; what makes an invite genuine is
// the identity server's signature on each "signed" object, which the
// auth rules check against the public keys in the room's
// m.room.third_party_invite. Each invite is completed on its own; one
// that fails is logged and the others still go ahead.
// Spec: server-server-api, "PUT /_matrix/federation/v1/3pid/onbind".
func (s *Server) onBind(w http.ResponseWriter, r *http.Request) error {
	var req onBindRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if domainOf(req.MXID) != s.serverName {
		return mxerr.New(mxerr.InvalidParam, "%s is not a user of this server", req.MXID)
	}
	if len(req.Invites) > maxOnBindInvites {
		return mxerr.New(mxerr.InvalidParam, "at most %d invites per request", maxOnBindInvites)
	}
	ctx := r.Context()
	for _, inv := range req.Invites {
		if inv.MXID != req.MXID {
			s.log.Info("3pid onbind: invite for another user skipped", "room_id", inv.RoomID)
			continue
		}
		if err := s.completeThirdPartyInvite(ctx, inv.RoomID, inv.Sender, inv.MXID, inv.Signed); err != nil {
			s.log.Info("3pid onbind: third-party invite not completed", "room_id", inv.RoomID, "err", err)
		}
	}
	return httpx.OK(w, struct{}{})
}

// maxOnBindInvites bounds the work one unauthenticated onbind request
// can cause.
const maxOnBindInvites = 50

// completeThirdPartyInvite turns one pending third-party invite of a
// local user into an invite: sent here when the inviting user is local,
// otherwise exchanged at the inviting user's server.
func (s *Server) completeThirdPartyInvite(ctx context.Context, roomID, sender, target string, signed thirdPartySigned) error {
	if domainOf(sender) == s.serverName {
		_, err := s.sendThirdPartyInvite(ctx, roomID, sender, target, signed)
		return err
	}
	server := domainOf(sender)
	if server == "" {
		return mxerr.New(mxerr.InvalidParam, "invalid sender %q", sender)
	}
	var body exchangeRequest
	body.Type, body.RoomID, body.Sender, body.StateKey = "m.room.member", roomID, sender, target
	body.Content.Membership = "invite"
	// The inviting server takes display_name from its own
	// m.room.third_party_invite; this server does not know it.
	body.Content.ThirdPartyInvite = &memberThirdPartyInvite{Signed: signed}
	uri := "/_matrix/federation/v1/exchange_third_party_invite/" + pathEscape(roomID)
	return s.client.signed(ctx, server, http.MethodPut, uri, body, nil)
}
