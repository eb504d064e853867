package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

func (s *Server) roomMembershipRoutes(r chi.Router) {
	const v3 = "/_matrix/client/v3"
	handle(r, http.MethodPost, v3+"/createRoom", s.createRoom)
	handle(r, http.MethodPost, v3+"/join/{roomIdOrAlias}", s.joinByIDOrAlias)
	handle(r, http.MethodPost, v3+"/knock/{roomIdOrAlias}", s.knock)
	handle(r, http.MethodPost, v3+"/rooms/{roomId}/join", s.joinRoom)
	handle(r, http.MethodPost, v3+"/rooms/{roomId}/leave", s.leaveRoom)
	handle(r, http.MethodPost, v3+"/rooms/{roomId}/forget", s.forgetRoom)
	for _, action := range []string{"invite", "kick", "ban", "unban"} {
		handle(r, http.MethodPost, v3+"/rooms/{roomId}/"+action, s.membershipAction(action))
	}
	handle(r, http.MethodGet, v3+"/joined_rooms", s.joinedRooms)
	handle(r, http.MethodGet, v3+"/rooms/{roomId}/members", s.members)
	handle(r, http.MethodGet, v3+"/rooms/{roomId}/joined_members", s.joinedMembers)
}

// membershipBody is the body of join, leave, knock, invite, kick, ban
// and unban.
type membershipBody struct {
	UserID           *string         `json:"user_id"`
	Reason           string          `json:"reason"`
	ThirdPartySigned json.RawMessage `json:"third_party_signed"`
	// Third-party invites (POST /invite with id_server) are refused.
	Medium string `json:"medium"`
}

// resolveRoom turns a {roomIdOrAlias} parameter into a room ID. A local
// alias is looked up here; an alias on another server is returned as
// is, for the caller to take over federation. remote reports that the
// room is not held here (another server's alias, or a room with no
// joined user of this server).
func (s *Server) resolveRoom(ctx context.Context, r *http.Request) (target string, remote bool, err error) {
	target, err = unescapedParam(r, "roomIdOrAlias")
	if err != nil {
		return "", false, err
	}
	switch {
	case strings.HasPrefix(target, "#"):
		if !validAlias(target) {
			return "", false, mxerr.New(mxerr.InvalidParam, "%q is not a valid room alias", target)
		}
		if domainOf(target) != s.serverName {
			return target, true, nil
		}
		roomID, _, err := s.lookupAlias(ctx, target)
		return roomID, false, err
	case validRoomID(target):
		held, err := s.heldHere(ctx, target)
		return target, !held, err
	}
	return "", false, mxerr.New(mxerr.InvalidParam, "%q is neither a room ID nor a room alias", target)
}

// joinByIDOrAlias joins a room by ID or alias, over federation when the
// room is held elsewhere.
// Spec: client-server-api, "POST /_matrix/client/v3/join/{roomIdOrAlias}".
func (s *Server) joinByIDOrAlias(w http.ResponseWriter, r *http.Request) error {
	target, remote, err := s.resolveRoom(r.Context(), r)
	if err != nil {
		return err
	}
	if remote {
		return s.joinElsewhere(w, r, target, joinVia(r))
	}
	if via, partial, err := s.partialStateVia(r.Context(), target, joinVia(r)); err != nil {
		return err
	} else if partial {
		return s.joinElsewhere(w, r, target, via)
	}
	return s.join(w, r, target)
}

// partialStateVia reports whether roomID, held here, still has partial
// state (a partial-state join's resync is running) and a federation to
// reach its resident servers through. A join or knock must then go
// through a resident server, as for a room not held here: the partial
// state may lack the user's ban or earlier membership, so this server
// cannot authorise it, and the resident server's answer brings what it
// lacks. via is the servers to try: the one the partial-state join went
// through, then those send_join named as in the room, then the client's
// (clientVia). Synapse does the same, and Complement expects it
// (TestPartialStateJoin "Leave during resync/works after a second
// partial join": the resident server gets send_join, not a PDU).
// Spec: server-server-api, "Joining Rooms"; MSC3706.
func (s *Server) partialStateVia(ctx context.Context, roomID string, clientVia []string) ([]string, bool, error) {
	if s.federation == nil {
		return nil, false, nil
	}
	servers, partial, err := s.rooms.rooms.PartialStateServers(ctx, roomID)
	if err != nil || !partial {
		return nil, false, err
	}
	var via []string
	for _, server := range append(servers, clientVia...) {
		if server != "" && server != s.serverName && !slices.Contains(via, server) {
			via = append(via, server)
		}
	}
	return via, true, nil
}

