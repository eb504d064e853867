package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// Outbound membership handshakes: joining and leaving rooms held by
// other servers. Spec: server-server-api, "Joining Rooms".

var supportedVersionsQuery = func() string {
	v := url.Values{}
	for i := 1; i <= 12; i++ {
		v.Add("ver", itoa(int64(i)))
	}
	return v.Encode()
}()

// template is a make_* answer.
type template struct {
	RoomVersion string          `json:"room_version"`
	Event       json.RawMessage `json:"event"`
}

// JoinRemote implements Joiner.
func (s *Server) JoinRemote(ctx context.Context, roomIDOrAlias, userID string, via []string) (string, error) {
	if domainOf(userID) != s.serverName {
		return "", mxerr.New(mxerr.Forbidden, "%s is not a local user", userID)
	}
	roomID, via, err := s.resolveRemoteRoom(ctx, roomIDOrAlias, via)
	if err != nil {
		return "", err
	}
	if inviter := s.inviterServer(ctx, userID, roomID); inviter != "" {
		via = append(via, inviter) // an invited user joins through the inviter's server
	}
	if !strings.HasPrefix(roomID, "!") {
		return "", mxerr.New(mxerr.InvalidParam, "invalid room ID or alias %q", roomIDOrAlias)
	}
	err = s.tryVia(via, roomID, "join", "no server to join %s through", func(server string) error {
		return s.joinVia(ctx, server, roomID, userID)
	})
	if err != nil {
		return "", ClientError(err)
	}
	if err := s.announceDevices(ctx, userID, roomID); err != nil {
		s.log.Warn("announcing a joiner's devices", "room_id", roomID, "err", err)
	}
	return roomID, nil
}

// tryVia runs attempt (a make_* then send_* exchange) against each server
// of via in turn, skipping blanks, repeats and our own name, and returns
// nil at the first success. A tampered template aborts at once with
// M_FORBIDDEN (security case 14). Otherwise it logs every server's failure
// and returns the last one, or M_NOT_FOUND (noServer, formatted with
// roomID) if there was no server to try. op names the membership ("join").
func (s *Server) tryVia(via []string, roomID, op, noServer string, attempt func(server string) error) error {
	var errs []error
	seen := map[string]bool{s.serverName: true}
	for _, server := range via {
		if server == "" || seen[server] {
			continue
		}
		seen[server] = true
		err := attempt(server)
		if err == nil {
			return nil
		}
		var te *templateError
		if errors.As(err, &te) {
			return mxerr.Wrap(err, mxerr.Forbidden, "%s aborted: %s sent a bad template: %v", op, server, te)
		}
		errs = append(errs, fmt.Errorf("%s: %w", server, err))
	}
	if len(errs) == 0 {
		return mxerr.New(mxerr.NotFound, noServer, roomID)
	}
	s.log.Info("remote "+op+" failed", "room_id", roomID, "err", errors.Join(errs...))
	// A resident server's refusal (403, e.g. "already in the room" or a
	// ban) says more than a later server that does not know the room or
	// cannot be reached: the client gets the refusal.
	for _, err := range errs {
		var re *RemoteError
		if errors.As(err, &re) && re.Status == http.StatusForbidden {
			return err
		}
	}
	return errs[len(errs)-1]
}

// resolveRemoteRoom turns a room ID or another server's alias into a
// room ID and the servers to try: via, then the alias's answer and
// server; for a pre-v12 room ID with no via, the server it names.
func (s *Server) resolveRemoteRoom(ctx context.Context, roomIDOrAlias string, via []string) (string, []string, error) {
	roomID := roomIDOrAlias
	if strings.HasPrefix(roomIDOrAlias, "#") {
		server := domainOf(roomIDOrAlias)
		var dir struct {
			RoomID  string   `json:"room_id"`
			Servers []string `json:"servers"`
		}
		q := url.Values{"room_alias": {roomIDOrAlias}}
		if err := s.client.signed(ctx, server, http.MethodGet, "/_matrix/federation/v1/query/directory?"+q.Encode(), nil, &dir); err != nil {
			return "", nil, ClientError(err)
		}
		roomID = dir.RoomID
		via = append(append([]string{}, via...), dir.Servers...)
		via = append(via, server)
	} else if d := domainOf(roomID); d != "" && len(via) == 0 {
		// With no server named, try the one a pre-v12 room ID names (its
		// creator's). Servers the client named are tried alone: the
		// creator's server may have left, or may be the one the client
		// means to avoid (Complement TestRestrictedRoomsRemoteJoinFailOver).
		via = []string{d}
	}
	return roomID, via, nil
}

