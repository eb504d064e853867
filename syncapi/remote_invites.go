package syncapi

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/myelin-chat/myelin/federationapi"
	"github.com/myelin-chat/myelin/roomserver"
)

// RemoteInvites are invites of local users to rooms only other servers
// hold, which the roomserver cannot list (*federationapi.Server). It is
// optional: without it its token slot stays 0. Its stream notifies as
// federationapi.RemoteInviteStream.
type RemoteInvites interface {
	// RemoteInviteHead is the stream's newest position.
	RemoteInviteHead(ctx context.Context) (int64, error)
	// RemoteInvitesSince lists userID's pending invites received in
	// (since, to]; since < 0 means from the start.
	RemoteInvitesSince(ctx context.Context, userID string, since, to int64) ([]federationapi.RemoteInvite, error)
}

// addRemoteInvites puts the remote invites and knocks new since the
// token (all pending ones on an initial sync) in the invite and knock
// sections, and the ones that ended in a leave in the leave section as
// rooms held here are (see "leave"), unless the roomserver already has a
// membership of the user in that room.
// Spec: client-server-api, "GET /_matrix/client/v3/sync" (rooms.invite,
// rooms.leave).
func (b *roomBuilder) addRemoteInvites(ctx context.Context, memberships []roomserver.MembershipEntry, out *roomsSection) error {
	if b.s.invites == nil {
		return nil
	}
	since := b.since.RemoteInvites
	if b.initial() {
		since = -1
	}
	invites, err := b.s.invites.RemoteInvitesSince(ctx, b.req.userID, since, b.heads.RemoteInvites)
	if err != nil {
		return err
	}
	held := map[string]bool{}
	for _, m := range memberships {
		held[m.RoomID] = true
	}
	var forgotten map[string]bool // read at the first leave that needs it
	for _, inv := range invites {
		if held[inv.RoomID] || !roomAllowed(b.req.filter, inv.RoomID) {
			continue
		}
		if inv.Membership == "leave" {
			// A pending invite or knock that ended in a leave: the room's
			// server withdrew the invite or rejected the knock, or the
			// user rejected or withdrew it. As for a room held here
			// (joined.go, "leave", "ban"): one left since the token
			// always appears, so the client learns it left; one left
			// earlier only when the filter asks for left rooms
			// (include_leave) on an initial or full_state sync; a
			// forgotten one only as news to an incremental sync.
			// Spec: client-server-api, "Leaving rooms" (include_leave,
			// forgotten rooms).
			newSince := b.req.since != nil && inv.StreamPos > b.since.RemoteInvites
			if !newSince && !(b.initial() && b.roomFilter().IncludeLeave) {
				continue
			}
			if b.initial() {
				if forgotten == nil {
					if forgotten, err = b.s.rooms.ForgottenRooms(ctx, b.req.userID); err != nil {
						return err
					}
				}
				if forgotten[inv.RoomID] {
					continue
				}
			}
			out.Leave[inv.RoomID] = &leftRoom{
				Timeline:    timeline{Events: []json.RawMessage{remoteLeaveEvent(inv)}},
				AccountData: events(nil),
			}
			continue
		}
		if inv.Membership == "knock" {
			// Spec: client-server-api, "GET /_matrix/client/v3/sync"
			// (rooms.knock): a knock on a room only other servers hold.
			out.Knock[inv.RoomID] = &knockedRoom{KnockState: strippedList{Events: remoteInviteState(inv)}}
			continue
		}
		st := remoteInviteState(inv)
		if hide, err := b.hideInvite(ctx, inviter(st, b.req.userID)); err != nil {
			return err
		} else if hide {
			continue // ignored user, or MSC4155 invite filtering
		}
		out.Invite[inv.RoomID] = &invitedRoom{InviteState: strippedList{Events: st}}
	}
	return nil
}

// remoteInviteState is the stripped state the inviting server sent, and
// the invite event itself, stripped.
func remoteInviteState(inv federationapi.RemoteInvite) []strippedEvent {
	var raw []json.RawMessage
	_ = json.Unmarshal(inv.InviteRoomState, &raw)
	out := make([]strippedEvent, 0, len(raw)+1)
	for _, r := range raw {
		var e strippedEvent
		if json.Unmarshal(r, &e) == nil && e.Type != "" && e.Type != "m.room.member" {
			if e.Type == "m.room.create" && e.OriginServerTS != 0 {
				// A whole create PDU (MSC4311): in room version 12 it has
				// no room_id, and its event ID is the room ID's hash.
				if e.RoomID == "" {
					e.RoomID = inv.RoomID
				}
				if e.EventID == "" && inv.RoomVersion == "12" {
					e.EventID = "$" + strings.TrimPrefix(inv.RoomID, "!")
				}
			}
			out = append(out, e)
		}
	}
	var self strippedEvent
	if json.Unmarshal(inv.Event, &self) == nil {
		out = append(out, self)
	}
	return out
}

// remoteLeaveEvent is a remote leave in the client format: the PDU's
// client-visible keys and its event ID.
func remoteLeaveEvent(inv federationapi.RemoteInvite) json.RawMessage {
	var pdu struct {
		Type           string          `json:"type"`
		StateKey       *string         `json:"state_key"`
		Sender         string          `json:"sender"`
		Content        json.RawMessage `json:"content"`
		OriginServerTS int64           `json:"origin_server_ts"`
	}
	_ = json.Unmarshal(inv.Event, &pdu)
	// Spec: client-server-api, ClientEvent "unsigned": the requesting
	// user's membership at the event is the leave itself; a leave of the
	// user's own also names the invite or knock it replaced.
	unsigned := map[string]json.RawMessage{}
	for k, v := range inv.LeaveUnsigned {
		unsigned[k] = v
	}
	unsigned["membership"] = json.RawMessage(`"leave"`)
	out, _ := json.Marshal(map[string]any{
		"type": pdu.Type, "state_key": pdu.StateKey, "sender": pdu.Sender, "content": pdu.Content,
		"origin_server_ts": pdu.OriginServerTS, "event_id": inv.EventID, "room_id": inv.RoomID,
		"unsigned": unsigned,
	})
	return out
}
