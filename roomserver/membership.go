package roomserver

import (
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Join joins Sender to a room this server is in: public rooms, rooms
// the user is invited to, and restricted rooms when the user is joined
// to an allowed room and a local member with invite power can authorise.
// Spec: client-server-api, "Joining rooms"; rooms/v8, "Restricted rooms".
func (s *Server) Join(ctx context.Context, req MembershipRequest) (*SendEventResponse, error) {
	req.Target = req.Sender
	content := memberContent(req, "join")
	// Joining again with the same content changes nothing: answer with
	// the current join instead of a new event (Synapse does the same; a
	// changed displayname, avatar or extra key still sends a new one).
	// Complement: TestRoomCreationReportsEventsToMyself "Joining room
	// twice is idempotent".
	if cur, err := s.IndexedStateKeys(ctx, req.RoomID, "m.room.member", []string{req.Sender}); err != nil {
		return nil, err
	} else if len(cur) == 1 && cur[0].Membership == "join" && sameContent(cur[0].Content, content) {
		return &SendEventResponse{EventID: cur[0].EventID, StreamPos: cur[0].StreamPos}, nil
	}
	via, err := s.restrictedJoinAuthoriser(ctx, req.RoomID, req.Sender)
	if err != nil {
		return nil, err
	}
	if via != "" {
		content["join_authorised_via_users_server"] = via
	}
	return s.sendMember(ctx, req, content)
}

// Leave leaves a room or rejects an invite or withdraws a knock.
func (s *Server) Leave(ctx context.Context, req MembershipRequest) (*SendEventResponse, error) {
	req.Target = req.Sender
	return s.sendMember(ctx, req, memberContent(req, "leave"))
}

// Invite invites Target. Spec: client-server-api, "Inviting users".
func (s *Server) Invite(ctx context.Context, req MembershipRequest) (*SendEventResponse, error) {
	if err := s.needTarget(req); err != nil {
		return nil, err
	}
	content := memberContent(req, "invite")
	if req.IsDirect {
		content["is_direct"] = true
	}
	return s.sendMember(ctx, req, content)
}

// Kick removes a joined, invited or knocking Target.
func (s *Server) Kick(ctx context.Context, req MembershipRequest) (*SendEventResponse, error) {
	if err := s.needTarget(req); err != nil {
		return nil, err
	}
	m, err := s.Membership(ctx, req.RoomID, req.Target)
	if err != nil {
		return nil, err
	}
	if m != "join" && m != "invite" && m != "knock" {
		return nil, mxerr.New(mxerr.Forbidden, "%s is not in the room (membership %q)", req.Target, m)
	}
	return s.sendMember(ctx, req, memberContent(req, "leave"))
}

// Ban bans Target.
func (s *Server) Ban(ctx context.Context, req MembershipRequest) (*SendEventResponse, error) {
	if err := s.needTarget(req); err != nil {
		return nil, err
	}
	return s.sendMember(ctx, req, memberContent(req, "ban"))
}

// Unban lifts a ban on Target (membership leave).
func (s *Server) Unban(ctx context.Context, req MembershipRequest) (*SendEventResponse, error) {
	if err := s.needTarget(req); err != nil {
		return nil, err
	}
	m, err := s.Membership(ctx, req.RoomID, req.Target)
	if err != nil {
		return nil, err
	}
	if m != "ban" {
		return nil, mxerr.New(mxerr.Forbidden, "%s is not banned", req.Target)
	}
	return s.sendMember(ctx, req, memberContent(req, "leave"))
}

// Knock asks to join a room whose join rule allows knocking.
// Spec: client-server-api, "Knocking on rooms".
func (s *Server) Knock(ctx context.Context, req MembershipRequest) (*SendEventResponse, error) {
	req.Target = req.Sender
	return s.sendMember(ctx, req, memberContent(req, "knock"))
}

func (s *Server) needTarget(req MembershipRequest) error {
	if _, err := spec.NewUserID(req.Target, true); err != nil {
		return mxerr.New(mxerr.InvalidParam, "invalid user ID %q", req.Target)
	}
	return nil
}

// sameContent reports whether the JSON content raw holds exactly the
// keys and values of content.
func sameContent(raw json.RawMessage, content map[string]any) bool {
	var have map[string]any
	if json.Unmarshal(raw, &have) != nil {
		return false
	}
	want, err := json.Marshal(content)
	if err != nil {
		return false
	}
	var norm map[string]any
	if json.Unmarshal(want, &norm) != nil {
		return false
	}
	return reflect.DeepEqual(have, norm)
}

func memberContent(req MembershipRequest, membership string) map[string]any {
	content := map[string]any{}
	for k, v := range req.Content {
		content[k] = v
	}
	delete(content, "join_authorised_via_users_server")
	delete(content, "third_party_invite")
	if membership == "invite" && len(req.ThirdPartyInvite) > 0 {
		content["third_party_invite"] = req.ThirdPartyInvite
	}
	content["membership"] = membership
	if req.Reason != "" {
		content["reason"] = req.Reason
	}
	return content
}

func (s *Server) sendMember(ctx context.Context, req MembershipRequest, content map[string]any) (*SendEventResponse, error) {
	if domainOf(req.Sender) != string(s.serverName) {
		return nil, mxerr.New(mxerr.Forbidden, "sender %s is not a local user", req.Sender)
	}
	proto, err := memberProto(req, content)
	if err != nil {
		return nil, err
	}
	return s.sendProto(ctx, req.RoomID, proto, "", req.TxnID)
}

// memberProto is the m.room.member event of req with content.
func memberProto(req MembershipRequest, content map[string]any) (*gomatrixserverlib.ProtoEvent, error) {
	raw, err := marshalChecked(content)
	if err != nil {
		return nil, err
	}
	target := req.Target
	if err := checkFieldLimits("m.room.member", &target, req.Sender); err != nil {
		return nil, err
	}
	return &gomatrixserverlib.ProtoEvent{
		SenderID: req.Sender, RoomID: req.RoomID, Type: "m.room.member", StateKey: &target, Content: raw,
	}, nil
}

// restrictedJoinAuthoriser returns the local user to name in
// join_authorised_via_users_server when userID joins a restricted room it
// is not invited to, or "" when no authorisation is needed. It fails with
// M_FORBIDDEN when the user is in none of the allowed rooms this server
// can see, with 400 M_UNABLE_TO_AUTHORISE_JOIN when this server is in
// none of the allowed rooms (so it cannot tell), and with 400
// M_UNABLE_TO_GRANT_JOIN when no local member may invite: in the last two
// cases the joining server should ask another resident server.
// Spec: rooms/v8, "Authorization rules" 4.3.2; client-server-api,
// "Restricted rooms"; server-server-api, "Restricted rooms".
func (s *Server) restrictedJoinAuthoriser(ctx context.Context, roomID, userID string) (string, error) {
	room, err := loadRoom(ctx, s.db.Reader(), roomID)
	if err != nil {
		return "", err
	}
	state, err := s.stateEventsFor(ctx, s.db.Reader(), nil, room, room.CurrentSnapshot, nil,
		[]tuple{{"m.room.create", ""}, {"m.room.join_rules", ""}, {"m.room.power_levels", ""}, {"m.room.member", userID}})
	if err != nil {
		return "", err
	}
	var joinRules gomatrixserverlib.PDU
	for _, e := range state {
		switch {
		case e.Type() == "m.room.join_rules":
			joinRules = e
		case e.Type() == "m.room.member":
			if m, _ := e.Membership(); m == "join" || m == "invite" {
				return "", nil // already joined or invited: the ordinary rules apply
			}
		}
	}
	if joinRules == nil {
		return "", nil
	}
	rule := gjson.GetBytes(joinRules.Content(), "join_rule").Str
	if rule != "restricted" && rule != "knock_restricted" {
		return "", nil
	}
	inAllowed, unknowable, err := s.inAllowedRoom(ctx, joinRules.Content(), userID)
	if err != nil {
		return "", err
	}
	if !inAllowed {
		if unknowable {
			return "", mxerr.New(mxerr.UnableToAuthoriseJoin, "this server is in none of the rooms that grant access to %s", roomID).
				WithStatus(http.StatusBadRequest)
		}
		return "", mxerr.New(mxerr.Forbidden, "you are not a member of any room that grants access to %s", roomID)
	}
	// Any joined local user whose power level reaches invite.
	rows, err := s.db.Reader().Query(ctx, `SELECT state_key FROM roomserver_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join' ORDER BY state_key`, roomID)
	if err != nil {
		return "", err
	}
	var locals []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			rows.Close()
			return "", err
		}
		if domainOf(u) == string(s.serverName) {
			locals = append(locals, u)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return "", err
	}
	for _, u := range locals {
		if hasPower(room.Version, state, u, func(pl *gomatrixserverlib.PowerLevelContent) int64 { return pl.Invite }) {
			return u, nil
		}
	}
	return "", mxerr.New(mxerr.UnableToGrantJoin, "no member of this server may authorise your join: try another server").
		WithStatus(http.StatusBadRequest)
}

