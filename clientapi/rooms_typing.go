package clientapi

import (
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// TypingStream is the stream name Deps.Notify hears for typing.
const TypingStream = "typing"

// Typing limits.
const (
	defaultTypingTimeout = 30 * time.Second
	maxTypingTimeout     = 120 * time.Second
)

// typingTracker holds who is typing where. Typing is ephemeral: it is
// kept in memory and lost on restart, which loses nothing a client
// needs. Its stream position starts at the start time in milliseconds
// and grows by one per change, so it keeps increasing across restarts.
//
// Concurrency: all fields are guarded by mu; timers take mu when they fire.
type typingTracker struct {
	mu      sync.Mutex
	pos     int64                              // guarded by mu
	rooms   map[string]map[string]*typingEntry // room -> user; guarded by mu
	changed map[string]int64                   // room -> position of its last change; guarded by mu
	notify  func(stream string, pos int64)     // immutable
}

type typingEntry struct {
	timer *time.Timer
}

func newTypingTracker(notify func(string, int64)) *typingTracker {
	return &typingTracker{pos: time.Now().UnixMilli(), rooms: map[string]map[string]*typingEntry{},
		changed: map[string]int64{}, notify: notify}
}

// set starts (timeout > 0) or stops a user's typing in a room.
func (t *typingTracker) set(roomID, userID string, typing bool, timeout time.Duration) {
	t.mu.Lock()
	users := t.rooms[roomID]
	if users == nil {
		users = map[string]*typingEntry{}
		t.rooms[roomID] = users
	}
	old, was := users[userID]
	if was {
		old.timer.Stop()
		delete(users, userID)
	}
	if typing {
		entry := &typingEntry{}
		entry.timer = time.AfterFunc(timeout, func() { t.expire(roomID, userID, entry) })
		users[userID] = entry
	}
	var pos int64
	if typing != was {
		pos = t.advance(roomID)
	}
	t.mu.Unlock()
	if pos != 0 {
		t.notify(TypingStream, pos)
	}
}

// expire ends a typing notification whose timeout passed.
func (t *typingTracker) expire(roomID, userID string, entry *typingEntry) {
	t.mu.Lock()
	if t.rooms[roomID][userID] != entry {
		t.mu.Unlock()
		return // replaced or stopped since
	}
	delete(t.rooms[roomID], userID)
	pos := t.advance(roomID)
	t.mu.Unlock()
	t.notify(TypingStream, pos)
}

// advance moves the stream on for a change in roomID. Call with mu held.
func (t *typingTracker) advance(roomID string) int64 {
	t.pos++
	t.changed[roomID] = t.pos
	if len(t.rooms[roomID]) == 0 {
		delete(t.rooms, roomID)
	}
	return t.pos
}

// TypingFor returns who is typing in roomID (sorted), the position of
// the room's last typing change (0 if none since start), and the typing
// stream head. A consumer that saw the room at position p needs to send
// it again when changed > p.
// Spec: client-server-api, "Typing Notifications".
func (s *Server) TypingFor(roomID string) (userIDs []string, changed, latest int64) {
	t := s.rooms.typing
	t.mu.Lock()
	defer t.mu.Unlock()
	for u := range t.rooms[roomID] {
		userIDs = append(userIDs, u)
	}
	sort.Strings(userIDs)
	return userIDs, t.changed[roomID], t.pos
}

// setTyping starts or stops the caller's typing notification.
// Spec: client-server-api, "PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}".
func (s *Server) setTyping(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	userID, err := pathUserID(r)
	if err != nil {
		return err
	}
	me := authn.FromContext(ctx)
	if userID != me.UserID {
		return mxerr.New(mxerr.Forbidden, "you cannot set another user's typing state")
	}
	var body struct {
		Typing  *bool  `json:"typing"`
		Timeout *int64 `json:"timeout"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.Typing == nil {
		return mxerr.New(mxerr.BadJSON, "typing is required")
	}
	if err := s.requireJoined(ctx, roomID, me.UserID); err != nil {
		return err
	}
	if err := s.allowMessage(me); err != nil {
		return err
	}
	timeout := defaultTypingTimeout
	if body.Timeout != nil && *body.Timeout > 0 {
		timeout = min(time.Duration(*body.Timeout)*time.Millisecond, maxTypingTimeout)
	}
	s.rooms.typing.set(roomID, me.UserID, *body.Typing, timeout)
	if s.typingRelay != nil {
		s.typingRelay(roomID, me.UserID, *body.Typing, timeout)
	}
	s.sendTypingEDU(ctx, roomID, me.UserID, *body.Typing)
	return httpx.OK(w, httpx.EmptyObject)
}

// ApplyTyping records a typing change another process of a split
// deployment took in (Deps.TypingRelay there): this process's typing
// state follows it with positions of its own, so the typing stream stays
// monotonic per process as sync tokens require, and the timeout runs
// here as it does there. It is not relayed again.
func (s *Server) ApplyTyping(roomID, userID string, typing bool, timeout time.Duration) {
	if s.rooms.rooms == nil {
		return
	}
	if timeout <= 0 {
		timeout = defaultTypingTimeout
	}
	s.rooms.typing.set(roomID, userID, typing, min(timeout, maxTypingTimeout))
}
