package roomserver

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"

	"github.com/myelin-chat/myelin/storage/storagetest"
)

// BenchmarkSendEvent measures one local message end to end: build on the
// extremities, hash, sign, auth-check and persist (SQLite, fsync on).
func BenchmarkSendEvent(b *testing.B) {
	db := storagetest.OpenSQLite(b)
	s := newTestServer(b, db)
	room := mustCreate(b, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
	ctx := context.Background()
	req := SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.message",
		Content: json.RawMessage(`{"msgtype":"m.text","body":"benchmark message"}`)}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.SendEvent(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSendEventParallel sends into 8 rooms at once, so group commit
// shares fsyncs between rooms.
func BenchmarkSendEventParallel(b *testing.B) {
	db := storagetest.OpenSQLite(b)
	s := newTestServer(b, db)
	var rooms []string
	for i := 0; i < 8; i++ {
		rooms = append(rooms, mustCreate(b, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID)
	}
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		room := rooms[int(n.Add(1))%len(rooms)]
		req := SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.message",
			Content: json.RawMessage(`{"msgtype":"m.text","body":"benchmark message"}`)}
		for pb.Next() {
			if _, err := s.SendEvent(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