// inAllowedRoom reads the allow list of a restricted join rule and
// reports whether userID is joined to one of its rooms that this server
// is in, and whether some allowed room is one this server is not in
// (its membership there cannot be known). Entries that do not match the
// schema are ignored, and an allow that is not a list has no entries:
// such conditions are failed. Spec: server-server-api, "Restricted
// rooms"; client-server-api, "m.room.join_rules".
func (s *Server) inAllowedRoom(ctx context.Context, joinRules json.RawMessage, userID string) (inAllowed, unknowable bool, err error) {
	allow := gjson.GetBytes(joinRules, "allow")
	if !allow.IsArray() {
		return false, false, nil
	}
	for _, a := range allow.Array() {
		if a.Get("type").Str != "m.room_membership" || a.Get("room_id").Type != gjson.String || a.Get("room_id").Str == "" {
			continue
		}
		allowedRoom := a.Get("room_id").Str
		servers, err := s.JoinedServers(ctx, allowedRoom)
		if err != nil {
			return false, false, err
		}
		if !slices.Contains(servers, string(s.serverName)) {
			unknowable = true
			continue
		}
		if m, err := s.Membership(ctx, allowedRoom, userID); err != nil {
			return false, false, err
		} else if m == "join" {
			return true, false, nil
		}
	}
	return false, unknowable, nil
}
