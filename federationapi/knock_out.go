package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// maxKnockRoomState bounds the stripped state kept from a send_knock
// answer, as maxInviteRoomState bounds what we send with an invite.
const maxKnockRoomState = 64 << 10

// KnockRemote knocks on a room this server does not hold, or holds with
// partial state, for local user userID: make_knock then send_knock on the via servers (for an alias,
// its server and the servers it names), refusing any template that
// changes what we asked for (security case 14). content is merged into
// the knock's content (reason, displayname, avatar_url). The knock is
// kept as a pending membership, with the stripped state the resident
// server answered, for /sync's rooms.knock, until the room's admins
// answer it (an invite replaces it) or the user withdraws it
// (LeaveRemote through the same server). In a room held here (partial
// state) the knock is stored as an event of the room instead. It
// returns the room ID.
// Spec: server-server-api, "Knocking upon a room".
func (s *Server) KnockRemote(ctx context.Context, roomIDOrAlias, userID string, content map[string]any, via []string) (string, error) {
	if domainOf(userID) != s.serverName {
		return "", mxerr.New(mxerr.Forbidden, "%s is not a local user", userID)
	}
	roomID, via, err := s.resolveRemoteRoom(ctx, roomIDOrAlias, via)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(roomID, "!") {
		return "", mxerr.New(mxerr.InvalidParam, "invalid room ID or alias %q", roomIDOrAlias)
	}
	err = s.tryVia(via, roomID, "knock", "no server to knock on %s through", func(server string) error {
		return s.knockVia(ctx, server, roomID, userID, content)
	})
	if err != nil {
		var me *mxerr.Error
		if errors.As(err, &me) {
			return "", me
		}
		return "", ClientError(err)
	}
	return roomID, nil
}

// knockVia runs make_knock and send_knock against server and stores the
// pending knock.
func (s *Server) knockVia(ctx context.Context, server, roomID, userID string, content map[string]any) error {
	var t template
	uri := "/_matrix/federation/v1/make_knock/" + pathEscape(roomID) + "/" + pathEscape(userID) + "?" + supportedVersionsQuery
	if err := s.client.signed(ctx, server, http.MethodGet, uri, nil, &t); err != nil {
		return err
	}
	knock, err := s.signTemplate(&t, roomID, userID, "knock", content)
	if err != nil {
		return err
	}
	var resp struct {
		KnockRoomState []json.RawMessage `json:"knock_room_state"`
	}
	uri = "/_matrix/federation/v1/send_knock/" + pathEscape(roomID) + "/" + pathEscape(knock.EventID())
	if err := s.client.signed(ctx, server, http.MethodPut, uri, json.RawMessage(knock.JSON()), &resp); err != nil {
		return err
	}
	if held, err := s.heldHere(ctx, roomID); err != nil {
		return err
	} else if held {
		// A room this server holds with partial state (the client API
		// sends knocks on those here): the knock is an event of the
		// room like any other, not a pending membership.
		res, err := s.inputOwnMembership(ctx, server, roomID, t.RoomVersion, knock.JSON(), nil)
		if err != nil {
			return err
		}
		if res.Outcome == roomserver.Rejected {
			return mxerr.New(mxerr.Forbidden, "knock rejected: %s", res.Reason)
		}
		return nil
	}
	stripped := wellFormedStripped(resp.KnockRoomState)
	for size := 0; ; {
		size = 0
		for _, st := range stripped {
			size += len(st)
		}
		if size <= maxKnockRoomState || len(stripped) == 0 {
			break
		}
		stripped = stripped[:len(stripped)-1]
	}
	strippedJSON, err := json.Marshal(stripped)
	if err != nil {
		return err
	}
	return s.storePendingMembership(ctx, pendingMembership{
		userID: userID, roomID: roomID, eventID: knock.EventID(), roomVersion: t.RoomVersion,
		event: knock.JSON(), strippedState: strippedJSON, membership: "knock", viaServer: server,
	})
}

// pendingMembership is a row of federation_remote_invites: a local
// user's invite to, or knock on, a room this server does not hold.
type pendingMembership struct {
	userID, roomID, eventID, roomVersion string
	event, strippedState                 []byte
	membership                           string // invite or knock
	viaServer                            string // knocks: the server knocked through
	// replaces, if set, is the event ID of the pending membership this
	// one ends: it is written only if that row is still there (a knock
	// stored meanwhile is not overwritten by the answer to the one
	// before it).
	replaces string
}

// errPendingReplaced stops the write of a pending membership whose row
// changed since it was read (pendingMembership.replaces).
var errPendingReplaced = errors.New("the pending membership changed meanwhile")

