package roomserver

import (
	"context"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestHistoryBefore: HistoryBefore lists the accepted events stored
// below the stream (negative positions, as backfill stores history),
// highest first, below the position given and up to the limit; rejected
// and soft-failed ones are never listed, nor any stream event.
func TestHistoryBefore(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPrivateChat}).RoomID
		var ids []string
		for _, body := range []string{"one", "two", "three", "four", "five"} {
			ids = append(ids, mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"`+body+`"}`))
		}
		// The first four become history at -1 .. -4; -2 rejected, -3
		// soft-failed. The fifth stays in the stream.
		err := db.Write(ctx, func(tx storage.Tx) error {
			for i, id := range ids[:4] {
				if _, err := tx.Exec(ctx, `UPDATE roomserver_events SET event_nid = $1, rejected = $2, soft_failed = $3
					WHERE event_id = $4`, -int64(i+1), i == 1, i == 2, id); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		s.events = newEventCache(4096)
		list := func(before int64, limit int) []string {
			t.Helper()
			evs, err := s.HistoryBefore(ctx, before, limit)
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, ev := range evs {
				out = append(out, ev.EventID)
			}
			return out
		}
		for _, c := range []struct {
			before int64
			limit  int
			want   []string
		}{
			{0, 10, []string{ids[0], ids[3]}},
			{1 << 40, 10, []string{ids[0], ids[3]}}, // a stream position: history only
			{-1, 10, []string{ids[3]}},
			{0, 1, []string{ids[0]}},
			{-4, 10, nil},
		} {
			if got := list(c.before, c.limit); !slices.Equal(got, c.want) {
				t.Errorf("HistoryBefore(%d, %d) = %v, want %v", c.before, c.limit, got, c.want)
			}
		}
	})
}