// joinRoom joins a room by ID.
// Spec: client-server-api, "POST /_matrix/client/v3/rooms/{roomId}/join".
func (s *Server) joinRoom(w http.ResponseWriter, r *http.Request) error {
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	held, err := s.heldHere(r.Context(), roomID)
	if err != nil {
		return err
	}
	if !held {
		return s.joinElsewhere(w, r, roomID, nil)
	}
	if via, partial, err := s.partialStateVia(r.Context(), roomID, nil); err != nil {
		return err
	} else if partial {
		return s.joinElsewhere(w, r, roomID, via)
	}
	return s.join(w, r, roomID)
}

// joinElsewhere joins a room held by other servers.
func (s *Server) joinElsewhere(w http.ResponseWriter, r *http.Request, target string, via []string) error {
	var body membershipBody
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	if len(body.ThirdPartySigned) > 0 {
		return mxerr.New(mxerr.Forbidden, "third-party invites are not supported by this server")
	}
	me := caller(r)
	if me.IsGuest {
		return mxerr.New(mxerr.GuestAccessForbidden, "guests may not join rooms on other servers")
	}
	roomID, err := s.joinRemote(r.Context(), target, me.UserID, via)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]string{"room_id": roomID})
}

func (s *Server) join(w http.ResponseWriter, r *http.Request, roomID string) error {
	ctx := r.Context()
	me := caller(r)
	raw, err := httpx.ReadBody(r)
	if err != nil {
		return err
	}
	var body membershipBody
	var extra map[string]any
	if err := httpx.Unmarshal(raw, &body); err != nil {
		return err
	}
	if err := httpx.Unmarshal(raw, &extra); err != nil {
		return err
	}
	if len(body.ThirdPartySigned) > 0 {
		return mxerr.New(mxerr.Forbidden, "third-party invites are not supported by this server")
	}
	if me.IsGuest {
		if err := s.checkGuestCanJoin(ctx, roomID); err != nil {
			return err
		}
		if afterGuestJoinCheck != nil {
			afterGuestJoinCheck()
		}
	}
	_, err = s.rooms.rooms.Join(ctx, roomserver.MembershipRequest{
		RoomID: roomID, Sender: me.UserID, Reason: body.Reason, Content: joinContent(extra, s.memberProfile(ctx, me.UserID)),
	})
	if (mxerr.Is(err, mxerr.UnableToGrantJoin) || mxerr.Is(err, mxerr.UnableToAuthoriseJoin)) && s.federation != nil && !me.IsGuest {
		// A restricted room no member of ours may let the user into:
		// join through another resident server, as a remote join.
		// Spec: client-server-api, "Restricted rooms".
		err = s.joinThroughOthers(ctx, roomID, me.UserID, joinVia(r), err)
	}
	if err != nil {
		return err
	}
	if me.IsGuest {
		// guest_access may have stopped being can_join between the check
		// above and the join's commit, and the queued check of that change
		// (guest_leaves.go) may have run before the join was in: look
		// again now that it is, and leave if the room is closed to guests.
		if err := s.checkGuestCanJoin(ctx, roomID); err != nil {
			if lerr := s.leave(ctx, me.UserID, roomID, ""); lerr != nil {
				// The queued check may have made the guest leave already.
				if m, merr := s.rooms.rooms.Membership(ctx, roomID, me.UserID); merr != nil || m == "join" {
					return lerr
				}
			}
			return err
		}
	}
	return httpx.OK(w, map[string]string{"room_id": roomID})
}

