package federationapi

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// Serving the membership handshakes of other servers' users.
// Spec: server-server-api, "Joining Rooms", "Knocking upon a room",
// "Inviting to a room", "Leaving Rooms (Rejecting Invites)".

// makeMembership is GET /v1/make_{join,leave,knock}/{roomId}/{userId}.
func (s *Server) makeMembership(membership string) httpx.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		ctx := r.Context()
		origin := originOf(ctx)
		userID := pathParam(r, "userID")
		if domainOf(userID) != origin {
			return mxerr.New(mxerr.Forbidden, "%s may only ask for its own users, not %s", origin, userID)
		}
		vers := r.URL.Query()["ver"]
		if membership == "leave" {
			vers = nil // make_leave has no ver: any version will do
		}
		req := roomserver.TemplateRequest{RoomID: roomParam(r), UserID: userID, Membership: membership, SupportedVersions: vers}
		if err := s.refuseWhilePartial(ctx, req.RoomID, membership); err != nil {
			return err
		}
		if membership == "leave" {
			v, err := s.rooms.RoomVersion(ctx, req.RoomID)
			if err != nil {
				return err
			}
			req.SupportedVersions = []string{v}
		}
		version, template, err := s.rooms.MembershipTemplate(ctx, req)
		if err != nil {
			return err
		}
		return httpx.OK(w, map[string]any{"room_version": version, "event": template})
	}
}

// sendMembership is PUT /v2/send_join, /v2/send_leave and /v1/send_knock:
// the event must be the membership asked for, of its own sender, who is
// a user of the origin (security case 12); nothing is stored otherwise.
func (s *Server) sendMembership(membership string) httpx.HandlerFunc {
	return s.sendMembershipAs(membership, false)
}

// sendMembershipV1 is the deprecated PUT /v1/send_join and /v1/send_leave:
// the same validation and effect as v2, but the answer is the array
// [200, body] the v1 endpoints specify.
// Spec: server-server-api, "PUT /_matrix/federation/v1/send_join" and
// "PUT /_matrix/federation/v1/send_leave".
func (s *Server) sendMembershipV1(membership string) httpx.HandlerFunc {
	return s.sendMembershipAs(membership, true)
}

// sendMembershipAs returns the handler as a method value, not a closure:
// a closure returned by a function this small is copied into every caller
// it is inlined into, and the five routes would link five copies of the
// handler (~4.8 kB of code each; docs/benchmarks.md, "idlerss4").
func (s *Server) sendMembershipAs(membership string, v1 bool) httpx.HandlerFunc {
	return (&membershipSender{s: s, membership: membership, v1: v1}).serve
}

// membershipSender is the handler of one send_join/send_leave/send_knock
// route: the membership it accepts, and whether it answers in v1's form.
type membershipSender struct {
	s          *Server
	membership string
	v1         bool
}

// ok writes body, as v1's array [200, body] on the v1 endpoints.
func (h *membershipSender) ok(w http.ResponseWriter, body any) error {
	if h.v1 {
		return httpx.OK(w, []any{http.StatusOK, body})
	}
	return httpx.OK(w, body)
}