// storePendingMembership writes (or replaces) a pending membership at the
// next position of the remote invite stream and wakes /sync. A new invite
// or knock also clears the user's forgotten mark on the room, in the same
// transaction: a forgotten room is no longer forgotten once the user is
// re-invited or knocks. Spec: client-server-api, "Leaving rooms" ("until
// the user re-joins, is re-invited, or knocks"). One commit holds both,
// so no crash leaves the invite shown with the room still forgotten (its
// later leave would then be hidden from include_leave syncs), and both
// are committed before the notification, so no /sync woken by it still
// reads the room as forgotten. The mark is the roomserver's, cleared by
// its own code (UnforgetInTx).
//
// The mark is cleared first: UnforgetInTx takes the room's forget lock,
// so the invite or knock is written under it. A Forget (which ends the
// room's pending row, EndPendingMembershipInTx, under the same lock)
// then either commits before the row is written, and cannot delete the
// new invite, or reads it and refuses. Were the row written first, a
// Forget holding the lock could wait on the row's lock while this
// transaction waits on the forget lock: a deadlock on PostgreSQL.
func (s *Server) storePendingMembership(ctx context.Context, m pendingMembership) error {
	var pos int64
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		if m.membership == "invite" || m.membership == "knock" {
			if err := s.rooms.UnforgetInTx(ctx, tx, m.userID, m.roomID); err != nil {
				return err
			}
			if s.beforeUnforget != nil {
				if err := s.beforeUnforget(); err != nil {
					return err
				}
			}
		}
		return s.writePendingMembership(ctx, tx, m, &pos)
	})
	if errors.Is(err, errPendingReplaced) {
		return nil // answered a membership that is no longer pending
	}
	if err != nil {
		return err
	}
	if s.notify != nil {
		s.notify(RemoteInviteStream, pos)
	}
	return nil
}

// writePendingMembership writes m's row in tx at the next position of
// the remote invite stream, which it puts in *pos.
func (s *Server) writePendingMembership(ctx context.Context, tx storage.Tx, m pendingMembership, pos *int64) error {
	if err := tx.QueryRow(ctx, `INSERT INTO federation_remote_invite_positions (user_id, room_id) VALUES ($1, $2)
		RETURNING stream_pos`, m.userID, m.roomID).Scan(pos); err != nil {
		return err
	}
	if m.replaces != "" {
		// One statement, so that the check and the write are one
		// step on both engines (PostgreSQL locks the row it updates
		// and re-checks the condition on its newest version).
		res, err := tx.Exec(ctx, `UPDATE federation_remote_invites SET event_id = $3, room_version = $4, event = $5,
				invite_room_state = $6, received_ts = $7, stream_pos = $8, membership = $9, via_server = $10
			WHERE user_id = $1 AND room_id = $2 AND event_id = $11`,
			m.userID, m.roomID, m.eventID, m.roomVersion, string(m.event), string(m.strippedState), s.now().UnixMilli(), *pos,
			m.membership, m.viaServer, m.replaces)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return errPendingReplaced
		}
		return nil
	}
	_, err := tx.Exec(ctx, `INSERT INTO federation_remote_invites (user_id, room_id, event_id, room_version, event, invite_room_state,
			received_ts, stream_pos, membership, via_server)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
		ON CONFLICT (user_id, room_id) DO UPDATE SET event_id = excluded.event_id, room_version = excluded.room_version,
			event = excluded.event, invite_room_state = excluded.invite_room_state, received_ts = excluded.received_ts,
			stream_pos = excluded.stream_pos, membership = excluded.membership, via_server = excluded.via_server`,
		m.userID, m.roomID, m.eventID, m.roomVersion, string(m.event), string(m.strippedState), s.now().UnixMilli(), *pos,
		m.membership, m.viaServer)
	return err
}

// PendingMembershipInTx is userID's pending membership of roomID read in
// tx: invite or knock while an invite to (or a knock on) a room only
// other servers hold is pending, leave once it ended, "" if there is
// none. The roomserver's Forget reads it (roomserver.Deps.
// PendingMembership), so that a user cannot forget a room while still
// invited to it or knocking on it.
func PendingMembershipInTx(ctx context.Context, tx storage.Tx, userID, roomID string) (string, error) {
	var membership string
	err := tx.QueryRow(ctx, `SELECT membership FROM federation_remote_invites WHERE user_id = $1 AND room_id = $2`,
		userID, roomID).Scan(&membership)
	if storage.IsNoRows(err) {
		return "", nil
	}
	return membership, err
}

// EndPendingMembershipInTx deletes, in tx, userID's pending membership
// of roomID (an invite, a knock, or the leave that ended one), if any.
// The roomserver calls it (roomserver.Deps.EndPendingMembership) in the
// transaction that ends it: the commit of the user's member event in the
// room, once held here (a join through send_join, or any membership the
// room's own events now record), and the user's Forget of the room. So
// a pending invite or knock never outlives the membership change that
// ends it, and a forgotten room keeps no row.
func (s *Server) EndPendingMembershipInTx(ctx context.Context, tx storage.Tx, userID, roomID string) error {
	if s.beforeEndPending != nil {
		if err := s.beforeEndPending(userID, roomID); err != nil {
			return err
		}
	}
	_, err := tx.Exec(ctx, `DELETE FROM federation_remote_invites WHERE user_id = $1 AND room_id = $2`, userID, roomID)
	return err
}