// templateError marks a make_* template that asks us to sign something
// other than what we asked for.
type templateError struct{ msg string }

func (e *templateError) Error() string { return e.msg }

// signTemplate checks a make_* template and builds our own event from
// it: type, sender, state_key, room_id and content are ours; only
// prev_events, auth_events and depth (and a restricted-join authoriser)
// come from the template. Anything in the template that differs from what
// we asked for aborts (security case 14).
// extra holds keys of our own for the content (a knock's reason and
// profile); membership is always ours.
func (s *Server) signTemplate(t *template, roomID, userID, membership string, extra map[string]any) (gomatrixserverlib.PDU, error) {
	impl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(t.RoomVersion))
	if err != nil || t.RoomVersion == "" {
		return nil, &templateError{fmt.Sprintf("unsupported room version %q", t.RoomVersion)}
	}
	var tmpl struct {
		Type       string          `json:"type"`
		Sender     string          `json:"sender"`
		StateKey   *string         `json:"state_key"`
		RoomID     string          `json:"room_id"`
		Content    json.RawMessage `json:"content"`
		PrevEvents json.RawMessage `json:"prev_events"`
		AuthEvents json.RawMessage `json:"auth_events"`
		Depth      int64           `json:"depth"`
	}
	if err := json.Unmarshal(t.Event, &tmpl); err != nil {
		return nil, &templateError{"unreadable template"}
	}
	var content map[string]json.RawMessage
	if err := json.Unmarshal(tmpl.Content, &content); err != nil {
		return nil, &templateError{"template content is not an object"}
	}
	var m string
	_ = json.Unmarshal(content["membership"], &m)
	switch {
	case tmpl.Type != "m.room.member":
		return nil, &templateError{"template type is " + tmpl.Type}
	case tmpl.Sender != userID:
		return nil, &templateError{"template sender is " + tmpl.Sender}
	case tmpl.StateKey == nil || *tmpl.StateKey != userID:
		return nil, &templateError{"template state_key is not the user"}
	case tmpl.RoomID != roomID:
		return nil, &templateError{"template room is " + tmpl.RoomID}
	case m != membership:
		return nil, &templateError{"template membership is " + m}
	case tmpl.Depth < 1 || tmpl.Depth > maxSafeInt:
		return nil, &templateError{"template depth out of range"}
	}
	ours := map[string]any{}
	for k, v := range extra {
		ours[k] = v
	}
	ours["membership"] = membership
	for k, v := range content {
		switch k {
		case "membership":
		case "join_authorised_via_users_server":
			var via string
			if json.Unmarshal(v, &via) != nil || membership != "join" {
				return nil, &templateError{"bad join_authorised_via_users_server"}
			}
			if _, err := spec.NewUserID(via, true); err != nil {
				return nil, &templateError{"bad join_authorised_via_users_server"}
			}
			ours[k] = via
		default:
			return nil, &templateError{"template content has unexpected key " + k}
		}
	}
	raw, err := json.Marshal(ours)
	if err != nil {
		return nil, err
	}
	var prev, auth any
	if json.Unmarshal(tmpl.PrevEvents, &prev) != nil || json.Unmarshal(tmpl.AuthEvents, &auth) != nil {
		return nil, &templateError{"bad prev_events or auth_events"}
	}
	stateKey := userID
	proto := &gomatrixserverlib.ProtoEvent{
		SenderID: userID, RoomID: roomID, Type: "m.room.member", StateKey: &stateKey, Content: raw,
		PrevEvents: prev, AuthEvents: auth, Depth: tmpl.Depth, Version: impl,
	}
	return guard(func() (gomatrixserverlib.PDU, error) {
		eb := impl.NewEventBuilderFromProtoEvent(proto)
		return eb.Build(s.now(), spec.ServerName(s.serverName), gomatrixserverlib.KeyID(s.key.ID), s.key.PrivateKey)
	})
}

