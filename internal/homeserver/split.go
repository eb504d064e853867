package homeserver

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/federationapi"
	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
)

// Split deployments (global.components; docs/split.md): the pieces of
// assemble that carry work between processes.

// typingChange is a typing change on the typing relay.
type typingChange struct {
	RoomID    string `json:"room_id"`
	UserID    string `json:"user_id"`
	Typing    bool   `json:"typing"`
	TimeoutMS int64  `json:"timeout_ms"`
}

func encodeTyping(roomID, userID string, typing bool, timeout time.Duration) []byte {
	return mustMarshal(typingChange{RoomID: roomID, UserID: userID, Typing: typing, TimeoutMS: timeout.Milliseconds()})
}

// applyTyping applies another process's typing change to this one's
// typing state.
func applyTyping(client *clientapi.Server, payload []byte, logger *slog.Logger) {
	var c typingChange
	if err := json.Unmarshal(payload, &c); err != nil || c.RoomID == "" || c.UserID == "" {
		logger.Warn("ignoring a malformed typing change from another process", "err", err)
		return
	}
	client.ApplyTyping(c.RoomID, c.UserID, c.Typing, time.Duration(c.TimeoutMS)*time.Millisecond)
}

// wakeSenderOnRoomEvents wakes this process's federation sender whenever
// the room event stream advances in any process (the notifier hears the
// others through Redis), until ctx ends: in a split deployment the
// processes that write most events run no sender. The sender also reads
// the stream every 2 s, so a lost notification only delays.
func wakeSenderOnRoomEvents(ctx context.Context, notify notifier.Broadcaster, federation *federationapi.Server) {
	seen := notify.Positions()[roomserver.Stream]
	for {
		changed := notify.Changed()
		if p := notify.Positions()[roomserver.Stream]; p > seen {
			seen = p
			federation.Notify(roomserver.Stream, p)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}
