package clientapi

import (
	"context"
	"encoding/json"
	"slices"
	"unicode/utf8"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Typing, receipts and presence over federation. Inbound EDUs arrive
// through federationapi's sinks (TypingSink, ReceiptSink, PresenceSink),
// which has checked that the user belongs to the sending server
// (security case 15); outbound ones are queued for the servers of the
// rooms concerned. Spec: server-server-api, "Typing Notifications",
// "Receipts", "Presence".

// RemoteTyping records a remote user's typing notification. Remote
// servers send no timeout, so the default one applies.
func (s *Server) RemoteTyping(ctx context.Context, roomID, userID string, typing bool) error {
	if s.rooms.rooms == nil {
		return nil
	}
	s.rooms.typing.set(ctx, roomID, userID, typing, defaultTypingTimeout)
	return nil
}

// RemoteReceipt records a remote user's m.read receipt. Other receipt
// types are not federated and are dropped.
func (s *Server) RemoteReceipt(ctx context.Context, roomID, receiptType, userID string, eventIDs []string, data json.RawMessage) error {
	if s.rooms.rooms == nil || receiptType != "m.read" || len(eventIDs) == 0 {
		return nil
	}
	var d struct {
		TS       int64  `json:"ts"`
		ThreadID string `json:"thread_id"`
	}
	_ = json.Unmarshal(data, &d)
	if d.TS <= 0 {
		d.TS = nowMillis()
	}
	eventID := eventIDs[len(eventIDs)-1]
	if !validRemoteReceiptEventID(eventID) {
		return mxerr.New(mxerr.InvalidParam, "invalid event ID in receipt")
	}
	return s.storeReceipt(ctx, Receipt{RoomID: roomID, UserID: userID, Type: receiptType, EventID: eventID, ThreadID: d.ThreadID, TS: d.TS})
}

// RemotePresence records one remote user's presence update.
func (s *Server) RemotePresence(ctx context.Context, userID string, update json.RawMessage) error {
	if s.rooms.rooms == nil {
		return nil
	}
	var u struct {
		Presence      string  `json:"presence"`
		StatusMsg     *string `json:"status_msg"`
		LastActiveAgo int64   `json:"last_active_ago"`
	}
	if err := json.Unmarshal(update, &u); err != nil {
		return err
	}
	switch u.Presence {
	case "online", "unavailable", "offline":
	default:
		return mxerr.New(mxerr.InvalidParam, "unknown presence %q", u.Presence)
	}
	if u.StatusMsg != nil && len(*u.StatusMsg) > 4*maxStatusMsg {
		return mxerr.New(mxerr.InvalidParam, "status_msg too long")
	}
	return s.writePresence(ctx, userID, u.Presence, u.StatusMsg, nowMillis()-max(u.LastActiveAgo, 0))
}

// validRemoteReceiptEventID bounds the event ID a remote receipt names.
// Only the spec's length limit is enforced, not the '$' sigil: the ID is
// the remote server's word, kept as an opaque key of the m.receipt
// content, and this server may not hold the event (a partial-state
// room, MSC3706, lacks much of its history), so it cannot be checked
// further. Synapse accepts such IDs, and Complement's msc3902
// CanReceiveReceiptDuringPartialStateJoin sends one without a sigil.
// Spec: appendices, "Event IDs" (at most 255 bytes).
func validRemoteReceiptEventID(id string) bool {
	return id != "" && len(id) <= 255 && utf8.ValidString(id)
}

// otherServers lists the servers other than this one with users joined
// to any of roomIDs.
func (s *Server) otherServers(ctx context.Context, roomIDs ...string) ([]string, error) {
	var out []string
	for _, roomID := range roomIDs {
		servers, err := s.rooms.rooms.JoinedServers(ctx, roomID)
		if err != nil {
			return nil, err
		}
		for _, server := range servers {
			if server != s.serverName && !slices.Contains(out, server) {
				out = append(out, server)
			}
		}
	}
	return out, nil
}

// queueEDU sends an EDU about a local user to the other servers of
// roomIDs. Ephemeral data is best effort for the client: a failure to
// queue is logged, and the local change stands.
func (s *Server) queueEDU(ctx context.Context, eduType string, content any, roomIDs ...string) {
	if s.federation == nil {
		return
	}
	servers, err := s.otherServers(ctx, roomIDs...)
	if err == nil && len(servers) > 0 {
		err = s.federation.QueueEDU(ctx, servers, eduType, content)
	}
	if err != nil {
		s.log.Warn("queueing EDU for other servers", "edu_type", eduType, "err", err)
	}
}

// sendTypingEDU tells the room's other servers that a local user started
// or stopped typing.
func (s *Server) sendTypingEDU(ctx context.Context, roomID, userID string, typing bool) {
	s.queueEDU(ctx, "m.typing", map[string]any{"room_id": roomID, "user_id": userID, "typing": typing}, roomID)
}

// sendReceiptEDU sends a local user's public read receipt to the room's
// other servers.
func (s *Server) sendReceiptEDU(ctx context.Context, r Receipt) {
	data := map[string]any{"ts": r.TS}
	if r.ThreadID != "" {
		data["thread_id"] = r.ThreadID
	}
	content := map[string]any{r.RoomID: map[string]any{"m.read": map[string]any{
		r.UserID: map[string]any{"event_ids": []string{r.EventID}, "data": data}}}}
	s.queueEDU(ctx, "m.receipt", content, r.RoomID)
}

// sendPresenceEDU sends a local user's presence to the servers sharing a
// room with them.
func (s *Server) sendPresenceEDU(ctx context.Context, p Presence) {
	if s.federation == nil || s.localpart(p.UserID) == "" {
		return
	}
	rooms, err := s.rooms.rooms.JoinedRooms(ctx, p.UserID)
	if err != nil {
		s.log.Warn("presence EDU: listing rooms", "err", err)
		return
	}
	update := p.Content(nowMillis())
	update["user_id"] = p.UserID
	s.queueEDU(ctx, "m.presence", map[string]any{"push": []any{update}}, rooms...)
}