// joinVia runs make_join and send_join against server, verifies the
// answer and persists the room.
func (s *Server) joinVia(ctx context.Context, server, roomID, userID string) error {
	var t template
	uri := "/_matrix/federation/v1/make_join/" + pathEscape(roomID) + "/" + pathEscape(userID) + "?" + supportedVersionsQuery
	if err := s.client.signed(ctx, server, http.MethodGet, uri, nil, &t); err != nil {
		return err
	}
	join, err := s.signTemplate(&t, roomID, userID, "join", nil)
	if err != nil {
		return err
	}
	var resp sendJoinAnswer
	// omit_members: a partial-state join (partial_state_join.go).
	uri = "/_matrix/federation/v2/send_join/" + pathEscape(roomID) + "/" + pathEscape(join.EventID()) + "?omit_members=true"
	if err := s.client.signed(ctx, server, http.MethodPut, uri, json.RawMessage(join.JSON()), &resp); err != nil {
		return err
	}
	joinJSON := json.RawMessage(join.JSON())
	if len(resp.Event) > 0 {
		// A restricted join countersigned by the resident server: it must
		// be our event, with the extra signature.
		p, _, err := s.checkPDUVersion(ctx, resp.Event, t.RoomVersion)
		if err != nil || p.pdu.EventID() != join.EventID() {
			return fmt.Errorf("send_join returned a different event")
		}
		joinJSON = p.pdu.JSON()
	}
	// Verify every returned event's signatures and hashes. One that fails
	// (no or a bad signature, a key we cannot get) is dropped, not the
	// whole join: the roomserver then drops what depended on it.
	// Spec: server-server-api, "Checks performed on receipt of a PDU";
	// Complement TestJoinFederatedRoomWithUnverifiableEvents.
	verify := func(list []json.RawMessage) []json.RawMessage {
		out := make([]json.RawMessage, 0, len(list))
		for _, raw := range list {
			p, id, err := s.checkPDUVersion(ctx, raw, t.RoomVersion)
			if err != nil {
				s.log.Info("send_join response: dropping an event that fails its checks", "room_id", roomID, "event_id", id, "err", err)
				continue
			}
			out = append(out, p.pdu.JSON())
		}
		return out
	}
	state, chain := verify(resp.State), verify(resp.AuthChain)
	servers := resyncServers(server, resp.ServersInRoom)
	held, err := s.heldHere(ctx, roomID)
	if err != nil {
		return err
	}
	var res *roomserver.InputEventResponse
	if held {
		// Another local user is in the room, which still has partial
		// state (the client API sends such joins here): the join is a
		// new event of a room we hold, the answer's state and auth
		// chain fill in what our partial state lacks.
		res, err = s.inputOwnMembership(ctx, server, roomID, t.RoomVersion, joinJSON, append(state, chain...))
	} else {
		res, err = s.rooms.ImportJoinedRoom(ctx, roomserver.ImportRoomRequest{
			RoomVersion: t.RoomVersion, Join: joinJSON, State: state, AuthChain: chain,
			PartialState: resp.MembersOmitted, Servers: servers,
		})
	}
	if err != nil {
		return err
	}
	if res.Outcome == roomserver.Rejected {
		return mxerr.New(mxerr.Forbidden, "join rejected: %s", res.Reason)
	}
	// The pending invite (or knock) ended in the join's own commit
	// (roomserver.Deps.EndPendingMembership).
	s.keepResyncing(ctx, roomID, servers)
	return nil
}

// heldHere reports whether a local user is joined to roomID.
func (s *Server) heldHere(ctx context.Context, roomID string) (bool, error) {
	servers, err := s.rooms.JoinedServers(ctx, roomID)
	if mxerr.Is(err, mxerr.NotFound) {
		return false, nil
	}
	return slices.Contains(servers, s.serverName), err
}

// inputOwnMembership stores a membership event of a local user that a
// resident server accepted (send_join, send_knock) in a room this server
// holds: first the events of the answer this server lacks, as outliers
// (a partial state may lack the user's earlier membership, an auth event
// of the new one), then the event, as any event from server, fetching
// what lies between our extremities and it. server has the event and
// sends it to the rest of the room: our sender leaves it out.
func (s *Server) inputOwnMembership(ctx context.Context, server, roomID, roomVersion string, event json.RawMessage, answer []json.RawMessage) (*roomserver.InputEventResponse, error) {
	p, _, err := s.checkPDUVersion(ctx, event, roomVersion)
	if err != nil {
		return nil, err
	}
	p.delivered = true
	var others []json.RawMessage
	for _, raw := range answer {
		// A server may list the event itself in its answer: it is
		// input below, as a timeline event, not an outlier.
		if q, _, err := s.checkPDUVersion(ctx, raw, roomVersion); err == nil && q.pdu.EventID() != p.pdu.EventID() {
			others = append(others, raw)
		}
	}
	if len(others) > 0 {
		if _, err := s.rooms.InputOutliers(ctx, roomID, others); err != nil {
			return nil, err
		}
	}
	res, err := s.input(ctx, p)
	if mxerr.Is(err, mxerr.NotFound) {
		res, err = s.inputConnecting(ctx, server, p, ownMembership)
	}
	return res, err
}