// EndPendingMembershipsInTx deletes, in tx, every pending membership of
// userID: the client API calls it (clientapi.Deps.EndPendingMemberships)
// in the transaction that finishes a deactivated account's leaves.
func EndPendingMembershipsInTx(ctx context.Context, tx storage.Tx, userID string) error {
	_, err := tx.Exec(ctx, `DELETE FROM federation_remote_invites WHERE user_id = $1`, userID)
	return err
}

// PendingRemoteRooms lists the rooms only other servers hold in which
// userID has a pending invite or knock.
func (s *Server) PendingRemoteRooms(ctx context.Context, userID string) ([]string, error) {
	return storage.QueryColumn[string](ctx, s.db.Reader(), `SELECT room_id FROM federation_remote_invites
		WHERE user_id = $1 AND membership IN ('invite', 'knock') ORDER BY room_id`, userID)
}

// wellFormedStripped keeps the entries of a stripped state list that are
// objects with a type, a state_key and an object content (security case
// 8), whatever else they carry.
func wellFormedStripped(list []json.RawMessage) []json.RawMessage {
	var out []json.RawMessage
	for _, st := range list {
		var e struct {
			Type     string          `json:"type"`
			StateKey *string         `json:"state_key"`
			Content  json.RawMessage `json:"content"`
		}
		if json.Unmarshal(st, &e) == nil && e.Type != "" && e.StateKey != nil && strings.HasPrefix(string(e.Content), "{") {
			out = append(out, st)
		}
	}
	return out
}

// pendingMembershipPDU takes a PDU for a room this server does not hold
// when it is the room's answer to a pending remote invite or knock of a
// local user: a leave or ban of that user (a rejected knock, a withdrawn
// invite), sent by the server that handled the invite or knock and
// signed by its sender's server. We hold no state to auth it against, so
// it only ends the pending membership, which /sync then shows in
// rooms.leave. handled is false for any other PDU.
func (s *Server) pendingMembershipPDU(ctx context.Context, origin string, raw json.RawMessage) (eventID string, handled bool, err error) {
	var head struct {
		RoomID   string  `json:"room_id"`
		Type     string  `json:"type"`
		StateKey *string `json:"state_key"`
	}
	if json.Unmarshal(raw, &head) != nil || head.Type != "m.room.member" || head.StateKey == nil || domainOf(*head.StateKey) != s.serverName {
		return "", false, nil
	}
	userID := *head.StateKey
	var version, membership, strippedState, pending, pendingID string
	err = s.db.Reader().QueryRow(ctx, `SELECT room_version, membership, invite_room_state, event, event_id FROM federation_remote_invites
		WHERE user_id = $1 AND room_id = $2`, userID, head.RoomID).Scan(&version, &membership, &strippedState, &pending, &pendingID)
	if err != nil || membership == "leave" {
		return "", false, nil
	}
	if server := s.inviterServer(ctx, userID, head.RoomID); server != origin {
		return "", true, fmt.Errorf("%s did not handle %s's pending %s", origin, userID, membership)
	}
	p, eventID, err := s.checkPDUVersion(ctx, raw, version)
	if err != nil {
		return eventID, true, err
	}
	m, err := p.pdu.Membership()
	if err != nil || (m != "leave" && m != "ban") {
		return eventID, true, fmt.Errorf("not a leave or ban of %s", userID)
	}
	if sender := string(p.pdu.SenderID()); sender == userID || domainOf(sender) != origin {
		return eventID, true, fmt.Errorf("sender %s may not answer %s's %s", sender, userID, membership)
	}
	// It answers the pending knock or invite only if it is built on it:
	// a member event's auth events hold the target's current membership
	// (spec: server-server-api, "Auth events selection"). A leave of an
	// earlier knock or invite that arrives late — the rejection of a
	// knock delivered after the user knocked again — is about a
	// membership already replaced: it must not end the new one.
	if !slices.Contains(p.pdu.AuthEventIDs(), pendingID) {
		return eventID, true, nil
	}
	// Without the room's state we cannot tell whether anyone else may
	// withdraw an invite: only its own sender's withdrawal is believed
	// (a kick by another member is not shown). Complement
	// TestFederationRoomsInvite "Non-invitee user cannot rescind invite
	// over federation".
	if membership == "invite" && string(p.pdu.SenderID()) != gjson.Get(pending, "sender").Str {
		return eventID, true, nil
	}
	if s.beforePendingAnswer != nil {
		s.beforePendingAnswer()
	}
	return eventID, true, s.storePendingMembership(ctx, pendingMembership{
		userID: userID, roomID: head.RoomID, eventID: eventID, roomVersion: version,
		event: p.pdu.JSON(), strippedState: []byte(strippedState), membership: "leave", viaServer: origin,
		replaces: pendingID,
	})
}
