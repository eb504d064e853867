package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/storage"
)

// A local user's pending invite to (or knock on) a room only other
// servers hold is answered through those servers (LeaveRemote). When
// none of them takes the leave — the inviter's server is gone, down or
// refuses — the user would otherwise keep the invite in /sync forever,
// with no way to be rid of it. The leave is then made here instead: an
// out-of-band membership event, built and signed by this server on top
// of the pending invite or knock, stored in its place and sent to no one
// (the room's servers never see it; the invite simply stays unanswered
// there). /sync shows the room in rooms.leave, /forget accepts it, and a
// later invite to the room replaces it as any new invite does.
//
// The spec (v1.19) describes no out-of-band membership event: the leave
// takes the shape of the member event it ends, as Synapse's does (prev
// event the invite or knock, auth events the invite's or knock's and the
// invite or knock itself), and its unsigned data carries what the client
// format's unsigned fields say about a state event that replaced another
// (client-server-api, ClientEvent "unsigned": replaces_state,
// prev_content), which syncapi passes on.

// localLeaveDeserved reports whether a failed remote leave may be
// completed by a local leave. Every failure on the other side deserves
// it: no server to ask, one that cannot be resolved or reached or does
// not answer in time (including the caller's own deadline, such as the
// deactivation runner's per-call limit), a 5xx, and a 4xx refusal of any
// kind (403 "not invited", 404 "unknown room" from a server that left it,
// 400 or 401 for a request it will never accept, 429): retrying cannot
// fix any of these for the user, and the invite is ours to end. A
// template that breaks security case 14 aborts the remote leave (nothing
// of it is signed) and deserves it too: the local leave is built from
// the stored invite, not from the template. What does not get it is on
// our side: a user who is not local (refused before any server is
// called), a room with no pending invite or knock (nothing to end: the
// remote failure is returned and nothing written), and a cancelled
// request (the caller gave up and is told nothing, so nothing changes
// behind its back). A failure to build or store the local leave is
// returned as it is (500), the invite kept.
func localLeaveDeserved(ctx context.Context) bool {
	return !errors.Is(ctx.Err(), context.Canceled)
}

// pendingRow is what storeLocalLeave reads of a pending membership.
type pendingRow struct {
	eventID, roomVersion, membership string
	event, strippedState             []byte
}

// storeLocalLeave ends userID's pending invite to or knock on roomID with
// a leave of this server's own (see the top of this file), in the write
// that replaces the row, and wakes /sync. It reports whether the pending
// membership has ended: false, writing nothing, when there is none (no
// row, so nothing to end); true without writing when the row already
// holds a leave, or when it changed while the leave was built (the
// room's server withdrew the invite, or a new invite or knock came: that
// one is left pending for the user to see and answer).
func (s *Server) storeLocalLeave(ctx context.Context, userID, roomID string) (bool, error) {
	row, ok, err := s.readPendingRow(ctx, userID, roomID)
	if err != nil || !ok {
		return false, err
	}
	if row.membership != "invite" && row.membership != "knock" {
		return true, nil // already ended: nothing left to reject
	}
	leave, err := s.buildLocalLeave(userID, roomID, row)
	if err != nil {
		return false, err
	}
	m := pendingMembership{
		userID: userID, roomID: roomID, eventID: leave.EventID(), roomVersion: row.roomVersion,
		event: withReplacedState(leave.JSON(), row), strippedState: row.strippedState, membership: "leave",
		replaces: row.eventID,
	}
	if s.beforeLocalLeave != nil {
		s.beforeLocalLeave()
	}
	var pos int64
	err = s.db.Write(ctx, func(tx storage.Tx) error { return s.writePendingMembership(ctx, tx, m, &pos) })
	if errors.Is(err, errPendingReplaced) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	s.log.Info("ended a pending membership with a local leave: no server took the remote one",
		"room_id", roomID, "membership", row.membership)
	if s.notify != nil {
		s.notify(RemoteInviteStream, pos)
	}
	return true, nil
}

