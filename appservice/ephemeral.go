package appservice

import "context"

// ephemeralBatch bounds how many receipts, presence changes and typing
// rooms one transaction takes from each stream.
const ephemeralBatch = 100

// Ephemeral is what the senders read of typing, receipts and presence,
// for services registered with receive_ephemeral.
type Ephemeral interface {
	// ReceiptsAfter returns the first limit receipts (every type,
	// m.read.private included) whose stream position is above after,
	// in position order. Positions commit in order: a reader that read
	// up to a position has seen every receipt below it.
	ReceiptsAfter(ctx context.Context, after int64, limit int) ([]Receipt, error)
	// PresenceAfter is the same for presence changes.
	PresenceAfter(ctx context.Context, after int64, limit int) ([]Presence, error)
	// Heads returns the receipt and presence stream heads.
	Heads(ctx context.Context) (receipts, presence int64, err error)
	// TypingChangedAfter returns the first limit rooms, in change order,
	// whose typing set changed at a position in (after, head], and the
	// head. Typing lives in the memory of the process.
	TypingChangedAfter(after int64, limit int) ([]TypingRoom, int64)
}

// Receipt is one read receipt.
type Receipt struct {
	RoomID, UserID string
	// Type is m.read or m.read.private.
	Type    string
	EventID string
	// ThreadID is "" for an unthreaded receipt.
	ThreadID string
	TS       int64
	Position int64
}

// Presence is one user's presence change.
type Presence struct {
	UserID string
	// Content is the m.presence content as of when it was read.
	Content  map[string]any
	Position int64
}

// TypingRoom is who is typing in a room after its last change.
type TypingRoom struct {
	RoomID  string
	UserIDs []string
	Changed int64
}

// ephemeralCursor is where a sender is in the three ephemeral streams.
type ephemeralCursor struct {
	receipts, presence, typing int64
}

// nextPos is where a stream read of n items from after ends: at the
// last item's position.
func nextPos(after int64, n int, last func() int64) int64 {
	if n == 0 {
		return after
	}
	return max(after, last())
}

// ephemeral reads the next batch of each ephemeral stream from cur and
// returns the items of interest to the service, in the client-server
// format, and where each stream ends.
//
// Spec: application-service-api, "Pushing ephemeral data": m.typing and
// m.receipt under the rules of events (interest in the room, or in a
// user in the room) with a top-level room_id; m.read.private only for
// users of the service's namespaces; m.presence of users in its
// namespaces or sharing a room with it.
func (snd *sender) ephemeral(ctx context.Context, cur ephemeralCursor, ic *interestCache) ([]map[string]any, ephemeralCursor, error) {
	e := snd.s.deps.Ephemeral
	reg, server := snd.reg, snd.s.deps.ServerName
	next := cur
	var out []map[string]any

	// Receipts, grouped into one m.receipt per room (a further one when
	// the same user, event and type come with another thread).
	receipts, err := e.ReceiptsAfter(ctx, cur.receipts, ephemeralBatch)
	if err != nil {
		return nil, cur, err
	}
	next.receipts = nextPos(cur.receipts, len(receipts), func() int64 { return receipts[len(receipts)-1].Position })
	type content = map[string]map[string]map[string]any // event ID -> type -> user -> receipt
	byRoom := map[string][]content{}
	var rooms []string
	for _, r := range receipts {
		if r.Type == "m.read.private" && !reg.OwnsUser(r.UserID, server) {
			continue
		}
		ok := reg.OwnsUser(r.UserID, server)
		if !ok {
			if ok, err = snd.roomInterested(ctx, r.RoomID, ic); err != nil {
				return nil, cur, err
			}
		}
		if !ok {
			continue
		}
		receipt := map[string]any{"ts": r.TS}
		if r.ThreadID != "" {
			receipt["thread_id"] = r.ThreadID
		}
		if _, seen := byRoom[r.RoomID]; !seen {
			rooms = append(rooms, r.RoomID)
		}
		placed := false
		for _, c := range byRoom[r.RoomID] {
			if _, taken := c[r.EventID][r.Type][r.UserID]; taken {
				continue
			}
			if c[r.EventID] == nil {
				c[r.EventID] = map[string]map[string]any{}
			}
			if c[r.EventID][r.Type] == nil {
				c[r.EventID][r.Type] = map[string]any{}
			}
			c[r.EventID][r.Type][r.UserID] = receipt
			placed = true
			break
		}
		if !placed {
			byRoom[r.RoomID] = append(byRoom[r.RoomID], content{r.EventID: {r.Type: {r.UserID: receipt}}})
		}
	}
	for _, roomID := range rooms {
		for _, c := range byRoom[roomID] {
			out = append(out, map[string]any{"type": "m.receipt", "room_id": roomID, "content": c})
		}
	}

	// Typing: the room's current typing set.
	typing, _ := e.TypingChangedAfter(cur.typing, ephemeralBatch)
	next.typing = nextPos(cur.typing, len(typing), func() int64 { return typing[len(typing)-1].Changed })
	for _, tr := range typing {
		ok := false
		for _, u := range tr.UserIDs {
			ok = ok || reg.OwnsUser(u, server)
		}
		if !ok {
			if ok, err = snd.roomInterested(ctx, tr.RoomID, ic); err != nil {
				return nil, cur, err
			}
		}
		if !ok {
			continue
		}
		users := tr.UserIDs
		if users == nil {
			users = []string{}
		}
		out = append(out, map[string]any{"type": "m.typing", "room_id": tr.RoomID, "content": map[string]any{"user_ids": users}})
	}

	// Presence.
	presence, err := e.PresenceAfter(ctx, cur.presence, ephemeralBatch)
	if err != nil {
		return nil, cur, err
	}
	next.presence = nextPos(cur.presence, len(presence), func() int64 { return presence[len(presence)-1].Position })
	for _, p := range presence {
		ok, err := snd.presenceInterested(ctx, p.UserID, ic)
		if err != nil {
			return nil, cur, err
		}
		if ok {
			out = append(out, map[string]any{"type": "m.presence", "sender": p.UserID, "content": p.Content})
		}
	}
	return out, next, nil
}

// presenceInterested says whether the service should see userID's
// presence: the user is in its namespaces, or joined to a room it is
// interested in (a room it shares with the user).
func (snd *sender) presenceInterested(ctx context.Context, userID string, ic *interestCache) (bool, error) {
	if snd.reg.OwnsUser(userID, snd.s.deps.ServerName) {
		return true, nil
	}
	rooms, err := snd.s.deps.Rooms.JoinedRooms(ctx, userID)
	if err != nil {
		return false, err
	}
	for _, roomID := range rooms {
		ok, err := snd.roomInterested(ctx, roomID, ic)
		if err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}
