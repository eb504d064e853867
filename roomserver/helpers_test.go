package roomserver

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"sync"
	"testing"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/storage"
)

const testServer = "test.local"

const (
	alice   = "@alice:test.local"
	bob     = "@bob:test.local"
	charlie = "@charlie:test.local"
)

// testKey is a fixed signing key so test events are reproducible.
func testKey() *signing.Key {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i)
	}
	return &signing.Key{ID: "ed25519:test", PrivateKey: ed25519.NewKeyFromSeed(seed)}
}

// notified records the highest room stream position notified, as the
// notifier does (sends in flight together may run their hooks in any order).
type notified struct {
	mu   sync.Mutex
	last int64 // guarded by mu
}

func (n *notified) get() int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.last
}

func newTestServer(t testing.TB, db *storage.DB) *Server {
	t.Helper()
	s, _ := newTestServerNotify(t, db)
	return s
}

func newTestServerNotify(t testing.TB, db *storage.DB) (*Server, *notified) {
	t.Helper()
	return newTestServerConfig(t, db, config.RoomServer{DefaultRoomVersion: "12", EncryptPrivateRooms: true})
}

func newTestServerConfig(t testing.TB, db *storage.DB, cfg config.RoomServer) (*Server, *notified) {
	t.Helper()
	n := &notified{}
	s, err := New(context.Background(), Deps{
		DB: db, ServerName: testServer, Key: testKey(),
		Config: cfg,
		Notify: func(stream string, pos int64) {
			if stream == Stream {
				n.mu.Lock()
				n.last = max(n.last, pos)
				n.mu.Unlock()
			}
		},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s, n
}

func mustCreate(t testing.TB, s *Server, req CreateRoomRequest) *CreateRoomResponse {
	t.Helper()
	resp, err := s.CreateRoom(context.Background(), req)
	if err != nil {
		t.Fatalf("CreateRoom(%+v): %v", req, err)
	}
	return resp
}

func mustSend(t testing.TB, s *Server, roomID, sender, eventType string, stateKey *string, content string) string {
	t.Helper()
	resp, err := s.SendEvent(context.Background(), SendEventRequest{
		RoomID: roomID, Sender: sender, Type: eventType, StateKey: stateKey, Content: json.RawMessage(content),
	})
	if err != nil {
		t.Fatalf("SendEvent(%s %s): %v", eventType, content, err)
	}
	return resp.EventID
}

func ptr(s string) *string { return &s }

func wantCode(t testing.TB, err error, code mxerr.Code) {
	t.Helper()
	if !mxerr.Is(err, code) {
		t.Fatalf("got error %v, want %s", err, code)
	}
}

func mustMember(t testing.TB, s *Server, roomID, userID, want string) {
	t.Helper()
	got, err := s.Membership(context.Background(), roomID, userID)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("membership of %s in %s = %q, want %q", userID, roomID, got, want)
	}
}

func countRows(t testing.TB, db *storage.DB, table string) int {
	t.Helper()
	var n int
	if err := db.Reader().QueryRow(context.Background(), `SELECT COUNT(*) FROM `+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func stateContent(t testing.TB, s *Server, user, roomID, eventType, stateKey string) map[string]any {
	t.Helper()
	ev, err := s.CurrentStateEvent(context.Background(), user, roomID, eventType, stateKey)
	if err != nil {
		t.Fatalf("CurrentStateEvent(%s): %v", eventType, err)
	}
	var m map[string]any
	if err := json.Unmarshal(ev.Content, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// countTxnRows counts the events stored with a client transaction ID.
func countTxnRows(t testing.TB, db *storage.DB) int {
	t.Helper()
	var n int
	if err := db.Reader().QueryRow(context.Background(), `SELECT COUNT(*) FROM roomserver_events WHERE txn_id IS NOT NULL`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