// joinThroughOthers joins roomID over federation through via and the
// other servers in the room; localErr is returned if there is none.
func (s *Server) joinThroughOthers(ctx context.Context, roomID, userID string, via []string, localErr error) error {
	servers, err := s.rooms.rooms.JoinedServers(ctx, roomID)
	if err != nil {
		return err
	}
	var others []string
	for _, server := range append(append([]string{}, via...), servers...) {
		if server != s.serverName && !slices.Contains(others, server) {
			others = append(others, server)
		}
	}
	if len(others) == 0 {
		return localErr
	}
	_, err = s.federation.JoinRemote(ctx, roomID, userID, others)
	return err
}

// joinContent is the content of a join: the keys of the request body
// beyond those the endpoint defines, then the user's profile. The spec
// names only reason and third_party_signed, but servers (Synapse) copy
// other keys of the body into the m.room.member content, which clients
// and Complement ("POST /join/:room_id can join a room with custom
// content") rely on. The profile wins over the body, and the roomserver
// overwrites membership and drops the keys that carry authorisation
// (join_authorised_via_users_server, third_party_invite).
func joinContent(body, profile map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range body {
		switch k {
		case "reason", "third_party_signed", "membership":
			continue
		}
		out[k] = v
	}
	for k, v := range profile {
		out[k] = v
	}
	return out
}

// checkGuestCanJoin refuses guests unless the room's m.room.guest_access
// is can_join. Spec: client-server-api, "Guest Access".
func (s *Server) checkGuestCanJoin(ctx context.Context, roomID string) error {
	ok, err := s.guestsMayJoin(ctx, roomID)
	if err != nil || ok {
		return err
	}
	return mxerr.New(mxerr.GuestAccessForbidden, "guests may not join this room")
}

// knock asks to join a room.
// Spec: client-server-api, "POST /_matrix/client/v3/knock/{roomIdOrAlias}".
func (s *Server) knock(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	if caller(r).IsGuest {
		// Spec: client-server-api, "Guest Access", "Client behaviour":
		// knock is not among the endpoints guests may use.
		return mxerr.New(mxerr.GuestAccessForbidden, "guests may not knock on rooms")
	}
	roomID, remote, err := s.resolveRoom(ctx, r)
	if err != nil {
		return err
	}
	var body membershipBody
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	me := caller(r)
	via := joinVia(r)
	if !remote {
		var partial bool
		if via, partial, err = s.partialStateVia(ctx, roomID, via); err != nil {
			return err
		}
		remote = partial
		if partial {
			// The auth rules refuse a knock from a user whose membership
			// is ban, invite or join (rooms/v7+, "Authorization rules",
			// m.room.member knock). Such a membership of our own user in
			// the state held here is known without asking a resident
			// server; what the partial state may lack is only the
			// memberships of users not yet in it.
			m, err := s.rooms.rooms.Membership(ctx, roomID, me.UserID)
			if err != nil {
				return err
			}
			if m == "ban" || m == "invite" || m == "join" {
				return mxerr.New(mxerr.Forbidden, "%s cannot knock on %s: their membership is %s", me.UserID, roomID, m)
			}
		}
	}
	if remote {
		if s.federation == nil {
			return mxerr.New(mxerr.NotFound, "%s is held by other servers and federation is off", roomID)
		}
		content := s.memberProfile(ctx, me.UserID)
		if body.Reason != "" {
			content["reason"] = body.Reason
		}
		roomID, err = s.federation.KnockRemote(ctx, roomID, me.UserID, content, via)
		if err != nil {
			return err
		}
		return httpx.OK(w, map[string]string{"room_id": roomID})
	}
	_, err = s.rooms.rooms.Knock(ctx, roomserver.MembershipRequest{
		RoomID: roomID, Sender: me.UserID, Reason: body.Reason, Content: s.memberProfile(ctx, me.UserID),
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]string{"room_id": roomID})
}