func (h *membershipSender) serve(w http.ResponseWriter, r *http.Request) error {
	s, membership, v1 := h.s, h.membership, h.v1
	ctx := r.Context()
	origin := originOf(ctx)
	roomID, eventID := roomParam(r), pathParam(r, "eventID")
	body, err := httpx.ReadBody(r)
	if err != nil {
		return err
	}
	version, err := s.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return err
	}
	if err := s.refuseWhilePartial(ctx, roomID, membership); err != nil {
		return err
	}
	// A restricted join that names one of our users as authoriser
	// carries no signature of ours yet: only the sender's server's is
	// checked, and we sign once the join is known to be allowed.
	// Spec: server-server-api, "Restricted rooms"; rooms/v8.
	authorisedHere := false
	if membership == "join" {
		via := gjson.GetBytes(body, "content.join_authorised_via_users_server")
		authorisedHere = via.Type == gjson.String && domainOf(via.Str) == s.serverName
	}
	p, _, err := s.checkPDUWith(ctx, body, version, authorisedHere)
	if err != nil {
		return mxerr.Wrap(err, mxerr.BadJSON, "invalid event: %v", err)
	}
	pdu := p.pdu
	if err := checkMembershipEvent(pdu, roomID, membership); err != nil {
		return err
	}
	if pdu.EventID() != eventID {
		return mxerr.New(mxerr.BadJSON, "event ID is %s, not %s", pdu.EventID(), eventID)
	}
	if domainOf(string(pdu.SenderID())) != origin {
		return mxerr.New(mxerr.Forbidden, "%s may not send a membership event for %s", origin, pdu.SenderID())
	}
	signed := false
	if authorisedHere {
		// The joiner must still meet the allow conditions now, as at
		// make_join: the auth rules only check the authoriser's power.
		if _, _, err := s.rooms.MembershipTemplate(ctx, roomserver.TemplateRequest{
			RoomID: roomID, UserID: string(pdu.SenderID()), Membership: "join", SupportedVersions: []string{version},
		}); err != nil {
			return err
		}
		pdu = pdu.Sign(s.serverName, gomatrixserverlib.KeyID(s.key.ID), s.key.PrivateKey)
		p.json = pdu.JSON()
		signed = true
	}
	resp, err := s.input(ctx, p)
	if err != nil {
		return err
	}
	if resp.Outcome != roomserver.Accepted && resp.Outcome != roomserver.Duplicate {
		return mxerr.New(mxerr.Forbidden, "the %s is not allowed: %s", membership, resp.Reason)
	}
	if resp.Outcome == roomserver.Accepted && resp.StreamPos > 0 && s.cfg.Enabled {
		if err := s.relay(ctx, roomID, resp.StreamPos, origin); err != nil {
			httpx.Logger(ctx).Warn("relaying a membership event to the room", "event_id", eventID, "err", err)
		}
	}
	switch membership {
	case "join":
		// The event we signed is answered as stored: with the
		// signature of the room's policy server, which storing it
		// asked for (roomserver/policy.go), or as it was first
		// stored when this is a retry.
		var event json.RawMessage
		if signed {
			stored, _, err := s.rooms.FederationEvent(ctx, eventID)
			if err != nil {
				return err
			}
			event = stored.JSON
		}
		if !v1 && r.URL.Query().Get("omit_members") == "true" && !s.fullStateJoins.Load() {
			return s.partialSendJoinAnswer(w, r, eventID, event)
		}
		state, chain, err := s.rooms.StateAndAuthChainBefore(ctx, eventID)
		if err != nil {
			return err
		}
		servers, err := s.rooms.JoinedServers(ctx, roomID)
		if err != nil {
			return err
		}
		out := map[string]any{
			"origin": s.serverName, "state": pdus(state), "auth_chain": pdus(chain),
			"members_omitted": false, "servers_in_room": servers,
		}
		if event != nil {
			out["event"] = event
		}
		return h.ok(w, out)
	case "knock":
		state, err := s.strippedState(r.Context(), roomID)
		if err != nil {
			return err
		}
		return h.ok(w, map[string]any{"knock_room_state": state})
	}
	return h.ok(w, httpx.EmptyObject)
}

// checkMembershipEvent: an m.room.member event in roomID whose state_key
// is its sender and whose membership is want.
func checkMembershipEvent(pdu gomatrixserverlib.PDU, roomID, want string) error {
	if pdu.Type() != "m.room.member" {
		return mxerr.New(mxerr.BadJSON, "not an m.room.member event")
	}
	if pdu.RoomID().String() != roomID {
		return mxerr.New(mxerr.BadJSON, "event is in room %s, not %s", pdu.RoomID().String(), roomID)
	}
	if pdu.StateKey() == nil || *pdu.StateKey() != string(pdu.SenderID()) {
		return mxerr.New(mxerr.BadJSON, "state_key must be the sender")
	}
	if m, err := pdu.Membership(); err != nil || m != want {
		return mxerr.New(mxerr.BadJSON, "membership must be %s", want)
	}
	return nil
}

