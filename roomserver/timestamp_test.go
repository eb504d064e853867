package roomserver

import (
	"context"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestEventAtTimestampTieBreak: events sharing one origin_server_ts are
// ordered topologically: looking backwards from that time finds the
// last of them, forwards the first; before the room there is nothing
// (M_NOT_FOUND), after the last event nothing forwards.
// Complement: TestJumpToDateEndpoint "should find next event
// topologically before/after given timestamp when all message
// timestamps are the same".
func TestEventAtTimestampTieBreak(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		clock := time.UnixMilli(1_700_000_000_000)
		s.now = func() time.Time { return clock }
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: "public_chat"}).RoomID
		clock = clock.Add(time.Minute)
		same := clock.UnixMilli()
		var ids []string
		for i := 0; i < 4; i++ {
			ids = append(ids, mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"same time"}`))
		}
		clock = clock.Add(time.Minute)
		for _, c := range []struct {
			ts   int64
			dir  Direction
			want string
		}{
			{same, Backward, ids[3]},
			{same, Forward, ids[0]},
			{same - 1, Forward, ids[0]},
			{same + 1, Backward, ids[3]},
		} {
			ev, err := s.EventAtTimestamp(ctx, alice, room, c.ts, c.dir)
			if err != nil || ev.EventID != c.want {
				t.Errorf("ts %d dir %s: %v %v, want %s", c.ts, c.dir, ev, err, c.want)
			}
		}
		_, err := s.EventAtTimestamp(ctx, alice, room, 1_600_000_000_000, Backward)
		wantCode(t, err, mxerr.NotFound)
		_, err = s.EventAtTimestamp(ctx, alice, room, same+1, Forward)
		wantCode(t, err, mxerr.NotFound)
	})
}
