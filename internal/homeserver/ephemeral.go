package homeserver

import (
	"context"
	"encoding/json"
	"math"
	"slices"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/syncapi"
)

// ephemeral is sync's view of typing, receipts and presence: it turns
// clientapi's streams into client-format m.typing, m.receipt and
// m.presence events, and asks the roomserver who shares a room with the
// syncing user. It lives here because clientapi cannot import syncapi
// (syncapi reads clientapi's types).
type ephemeral struct {
	client *clientapi.Server
	rooms  *roomserver.Server
	// now returns the current time in milliseconds, for last_active_ago.
	now func() int64
}

var _ syncapi.Ephemeral = (*ephemeral)(nil)

// inChunk bounds the IDs passed to one IN (...) query.
const inChunk = 500

// EphemeralHeads reads the three stream heads.
func (e *ephemeral) EphemeralHeads(ctx context.Context) (syncapi.EphemeralPositions, error) {
	var h syncapi.EphemeralPositions
	var err error
	if _, h.Receipts, err = e.client.ReceiptsSince(ctx, "", nil, 0); err != nil {
		return h, err
	}
	if _, h.Presence, err = e.client.PresenceSince(ctx, math.MaxInt64); err != nil {
		return h, err
	}
	_, _, h.Typing = e.client.TypingFor("")
	return h, nil
}

// RoomEphemeral builds each room's m.typing and m.receipt events.
// Typing: with since.Typing 0 the rooms where someone is typing now;
// otherwise the rooms whose typing set changed in (since, to], with the
// current set (empty when everyone stopped). Receipts: those whose
// position is in (since, to], m.read.private only for userID.
// Spec: client-server-api, "Typing Notifications", "Receipts".
func (e *ephemeral) RoomEphemeral(ctx context.Context, userID string, roomIDs []string, since, to syncapi.EphemeralPositions) (map[string][]json.RawMessage, error) {
	out := map[string][]json.RawMessage{}
	for _, roomID := range roomIDs {
		users, changed, _ := e.client.TypingFor(roomID)
		send := len(users) > 0
		if since.Typing > 0 {
			send = changed > since.Typing && changed <= to.Typing
		}
		if send {
			if users == nil {
				users = []string{}
			}
			out[roomID] = append(out[roomID], mustMarshal(map[string]any{
				"type": "m.typing", "content": map[string]any{"user_ids": users}}))
		}
	}
	// content: event ID -> receipt type -> user ID -> receipt.
	type receiptContent = map[string]map[string]map[string]map[string]any
	byRoom := map[string]receiptContent{}
	var order []string
	for chunk := range slices.Chunk(roomIDs, inChunk) {
		receipts, _, err := e.client.ReceiptsSince(ctx, userID, chunk, since.Receipts)
		if err != nil {
			return nil, err
		}
		for _, r := range receipts {
			if r.Position > to.Receipts {
				continue // committed after the heads were read: next time
			}
			content := byRoom[r.RoomID]
			if content == nil {
				content = receiptContent{}
				byRoom[r.RoomID] = content
				order = append(order, r.RoomID)
			}
			types := content[r.EventID]
			if types == nil {
				types = map[string]map[string]map[string]any{}
				content[r.EventID] = types
			}
			users := types[r.Type]
			if users == nil {
				users = map[string]map[string]any{}
				types[r.Type] = users
			}
			receipt := map[string]any{"ts": r.TS}
			if r.ThreadID != "" {
				// One user has one receipt per event and type in this
				// shape: an unthreaded receipt wins over a threaded one.
				// Spec: MSC4102 (clarify threaded receipts in /sync).
				if old, ok := users[r.UserID]; ok && old["thread_id"] == nil {
					continue
				}
				receipt["thread_id"] = r.ThreadID
			}
			users[r.UserID] = receipt
		}
	}
	for _, roomID := range order {
		out[roomID] = append(out[roomID], mustMarshal(map[string]any{"type": "m.receipt", "content": byRoom[roomID]}))
	}
	return out, nil
}

// Presence returns the m.presence events of the users sharing a joined
// room with userID (and userID's own) whose presence changed in
// (since, to]. Spec: client-server-api, "Presence": presence is sent to
// users who share a room membership.
func (e *ephemeral) Presence(ctx context.Context, userID string, since, to int64) ([]json.RawMessage, error) {
	changes, _, err := e.client.PresenceSince(ctx, since)
	if err != nil {
		return nil, err
	}
	var others []string
	kept := changes[:0]
	for _, p := range changes {
		if p.Position > to {
			continue
		}
		kept = append(kept, p)
		if p.UserID != userID {
			others = append(others, p.UserID)
		}
	}
	if len(kept) == 0 {
		return nil, nil
	}
	sharing, err := e.sharingRoom(ctx, userID, others)
	if err != nil {
		return nil, err
	}
	now := e.now()
	var out []json.RawMessage
	for _, p := range kept {
		if p.UserID != userID && !sharing[p.UserID] {
			continue
		}
		out = append(out, mustMarshal(map[string]any{"type": "m.presence", "sender": p.UserID, "content": p.Content(now)}))
	}
	return out, nil
}

// PresenceOf returns the current m.presence events of userIDs, for the
// users a sync starts sharing a room with.
func (e *ephemeral) PresenceOf(ctx context.Context, userIDs []string, to int64) ([]json.RawMessage, error) {
	ps, err := e.client.PresenceOfUsers(ctx, userIDs, to)
	if err != nil {
		return nil, err
	}
	now := e.now()
	out := make([]json.RawMessage, 0, len(ps))
	for _, p := range ps {
		out = append(out, mustMarshal(map[string]any{"type": "m.presence", "sender": p.UserID, "content": p.Content(now)}))
	}
	return out, nil
}

// sharingRoom returns which of users are joined to a room userID is
// joined to. It asks per user or per room, whichever is fewer queries.
func (e *ephemeral) sharingRoom(ctx context.Context, userID string, users []string) (map[string]bool, error) {
	out := map[string]bool{}
	if len(users) == 0 {
		return out, nil
	}
	mine, err := e.rooms.JoinedRooms(ctx, userID)
	if err != nil || len(mine) == 0 {
		return out, err
	}
	if len(users) <= len(mine) {
		joined := make(map[string]bool, len(mine))
		for _, r := range mine {
			joined[r] = true
		}
		for _, u := range users {
			theirs, err := e.rooms.JoinedRooms(ctx, u)
			if err != nil {
				return nil, err
			}
			if slices.ContainsFunc(theirs, func(r string) bool { return joined[r] }) {
				out[u] = true
			}
		}
		return out, nil
	}
	for _, roomID := range mine {
		for chunk := range slices.Chunk(users, inChunk) {
			members, err := e.rooms.IndexedStateKeys(ctx, roomID, "m.room.member", chunk)
			if err != nil {
				return nil, err
			}
			for _, m := range members {
				if m.Membership == "join" && m.StateKey != nil {
					out[*m.StateKey] = true
				}
			}
		}
	}
	return out, nil
}

// SetPresence applies a sync request's set_presence.
func (e *ephemeral) SetPresence(ctx context.Context, userID, presence string) error {
	return e.client.SyncPresence(ctx, userID, presence)
}

func mustMarshal(v any) json.RawMessage {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err) // maps of strings, numbers and bools always marshal
	}
	return data
}