// leaveRoom leaves a room, rejects an invite or withdraws a knock.
// Spec: client-server-api, "POST /_matrix/client/v3/rooms/{roomId}/leave".
func (s *Server) leaveRoom(w http.ResponseWriter, r *http.Request) error {
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	var body membershipBody
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	ctx := r.Context()
	if err := s.checkNotRejectingServerNotices(ctx, caller(r).UserID, roomID); err != nil {
		return err
	}
	if err := s.leave(ctx, caller(r).UserID, roomID, body.Reason); err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// leave makes userID leave roomID, reject its invite or withdraw its
// knock: through a server holding the room when this one does not,
// else through the roomserver. It is POST /leave's work, and a
// deactivated account's (deactivation.go).
func (s *Server) leave(ctx context.Context, userID, roomID, reason string) error {
	remote, err := s.leavesThroughRemote(ctx, userID, roomID)
	if err != nil {
		return err
	}
	if remote {
		// Rejecting an invite to a room only other servers hold.
		if err := s.federation.LeaveRemote(ctx, roomID, userID, nil); err != nil {
			// Leaving again a room this server knows the user left (no
			// invite to reject) changes nothing: success, as Synapse
			// answers (Complement: msc3902 "Leave during resync").
			if m, merr := s.rooms.rooms.Membership(ctx, roomID, userID); !mxerr.Is(err, mxerr.NotFound) || merr != nil || m != "leave" {
				return err
			}
		}
		return nil
	}
	_, err = s.rooms.rooms.Leave(ctx, roomserver.MembershipRequest{RoomID: roomID, Sender: userID, Reason: reason})
	return err
}

// leavesThroughRemote reports whether leave would leave roomID through
// another server (a room this one does not hold).
func (s *Server) leavesThroughRemote(ctx context.Context, userID, roomID string) (bool, error) {
	held, err := s.heldHere(ctx, roomID)
	if err != nil {
		return false, err
	}
	return !held && s.federation != nil && !s.localInviteToEmptyRoom(ctx, roomID, userID), nil
}

// localInviteToEmptyRoom reports whether userID is invited to a room
// held here in which, as far as this server knows, nobody on any server
// is joined any more (the inviter left): the user rejects the invite
// here, as there is no other server to ask. Complement: TestRoomsInvite
// "Invited user can reject invite for empty room".
func (s *Server) localInviteToEmptyRoom(ctx context.Context, roomID, userID string) bool {
	if m, err := s.rooms.rooms.Membership(ctx, roomID, userID); err != nil || m != "invite" {
		return false
	}
	servers, err := s.rooms.rooms.JoinedServers(ctx, roomID)
	return err == nil && len(servers) == 0
}

// forgetRoom forgets a room the caller has left.
// Spec: client-server-api, "POST /_matrix/client/v3/rooms/{roomId}/forget".
func (s *Server) forgetRoom(w http.ResponseWriter, r *http.Request) error {
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	if err := s.rooms.rooms.Forget(r.Context(), caller(r).UserID, roomID); err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// membershipAction serves invite, kick, ban and unban, which share a body
// ({user_id, reason}) and an empty answer.
// Spec: client-server-api, "POST /_matrix/client/v3/rooms/{roomId}/invite",
// ".../kick", ".../ban", ".../unban".
func (s *Server) membershipAction(action string) httpx.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		ctx := r.Context()
		roomID, err := pathRoomID(r)
		if err != nil {
			return err
		}
		var body membershipBody
		if err := httpx.DecodeJSON(r, &body); err != nil {
			return err
		}
		if action == "invite" && body.Medium != "" {
			return mxerr.New(mxerr.Forbidden, "third-party invites are not supported by this server")
		}
		if body.UserID == nil {
			return mxerr.New(mxerr.MissingParam, "user_id is required")
		}
		if !validUserID(*body.UserID) {
			return mxerr.New(mxerr.InvalidParam, "%q is not a user ID", *body.UserID)
		}
		me := caller(r)
		if me.IsGuest {
			return mxerr.New(mxerr.GuestAccessForbidden, "guests cannot %s users", action)
		}
		req := roomserver.MembershipRequest{RoomID: roomID, Sender: me.UserID, Target: *body.UserID, Reason: body.Reason}
		switch action {
		case "invite":
			switch {
			case domainOf(req.Target) == s.serverName:
				if err = s.CheckInvite(ctx, req.Sender, req.Target); err != nil {
					break
				}
				req.Content = s.memberProfile(ctx, req.Target)
				_, err = s.rooms.rooms.Invite(ctx, req)
			case s.federation != nil:
				// Spec: server-server-api, "Inviting to a room": the
				// invitee's server signs the invite first.
				_, err = s.federation.InviteRemote(ctx, req)
			default:
				err = mxerr.New(mxerr.Forbidden, "%s is on another server and federation is off", req.Target)
			}
		case "kick":
			_, err = s.rooms.rooms.Kick(ctx, req)
		case "ban":
			_, err = s.rooms.rooms.Ban(ctx, req)
		case "unban":
			_, err = s.rooms.rooms.Unban(ctx, req)
		}
		if err != nil {
			return err
		}
		return httpx.OK(w, httpx.EmptyObject)
	}
}