// keepResyncing runs after a local user joined roomID through a resident
// server. If the room has partial state (this join's or an earlier
// one's), the servers of this join's answer are added to those the
// resync may use and the room's resync is started if this process runs
// none: a resync already running goes on (a rejoin that moved the
// room's partial-state join makes it start over, ErrPartialJoinMoved).
// The join is stored by then: a failure here is only logged (a resync
// not started now starts at the next start of the process).
func (s *Server) keepResyncing(ctx context.Context, roomID string, servers []string) {
	if err := s.rooms.AddPartialStateServers(ctx, roomID, servers); err != nil {
		s.log.Warn("adding servers to a partial-state room", "room_id", roomID, "err", err)
	}
	if room, ok, err := s.partialStateRoom(ctx, roomID); err != nil {
		s.log.Warn("reading a partial-state room", "room_id", roomID, "err", err)
	} else if ok {
		s.startResync(room)
	}
}

// LeaveRemote implements RemoteMemberships: make_leave and send_leave
// through via, for a room this server does not hold (rejecting an invite
// or withdrawing a knock). When no server takes the leave and userID has
// a pending invite to or knock on the room, it is ended here by a leave
// of our own that no other server sees (storeLocalLeave), and
// LeaveRemote succeeds; localLeaveDeserved says which failures allow it.
func (s *Server) LeaveRemote(ctx context.Context, roomID, userID string, via []string) error {
	if domainOf(userID) != s.serverName {
		return mxerr.New(mxerr.Forbidden, "%s is not a local user", userID)
	}
	if inviter := s.inviterServer(ctx, userID, roomID); inviter != "" {
		via = append(append([]string{}, via...), inviter)
	}
	var errs []error
	seen := map[string]bool{s.serverName: true}
	for _, server := range via {
		if server == "" || seen[server] {
			continue
		}
		seen[server] = true
		var t template
		uri := "/_matrix/federation/v1/make_leave/" + pathEscape(roomID) + "/" + pathEscape(userID)
		if err := s.client.signed(ctx, server, http.MethodGet, uri, nil, &t); err != nil {
			errs = append(errs, err)
			continue
		}
		leave, err := s.signTemplate(&t, roomID, userID, "leave", nil)
		if err != nil {
			// Nothing of the template is signed or sent (security case
			// 14), and no other server is tried.
			errs = append(errs, mxerr.Wrap(err, mxerr.Forbidden, "leave aborted: %s sent a bad template: %v", server, err))
			break
		}
		uri = "/_matrix/federation/v2/send_leave/" + pathEscape(roomID) + "/" + pathEscape(leave.EventID())
		if err := s.client.signed(ctx, server, http.MethodPut, uri, json.RawMessage(leave.JSON()), nil); err != nil {
			errs = append(errs, err)
			continue
		}
		// The invite (or knock) is answered: keep the leave in the remote
		// invite stream so the user's /sync shows the room as left.
		// Spec: client-server-api, "GET /_matrix/client/v3/sync"
		// (rooms.leave); Complement TestFederationRoomsInvite.
		stored := leave.JSON()
		if row, ok, err := s.readPendingRow(ctx, userID, roomID); err == nil && ok && row.membership != "leave" {
			stored = withReplacedState(stored, row)
		}
		return s.storePendingMembership(ctx, pendingMembership{
			userID: userID, roomID: roomID, eventID: leave.EventID(), roomVersion: t.RoomVersion,
			event: stored, strippedState: []byte("[]"), membership: "leave",
		})
	}
	var err error
	if len(errs) == 0 {
		err = mxerr.New(mxerr.NotFound, "no server to leave %s through", roomID)
	} else {
		s.log.Info("remote leave failed", "room_id", roomID, "err", errors.Join(errs...))
		err = errs[len(errs)-1]
	}
	if localLeaveDeserved(ctx) {
		ended, lerr := s.storeLocalLeave(context.WithoutCancel(ctx), userID, roomID)
		if lerr != nil {
			return lerr
		}
		if ended {
			return nil
		}
	}
	return ClientError(err)
}

// inviterServer is the server of whoever sent userID's pending remote
// invite to roomID, or the server a pending remote knock went through;
// "" if there is neither.
func (s *Server) inviterServer(ctx context.Context, userID, roomID string) string {
	var event, viaServer string
	err := s.db.Reader().QueryRow(ctx, `SELECT event, via_server FROM federation_remote_invites WHERE user_id = $1 AND room_id = $2`,
		userID, roomID).Scan(&event, &viaServer)
	if err != nil {
		return ""
	}
	if viaServer != "" {
		return viaServer // a knock: the server knocked through
	}
	var ev struct {
		Sender string `json:"sender"`
	}
	if json.Unmarshal([]byte(event), &ev) != nil {
		return ""
	}
	return domainOf(ev.Sender)
}
