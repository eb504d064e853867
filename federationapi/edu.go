package federationapi

import (
	"context"
	"encoding/json"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// domainOf returns the server part of a user ID ("" if none).
func domainOf(userID string) string {
	for i := 0; i < len(userID); i++ {
		if userID[i] == ':' {
			return userID[i+1:]
		}
	}
	return ""
}

// processEDU routes one inbound EDU to its sink. Every EDU is checked
// against the origin first: an EDU about a user of another server is
// dropped whole, with no side effect (security case 15).
// Spec: server-server-api, "EDUs" and the sections of each type.
func (s *Server) processEDU(ctx context.Context, origin string, raw json.RawMessage) {
	var edu struct {
		Type    string          `json:"edu_type"`
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(raw, &edu); err != nil || len(edu.Content) == 0 {
		return
	}
	log := s.log.With("origin", origin, "edu_type", edu.Type)
	var err error
	switch edu.Type {
	case "m.typing":
		err = s.eduTyping(ctx, origin, edu.Content)
	case "m.receipt":
		err = s.eduReceipt(ctx, origin, edu.Content)
	case "m.presence":
		err = s.eduPresence(ctx, origin, edu.Content)
	case "m.device_list_update", "m.signing_key_update":
		err = s.eduDeviceList(ctx, origin, edu.Type, edu.Content)
	case "m.direct_to_device":
		err = s.eduToDevice(ctx, origin, edu.Content)
	default:
		log.Debug("ignoring unknown EDU type")
		return
	}
	if err != nil {
		log.Info("inbound EDU dropped", "err", err)
	}
}

func forged(origin, userID string) error {
	return mxerr.New(mxerr.Forbidden, "EDU about %q from %s: not a user of the origin", userID, origin)
}

var errNoSink = mxerr.New(mxerr.Unrecognized, "no component takes this EDU type yet")

func (s *Server) eduTyping(ctx context.Context, origin string, content json.RawMessage) error {
	var c struct {
		RoomID string `json:"room_id"`
		UserID string `json:"user_id"`
		Typing bool   `json:"typing"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return err
	}
	if domainOf(c.UserID) != origin {
		return forged(origin, c.UserID)
	}
	if in, err := s.rooms.ServerInRoom(ctx, origin, c.RoomID); err != nil || !in {
		return mxerr.New(mxerr.Forbidden, "%s is not in room %s", origin, c.RoomID)
	}
	if err := s.checkACL(ctx, c.RoomID, origin); err != nil {
		return err
	}
	if s.edus.Typing == nil {
		return errNoSink
	}
	return s.edus.Typing.RemoteTyping(ctx, c.RoomID, c.UserID, c.Typing)
}

// eduReceipt checks every user in the EDU before delivering any of it
// (one forged user rejects the whole EDU). One EDU may carry receipts for
// several rooms: a room the origin is not in, or whose server ACL denies
// the origin, is dropped on its own and the other rooms' receipts are
// still delivered; so is one user's receipt that names an event of
// another room (receiptEventsInRoom).
// Spec: server-server-api, "Server Access Control Lists (ACLs)" (EDUs
// for a room are ignored from a denied server) and "Receipts".
func (s *Server) eduReceipt(ctx context.Context, origin string, content json.RawMessage) error {
	var c map[string]map[string]map[string]struct {
		EventIDs []string        `json:"event_ids"`
		Data     json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return err
	}
	for _, byType := range c {
		for _, byUser := range byType {
			for userID := range byUser {
				if domainOf(userID) != origin {
					return forged(origin, userID)
				}
			}
		}
	}
	var refused error
	for roomID := range c {
		if in, err := s.rooms.ServerInRoom(ctx, origin, roomID); err != nil || !in {
			refused = mxerr.New(mxerr.Forbidden, "%s is not in room %s", origin, roomID)
			delete(c, roomID)
			continue
		}
		if err := s.checkACL(ctx, roomID, origin); err != nil {
			refused = err
			delete(c, roomID)
		}
	}
	if len(c) == 0 {
		return refused
	}
	if s.edus.Receipts == nil {
		return errNoSink
	}
	var dropped error
	for roomID, byType := range c {
		for receiptType, byUser := range byType {
			for userID, r := range byUser {
				if err := s.receiptEventsInRoom(ctx, roomID, r.EventIDs); err != nil {
					if !mxerr.Is(err, mxerr.InvalidParam) {
						return err
					}
					dropped = err // this user's receipt only; logged by processEDU
					continue
				}
				if err := s.edus.Receipts.RemoteReceipt(ctx, roomID, receiptType, userID, r.EventIDs, r.Data); err != nil {
					return err
				}
			}
		}
	}
	return dropped
}

// receiptEventsInRoom refuses (M_INVALID_PARAM) a receipt naming an event
// this server holds in another room than the receipt's: a receipt marks
// a user's place in one room, and an event of another room would give
// that room's readers (and its unread counts) a place that is not in it.
// An event this server does not hold is let through: in a partial-state
// room (MSC3706) much of the history is missing, and the ID is kept as an
// opaque key (see clientapi's RemoteReceipt).
// Spec: server-server-api, "Receipts" (the receipts of a room are for
// events of that room); client-server-api, "Receipts".
func (s *Server) receiptEventsInRoom(ctx context.Context, roomID string, eventIDs []string) error {
	for _, eventID := range eventIDs {
		ev, _, err := s.rooms.FederationEvent(ctx, eventID)
		if mxerr.Is(err, mxerr.NotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if ev.RoomID != roomID {
			return mxerr.New(mxerr.InvalidParam, "receipt in %s names event %s of another room", roomID, eventID)
		}
	}
	return nil
}

func (s *Server) eduPresence(ctx context.Context, origin string, content json.RawMessage) error {
	var c struct {
		Push []json.RawMessage `json:"push"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return err
	}
	users := make([]string, len(c.Push))
	for i, p := range c.Push {
		var u struct {
			UserID string `json:"user_id"`
		}
		if err := json.Unmarshal(p, &u); err != nil {
			return err
		}
		if domainOf(u.UserID) != origin {
			return forged(origin, u.UserID)
		}
		users[i] = u.UserID
	}
	if s.edus.Presence == nil {
		return errNoSink
	}
	for i, p := range c.Push {
		if err := s.edus.Presence.RemotePresence(ctx, users[i], p); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) eduDeviceList(ctx context.Context, origin, eduType string, content json.RawMessage) error {
	var c struct {
		UserID string `json:"user_id"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return err
	}
	if domainOf(c.UserID) != origin {
		return forged(origin, c.UserID)
	}
	if s.edus.DeviceLists == nil {
		return errNoSink
	}
	if eduType == "m.signing_key_update" {
		return s.edus.DeviceLists.RemoteSigningKeyUpdate(ctx, c.UserID, content)
	}
	return s.edus.DeviceLists.RemoteDeviceListUpdate(ctx, c.UserID, content)
}

// eduToDevice delivers to-device messages for local users; the sender
// must be a user of the origin.
func (s *Server) eduToDevice(ctx context.Context, origin string, content json.RawMessage) error {
	var c struct {
		Sender    string                                `json:"sender"`
		Type      string                                `json:"type"`
		MessageID string                                `json:"message_id"`
		Messages  map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return err
	}
	if domainOf(c.Sender) != origin {
		return forged(origin, c.Sender)
	}
	local := map[string]map[string]json.RawMessage{}
	for userID, devices := range c.Messages {
		if domainOf(userID) == s.serverName {
			local[userID] = devices
		}
	}
	if len(local) == 0 {
		return nil
	}
	if s.edus.ToDevice == nil {
		return errNoSink
	}
	return s.edus.ToDevice.RemoteToDevice(ctx, c.Sender, c.Type, c.MessageID, local)
}

// announceDevices tells the servers of a room userID (local) just joined
// over federation about the user's devices, one m.device_list_update per
// device: those servers may share no other room with the user and so
// would not otherwise learn of them until the next change. The updates
// carry the user's current stream ID and no prev_id, so a receiver that
// tracked the user before resyncs. Spec: server-server-api, "Device
// Management"; Complement TestDeviceListsUpdateOverFederationOnRoomJoin.
func (s *Server) announceDevices(ctx context.Context, userID, roomID string) error {
	if s.userKeys == nil || s.silentJoins.Load() {
		return nil
	}
	// Not to a partial-state room's send_join servers: a partial-state
	// join announces nothing (MSC3706; Complement's msc3902 tests).
	servers, err := s.rooms.JoinedServersInState(ctx, roomID)
	if err != nil {
		return err
	}
	var dests []string
	for _, server := range servers {
		if server != s.serverName {
			dests = append(dests, server)
		}
	}
	return s.sendDevices(ctx, userID, dests)
}

// sendDevices queues for dests one m.device_list_update per device of
// userID (local), with the user's current stream ID and no prev_id, so
// that a receiver that tracked the user before resyncs.
func (s *Server) sendDevices(ctx context.Context, userID string, dests []string) error {
	if len(dests) == 0 {
		return nil
	}
	resp, err := s.userKeys.FederationUserDevices(ctx, userID)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	var list struct {
		StreamID int64 `json:"stream_id"`
		Devices  []struct {
			DeviceID    string          `json:"device_id"`
			Keys        json.RawMessage `json:"keys"`
			DisplayName string          `json:"device_display_name"`
		} `json:"devices"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return err
	}
	for _, d := range list.Devices {
		content := map[string]any{"user_id": userID, "device_id": d.DeviceID, "stream_id": list.StreamID, "prev_id": []int64{}}
		if len(d.Keys) > 0 {
			content["keys"] = d.Keys
		}
		if d.DisplayName != "" {
			content["device_display_name"] = d.DisplayName
		}
		if err := s.QueueEDU(ctx, dests, "m.device_list_update", content); err != nil {
			return err
		}
	}
	return nil
}
