package roomserver

import (
	"context"
	"encoding/json"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// cpuTime is the process's user+system CPU time so far. CPU per event is
// a steadier figure than wall time on a machine shared with builds.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measure reports events/s, CPU µs per event and events per COMMIT (one
// COMMIT is one fsync) for a benchmark that sends b.N events.
type measure struct {
	db      *storage.DB
	start   time.Time
	cpu     time.Duration
	commits int64
}

func startMeasure(b *testing.B, db *storage.DB) *measure {
	b.ResetTimer()
	return &measure{db: db, start: time.Now(), cpu: cpuTime(b), commits: db.CommitCount() - db.WALRestarts()}
}

func (m *measure) report(b *testing.B) {
	b.StopTimer()
	wall := time.Since(m.start)
	cpu := cpuTime(b) - m.cpu
	b.ReportMetric(float64(b.N)/wall.Seconds(), "events/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/event")
	if c := m.db.CommitCount() - m.db.WALRestarts() - m.commits; c > 0 {
		b.ReportMetric(float64(b.N)/float64(c), "events/commit")
	}
}

func benchSendRequest(room string) SendEventRequest {
	return SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.message",
		Content: json.RawMessage(`{"msgtype":"m.text","body":"benchmark message"}`)}
}

// BenchmarkSendEvent measures one local message end to end: build on the
// extremities, hash, sign, auth-check and persist (SQLite, fsync on).
func BenchmarkSendEvent(b *testing.B) {
	db := storagetest.OpenSQLite(b)
	s := newTestServer(b, db)
	room := mustCreate(b, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
	ctx := context.Background()
	req := benchSendRequest(room)
	m := startMeasure(b, db)
	for i := 0; i < b.N; i++ {
		if _, err := s.SendEvent(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	m.report(b)
}

// BenchmarkSendEventParallel has 8 senders, each in its own room, so
// group commit shares fsyncs between rooms.
func BenchmarkSendEventParallel(b *testing.B) { benchmarkSendParallel(b, 8) }

// BenchmarkSendEventParallelOneRoom has 8 senders in one room: they
// take the room lock in turn to build, and their writes pipeline through
// group commit (pipeline.go); events/commit shows how many share one.
func BenchmarkSendEventParallelOneRoom(b *testing.B) { benchmarkSendParallel(b, 1) }

// benchmarkSendParallel runs 8 sending goroutines spread over nRooms rooms.
func benchmarkSendParallel(b *testing.B, nRooms int) {
	db := storagetest.OpenSQLite(b)
	s := newTestServer(b, db)
	var rooms []string
	for i := 0; i < nRooms; i++ {
		rooms = append(rooms, mustCreate(b, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID)
	}
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0)))
	m := startMeasure(b, db)
	b.RunParallel(func(pb *testing.PB) {
		req := benchSendRequest(rooms[int(n.Add(1))%len(rooms)])
		for pb.Next() {
			if _, err := s.SendEvent(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	m.report(b)
}

// BenchmarkLoadSnapshot reads a snapshot at the end of a 20-delta chain:
// two keys (what history visibility asks per user), and the whole state.
func BenchmarkLoadSnapshot(b *testing.B) {
	db := storagetest.OpenSQLite(b)
	s := newTestServer(b, db)
	ctx := context.Background()
	room := mustCreate(b, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
	for i := 0; i < 20; i++ {
		key := ""
		if _, err := s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.topic", StateKey: &key,
			Content: json.RawMessage(`{"topic":"t` + itoa(int64(i)) + `"}`)}); err != nil {
			b.Fatal(err)
		}
	}
	r, err := loadRoom(ctx, db.Reader(), room)
	if err != nil {
		b.Fatal(err)
	}
	keys := []tuple{{"m.room.history_visibility", ""}, {"m.room.member", alice}}
	b.Run("keys", func(b *testing.B) {
		for b.Loop() {
			if got, err := loadSnapshotKeys(ctx, db.Reader(), r.CurrentSnapshot, keys); err != nil || len(got) != 2 {
				b.Fatal(got, err)
			}
		}
	})
	b.Run("all", func(b *testing.B) {
		for b.Loop() {
			if _, err := loadSnapshot(ctx, db.Reader(), r.CurrentSnapshot); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkBuildAndAuthorise measures a message's work before its write
// (the request's share of a send): choose its auth events, build, hash
// and sign it, and decide it against the room's state, on a room whose
// state is cached, as in a steady stream of sends. Nothing is written.
func BenchmarkBuildAndAuthorise(b *testing.B) {
	db := storagetest.OpenSQLite(b)
	s := newTestServer(b, db)
	roomID := mustCreate(b, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
	ctx := context.Background()
	mustSend(b, s, roomID, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"warm"}`)
	room, err := loadRoom(ctx, db.Reader(), roomID)
	if err != nil {
		b.Fatal(err)
	}
	req := benchSendRequest(roomID)
	b.ReportAllocs()
	m := startMeasure(b, db)
	for i := 0; i < b.N; i++ {
		proto := gomatrixserverlib.ProtoEvent{SenderID: req.Sender, RoomID: roomID, Type: req.Type, Content: []byte(req.Content)}
		p, err := s.buildAndAuthorise(ctx, room, &proto, "")
		if err != nil {
			b.Fatal(err)
		}
		if p.row.EventID == "" || p.outcome != Accepted {
			b.Fatalf("built %+v", p.row)
		}
	}
	m.report(b)
}

// BenchmarkSendAnnouncedOneRoom has 8 senders in one room whose sends
// announce their write first, as clientapi's PUT send and state do
// (storage.DB.ExpectWrite), with messages (which pipeline: the next send
// builds on a queued one) and with state events (which nothing builds on
// before they commit: each send holds the room's lock until its commit,
// and the others wait for it). Run it with bench/fsyncdelay.c preloaded
// to model a slow disk.
func BenchmarkSendAnnouncedOneRoom(b *testing.B) {
	b.Run("messages", func(b *testing.B) { benchmarkSendAnnounced(b, false) })
	b.Run("state", func(b *testing.B) { benchmarkSendAnnounced(b, true) })
}

func benchmarkSendAnnounced(b *testing.B, state bool) {
	db := storagetest.OpenSQLite(b)
	s := newTestServer(b, db)
	room := mustCreate(b, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0)))
	m := startMeasure(b, db)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := benchSendRequest(room)
			if state {
				req.Type, req.StateKey = "m.room.topic", new(string)
				req.Content = json.RawMessage(`{"topic":"t` + itoa(n.Add(1)) + `"}`)
			}
			actx, done := db.ExpectWrite(ctx)
			_, err := s.SendEvent(actx, req)
			done()
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	m.report(b)
}