// joinedRooms lists the rooms the caller is joined to.
// Spec: client-server-api, "GET /_matrix/client/v3/joined_rooms".
func (s *Server) joinedRooms(w http.ResponseWriter, r *http.Request) error {
	rooms, err := s.rooms.rooms.JoinedRooms(r.Context(), caller(r).UserID)
	if err != nil {
		return err
	}
	if rooms == nil {
		rooms = []string{}
	}
	return httpx.OK(w, map[string][]string{"joined_rooms": rooms})
}

// validMemberships are the values of membership and not_membership.
var validMemberships = map[string]bool{"join": true, "invite": true, "knock": true, "leave": true, "ban": true}

// members answers with the room's m.room.member events, at a point in
// time if asked.
// Spec: client-server-api, "GET /_matrix/client/v3/rooms/{roomId}/members".
func (s *Server) members(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	membership, notMembership := q.Get("membership"), q.Get("not_membership")
	for _, m := range []string{membership, notMembership} {
		if m != "" && !validMemberships[m] {
			return mxerr.New(mxerr.InvalidParam, "%q is not a membership", m)
		}
	}
	me := caller(r)
	// A partial-state room lists every member once its resync is done.
	if err := s.rooms.rooms.AwaitFullState(ctx, roomID); err != nil {
		return err
	}
	var state []*roomserver.Event
	if at := q.Get("at"); at != "" {
		state, err = s.stateAtToken(ctx, me.UserID, roomID, at)
	} else {
		state, err = s.rooms.rooms.Members(ctx, me.UserID, roomID, "")
	}
	if err != nil {
		return err
	}
	var chunk []*roomserver.Event
	for _, e := range state {
		if e.Type != "m.room.member" {
			continue
		}
		// Both given: "either the membership is the same as membership or
		// is not the same as not_membership".
		keep := membership == "" && notMembership == "" ||
			membership != "" && e.Membership == membership ||
			notMembership != "" && e.Membership != notMembership
		if keep {
			chunk = append(chunk, e)
		}
	}
	f := s.formatter(me.UserID, me.DeviceID)
	out, err := f.many(ctx, chunk)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"chunk": out})
}

// stateAtToken returns the room state at a pagination token (a /sync
// prev_batch or next_batch, or a /messages token): the state after the
// last event before it that userID may see. A token before the room's
// create event (the prev_batch of a /sync timeline that holds the whole
// room) reads as the room as created: the state after its creator's
// join (roomAsCreated). Any other token no visible event precedes names
// no point of the room the user may read: M_NOT_FOUND, as Synapse
// answers, rather than the current state, which would list members who
// joined after it. Complement: TestGetRoomMembersAtPoint.
func (s *Server) stateAtToken(ctx context.Context, userID, roomID, token string) ([]*roomserver.Event, error) {
	if err := s.requireReadable(ctx, userID, roomID); err != nil {
		return nil, err
	}
	topo, ok, err := s.paginationToken(ctx, roomID, token, roomserver.Backward)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, mxerr.New(mxerr.InvalidParam, "at is not a valid pagination token")
	}
	page, err := s.rooms.rooms.Messages(ctx, roomserver.MessagesRequest{UserID: userID, RoomID: roomID, From: topo, Dir: roomserver.Backward, Limit: 1})
	if err != nil {
		return nil, err
	}
	point := ""
	if len(page.Events) > 0 {
		point = page.Events[0].EventID
	} else if point, err = s.roomAsCreated(ctx, userID, roomID, token); err != nil {
		return nil, err
	}
	if point == "" {
		return nil, mxerr.New(mxerr.NotFound, "no event of the room you may see precedes %s", token)
	}
	at, err := s.rooms.rooms.StateAt(ctx, userID, point)
	if err != nil {
		return nil, err
	}
	return at.After, nil
}