// strippedState is the state a knocker or invitee may see: the room's
// name, avatar, topic, join rules, canonical alias, create and
// encryption events. Spec: client-server-api, "Stripped state".
func (s *Server) strippedState(ctx context.Context, roomID string) ([]json.RawMessage, error) {
	var out []json.RawMessage
	for _, t := range []string{"m.room.create", "m.room.name", "m.room.avatar", "m.room.topic", "m.room.join_rules",
		"m.room.canonical_alias", "m.room.encryption"} {
		ev, err := s.rooms.RoomStateEvent(ctx, roomID, t, "")
		if mxerr.Is(err, mxerr.NotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if ev.Type == "m.room.create" {
			// MSC4311: the create event travels whole (the full PDU), so
			// the receiver can check the room ID against it and clients
			// get its origin_server_ts and room_id (Complement:
			// TestMSC4311FullCreateEventOnStrippedState).
			out = append(out, ev.JSON)
			continue
		}
		stripped, err := json.Marshal(map[string]any{"type": ev.Type, "state_key": "", "sender": ev.Sender, "content": ev.Content})
		if err != nil {
			return nil, err
		}
		out = append(out, stripped)
	}
	return out, nil
}

// invite is PUT /v2/invite/{roomId}/{eventId}: only an m.room.member
// invite for one of our users, sent by a user of the origin (security
// case 13). We sign it and return it; nothing is signed otherwise.
func (s *Server) invite(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	origin := originOf(ctx)
	roomID, eventID := pathParam(r, "roomID"), pathParam(r, "eventID")
	var req inviteRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	signedJSON, err := s.acceptInvite(ctx, origin, roomID, eventID, req)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"event": json.RawMessage(signedJSON)})
}

// inviteRequest is the body of PUT /v2/invite (v1 carries the same in
// another shape).
type inviteRequest struct {
	RoomVersion     string            `json:"room_version"`
	Event           json.RawMessage   `json:"event"`
	InviteRoomState []json.RawMessage `json:"invite_room_state"`
}

// acceptInvite checks an invite another server sends for a local user
// (v1 and v2), countersigns it, stores it, and returns the signed event.
func (s *Server) acceptInvite(ctx context.Context, origin, roomID, eventID string, req inviteRequest) (json.RawMessage, error) {
	if !slices.Contains([]string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}, req.RoomVersion) {
		return nil, mxerr.New(mxerr.IncompatibleRoomVersion, "room version %q is not supported", req.RoomVersion).
			With("room_version", req.RoomVersion)
	}
	// Cheap checks before any key fetch.
	var head struct {
		Type     string `json:"type"`
		Sender   string `json:"sender"`
		StateKey string `json:"state_key"`
	}
	if err := json.Unmarshal(req.Event, &head); err != nil {
		return nil, mxerr.New(mxerr.BadJSON, "invalid event")
	}
	if domainOf(head.Sender) != origin {
		return nil, mxerr.New(mxerr.Forbidden, "%s may not send an invite from %s", origin, head.Sender)
	}
	if head.Type != "m.room.member" || domainOf(head.StateKey) != s.serverName {
		return nil, mxerr.New(mxerr.Forbidden, "not an invite for a user of this server")
	}
	p, _, err := s.checkPDUWith(ctx, req.Event, req.RoomVersion, true)
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.Forbidden, "invalid invite: %v", err)
	}
	pdu := p.pdu
	if m, err := pdu.Membership(); err != nil || m != "invite" || pdu.Type() != "m.room.member" {
		return nil, mxerr.New(mxerr.Forbidden, "not an invite")
	}
	if pdu.RoomID().String() != roomID || pdu.EventID() != eventID {
		return nil, mxerr.New(mxerr.BadJSON, "event does not match the path")
	}
	if domainOf(string(pdu.SenderID())) != origin || pdu.StateKey() == nil || domainOf(*pdu.StateKey()) != s.serverName {
		return nil, mxerr.New(mxerr.Forbidden, "invite sender or target does not match")
	}
	if _, err := spec.NewUserID(*pdu.StateKey(), true); err != nil {
		return nil, mxerr.New(mxerr.BadJSON, "invalid invitee")
	}
	if s.checkInvite != nil {
		// MSC4155: the invitee may refuse invites from this sender.
		if err := s.checkInvite(ctx, string(pdu.SenderID()), *pdu.StateKey()); err != nil {
			return nil, err
		}
	}
	// Security case 8: keep only well-formed stripped state objects.
	stripped := wellFormedStripped(req.InviteRoomState)
	signedPDU := pdu.Sign(s.serverName, gomatrixserverlib.KeyID(s.key.ID), s.key.PrivateKey)
	signedJSON := signedPDU.JSON()
	if _, err := s.rooms.RoomVersion(ctx, roomID); err == nil {
		// A room we hold: the invite goes through the roomserver.
		if _, err := s.rooms.InputEvent(ctx, roomserver.InputEventRequest{RoomVersion: req.RoomVersion, JSON: signedJSON}); err != nil {
			s.log.Info("storing signed invite failed", "room_id", roomID, "err", err)
		}
	} else {
		strippedJSON, err := json.Marshal(stripped)
		if err != nil {
			return nil, err
		}
		err = s.storePendingMembership(ctx, pendingMembership{
			userID: *pdu.StateKey(), roomID: roomID, eventID: eventID, roomVersion: req.RoomVersion,
			event: signedJSON, strippedState: strippedJSON, membership: "invite",
		})
		if err != nil {
			return nil, err
		}
	}
	return signedJSON, nil
}