// buildLocalLeave builds and signs userID's leave of roomID on top of the
// pending membership row: prev event the invite or knock, auth events its
// auth events and itself, depth one more.
func (s *Server) buildLocalLeave(userID, roomID string, row pendingRow) (gomatrixserverlib.PDU, error) {
	impl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(row.roomVersion))
	if err != nil {
		return nil, fmt.Errorf("pending membership in room version %q: %w", row.roomVersion, err)
	}
	var ref any = row.eventID
	if impl.EventFormat() == gomatrixserverlib.EventFormatV1 {
		// Room versions 1 and 2 reference an event with its hash.
		ref = []any{row.eventID, map[string]string{"sha256": gjson.GetBytes(row.event, "hashes.sha256").Str}}
	}
	var auth []any
	if raw := gjson.GetBytes(row.event, "auth_events").Raw; raw != "" {
		if err := json.Unmarshal([]byte(raw), &auth); err != nil {
			return nil, fmt.Errorf("pending membership's auth_events: %w", err)
		}
	}
	auth = append(auth, ref)
	depth := gjson.GetBytes(row.event, "depth").Int() + 1
	if depth < 1 || depth > maxSafeInt {
		depth = maxSafeInt
	}
	stateKey := userID
	proto := &gomatrixserverlib.ProtoEvent{
		SenderID: userID, RoomID: roomID, Type: "m.room.member", StateKey: &stateKey,
		Content: spec.RawJSON(`{"membership":"leave"}`), PrevEvents: []any{ref}, AuthEvents: auth,
		Depth: depth, Version: impl,
	}
	return guard(func() (gomatrixserverlib.PDU, error) {
		eb := impl.NewEventBuilderFromProtoEvent(proto)
		return eb.Build(s.now(), spec.ServerName(s.serverName), gomatrixserverlib.KeyID(s.key.ID), s.key.PrivateKey)
	})
}

// withReplacedState sets the unsigned data of leave, a leave of ours
// that ends the pending membership row, to the event it replaces and
// that event's content (client-server-api, ClientEvent "unsigned":
// replaces_state, prev_content). Unsigned data is outside the hashes and
// signatures: the event stays valid.
func withReplacedState(leave []byte, row pendingRow) []byte {
	unsigned := map[string]any{"replaces_state": row.eventID}
	if c := gjson.GetBytes(row.event, "content"); c.IsObject() {
		unsigned["prev_content"] = json.RawMessage(c.Raw)
	}
	raw, err := json.Marshal(unsigned)
	if err != nil {
		return leave
	}
	out, err := sjson.SetRawBytes(leave, "unsigned", raw)
	if err != nil {
		return leave
	}
	return out
}

// leaveUnsigned is the unsigned data of a stored leave that ends a
// pending membership, for /sync: the replaced event and its content when
// this server wrote them (a leave of a local user: a local leave, or one
// that went through send_leave), nil otherwise (another server's
// withdrawal of an invite or rejection of a knock, whose unsigned data
// is its own and is not passed on).
func (s *Server) leaveUnsigned(event []byte) map[string]json.RawMessage {
	if domainOf(gjson.GetBytes(event, "sender").Str) != s.serverName {
		return nil
	}
	var out map[string]json.RawMessage
	if r := gjson.GetBytes(event, "unsigned.replaces_state"); r.Type == gjson.String && strings.HasPrefix(r.Str, "$") {
		out = map[string]json.RawMessage{"replaces_state": json.RawMessage(r.Raw)}
		if c := gjson.GetBytes(event, "unsigned.prev_content"); c.IsObject() {
			out["prev_content"] = json.RawMessage(c.Raw)
		}
	}
	return out
}

// readPendingRow reads userID's pending membership row of roomID; ok is
// false when there is none.
func (s *Server) readPendingRow(ctx context.Context, userID, roomID string) (row pendingRow, ok bool, err error) {
	var event, stripped string
	err = s.db.Reader().QueryRow(ctx, `SELECT event_id, room_version, membership, event, invite_room_state
		FROM federation_remote_invites WHERE user_id = $1 AND room_id = $2`, userID, roomID).
		Scan(&row.eventID, &row.roomVersion, &row.membership, &event, &stripped)
	if storage.IsNoRows(err) {
		return row, false, nil
	}
	if err != nil {
		return row, false, err
	}
	row.event, row.strippedState = []byte(event), []byte(stripped)
	return row, true, nil
}