// roomAsCreated returns the creator's join of roomID when token lies
// before the room's create event ("" otherwise, or when userID may not
// see those events). A /sync timeline that starts with the create
// event has a prev_batch before the room existed, and the spec offers
// exactly that token for "at"; the earliest point with members is the
// room as its creator made it, the creator joined (the event after
// m.room.create, by the auth rules; rooms/v1 onwards, "m.room.member":
// the creator's join is the only member event allowed right after
// create).
// Spec: client-server-api, GET /rooms/{roomId}/members ("at ... can be
// obtained from a prev_batch token returned for each room by the sync API").
func (s *Server) roomAsCreated(ctx context.Context, userID, roomID, token string) (string, error) {
	from, ok, err := s.paginationToken(ctx, roomID, token, roomserver.Forward)
	if err != nil || !ok {
		return "", err
	}
	page, err := s.rooms.rooms.Messages(ctx, roomserver.MessagesRequest{UserID: userID, RoomID: roomID, From: from, Dir: roomserver.Forward, Limit: 2})
	if err != nil {
		return "", err
	}
	if len(page.Events) < 2 || page.Events[0].Type != "m.room.create" {
		return "", nil
	}
	join := page.Events[1]
	if join.Type != "m.room.member" || join.StateKey == nil || *join.StateKey != join.Sender ||
		join.Sender != page.Events[0].Sender || join.Membership != "join" {
		return "", nil
	}
	return join.EventID, nil
}

// joinedMembers maps each joined user to their display name and avatar.
// Spec: client-server-api, "GET /_matrix/client/v3/rooms/{roomId}/joined_members".
func (s *Server) joinedMembers(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	me := caller(r)
	if err := s.requireJoined(ctx, roomID, me.UserID); err != nil {
		return err
	}
	if err := s.rooms.rooms.AwaitFullState(ctx, roomID); err != nil {
		return err // a partial-state room lists every member once its resync is done
	}
	members, err := s.rooms.rooms.Members(ctx, me.UserID, roomID, "join")
	if err != nil {
		return err
	}
	// Both keys are always present, null when the member event has no
	// value, as Synapse answers and Complement ("joined_members fetches
	// my membership") checks; clients read a missing and a null value
	// alike.
	type member struct {
		DisplayName *string `json:"display_name"`
		AvatarURL   *string `json:"avatar_url"`
	}
	joined := map[string]member{}
	for _, e := range members {
		var c struct {
			DisplayName *string `json:"displayname"`
			AvatarURL   *string `json:"avatar_url"`
		}
		_ = json.Unmarshal(e.Content, &c)
		if e.StateKey != nil {
			joined[*e.StateKey] = member{DisplayName: c.DisplayName, AvatarURL: c.AvatarURL}
		}
	}
	return httpx.OK(w, map[string]any{"joined": joined})
}

// requireJoined answers M_FORBIDDEN unless userID is joined to roomID,
// and M_NOT_FOUND for rooms this server does not know.
func (s *Server) requireJoined(ctx context.Context, roomID, userID string) error {
	if _, err := s.rooms.rooms.RoomVersion(ctx, roomID); err != nil {
		return err
	}
	m, err := s.rooms.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return err
	}
	if m != "join" {
		return mxerr.New(mxerr.Forbidden, "you are not joined to room %s", roomID)
	}
	return nil
}