// RemoteInviteStream is the name under which Deps.Notify is told that a
// remote invite arrived.
const RemoteInviteStream = "remote_invites"

// RemoteInvite is an invite of a local user to a room this server is not
// in, as received from the inviting server.
type RemoteInvite struct {
	// Membership is invite, or knock for a knock of the user's on a
	// room held elsewhere (InviteRoomState is then the knock_room_state
	// the resident server answered).
	Membership      string
	RoomID          string
	EventID         string
	RoomVersion     string
	Event           json.RawMessage
	InviteRoomState json.RawMessage
	// StreamPos is the invite's position in the remote invite stream.
	StreamPos int64
	// LeaveUnsigned, for a leave of the user's own (Membership leave,
	// rejected or withdrawn here), is the unsigned data the client format
	// gives it: the invite or knock it replaced (replaces_state) and that
	// event's content (prev_content). Nil otherwise.
	LeaveUnsigned map[string]json.RawMessage
}

// RemoteInvites lists userID's pending invites to (and knocks on) rooms
// this server does not hold.
func (s *Server) RemoteInvites(ctx context.Context, userID string) ([]RemoteInvite, error) {
	all, err := s.RemoteInvitesSince(ctx, userID, -1, 0)
	var out []RemoteInvite
	for _, inv := range all {
		if inv.Membership != "leave" {
			out = append(out, inv)
		}
	}
	return out, err
}

// RemoteInvitesSince lists userID's pending remote invites received in
// stream positions (since, to]; since < 0 means from the start and to 0
// means no upper bound. An invite
// answered (joined or rejected) is no longer pending; one the room's
// server withdrew (or a knock it rejected) is listed with Membership
// leave.
func (s *Server) RemoteInvitesSince(ctx context.Context, userID string, since, to int64) ([]RemoteInvite, error) {
	if to <= 0 {
		to = maxSafeInt
	}
	rows, err := s.db.Reader().Query(ctx, `SELECT room_id, event_id, room_version, event, invite_room_state, stream_pos, membership
		FROM federation_remote_invites WHERE user_id = $1 AND stream_pos > $2 AND stream_pos <= $3 ORDER BY stream_pos`,
		userID, since, to)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []RemoteInvite
	for rows.Next() {
		var inv RemoteInvite
		var ev, st string
		if err := rows.Scan(&inv.RoomID, &inv.EventID, &inv.RoomVersion, &ev, &st, &inv.StreamPos, &inv.Membership); err != nil {
			return nil, err
		}
		inv.Event, inv.InviteRoomState = json.RawMessage(ev), json.RawMessage(st)
		if inv.Membership == "leave" {
			inv.LeaveUnsigned = s.leaveUnsigned(inv.Event)
		}
		out = append(out, inv)
	}
	return out, rows.Err()
}

// RemoteInviteHead is the newest position of the remote invite stream.
func (s *Server) RemoteInviteHead(ctx context.Context) (int64, error) {
	var pos int64
	err := s.db.Reader().QueryRow(ctx, `SELECT COALESCE(MAX(stream_pos), 0) FROM federation_remote_invite_positions`).Scan(&pos)
	return pos, err
}
