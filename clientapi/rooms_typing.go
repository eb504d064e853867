package clientapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
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
// needs.
//
// In one process (log nil) its stream position starts at the start time
// in milliseconds and grows by one per change, so it keeps increasing
// across restarts, and a timer ends each notification at its timeout.
//
// In a split deployment (log set, Deps.TypingLog) every change, this
// process's and the others', goes through the shared log: its position
// comes from the log, and every process applies the log's changes in
// position order (ApplyTypingEntry), so each holds the same typing sets
// at the same position and a sync token's typing position means the same
// in every process. A timeout is a change too: when an entry's timer
// fires, the process appends a stop of that entry (ifPos), which does
// nothing if the user typed again since; the process that took the
// change in stops it, the others only typingExpiryGrace later if it has
// not (it may have died), so one stop is the rule and a second is
// harmless. pos is then the last position applied; a change this
// process appends is answered once applied here (awaitApplied), so a
// /sync on this process after a PUT /typing sees it.
//
// Concurrency: all fields are guarded by mu; timers take mu when they fire.
type typingTracker struct {
	mu      sync.Mutex
	pos     int64                              // guarded by mu
	rooms   map[string]map[string]*typingEntry // room -> user; guarded by mu
	changed map[string]int64                   // room -> position of its last change; guarded by mu
	notify  func(stream string, pos int64)     // immutable
	// log, origin and logger are set for a split deployment (immutable).
	log    TypingLog
	origin string
	logger *slog.Logger
	// applied is closed and replaced whenever pos moves (guarded by mu).
	applied chan struct{}
	closed  bool // guarded by mu
}

type typingEntry struct {
	timer *time.Timer
	// pos is the log position that started (or renewed) the entry
	// (shared mode).
	pos int64
}

// TypingLog orders the typing changes of the processes of a split
// deployment (Deps.TypingLog): Append stores payload at the next
// position of one shared counter and returns it; the change takes effect
// when the log hands it back to every process, this one included,
// through ApplyTypingEntry, in position order.
type TypingLog interface {
	Append(ctx context.Context, payload []byte) (int64, error)
}

// typingChange is a typing change in the shared log.
type typingChange struct {
	RoomID    string `json:"room_id"`
	UserID    string `json:"user_id"`
	Typing    bool   `json:"typing"`
	TimeoutMS int64  `json:"timeout_ms,omitempty"`
	// IfPos, on a stop, makes it stop only the entry started at that
	// position (a timeout), not a later one.
	IfPos int64 `json:"if_pos,omitempty"`
	// Origin is the process that took the change in.
	Origin string `json:"origin"`
}

// typingExpiryGrace is how long after an entry's timeout a process other
// than the one that took it in appends its stop.
const typingExpiryGrace = 2 * time.Second

// typingExpiryRetry is the wait before another try at appending a stop
// the log refused (Redis unreachable).
const typingExpiryRetry = 5 * time.Second

func newTypingTracker(notify func(string, int64)) *typingTracker {
	return &typingTracker{pos: time.Now().UnixMilli(), rooms: map[string]map[string]*typingEntry{},
		changed: map[string]int64{}, notify: notify, applied: make(chan struct{})}
}

// share makes t follow the shared log (split mode) before any change.
func (t *typingTracker) share(log TypingLog, logger *slog.Logger) {
	var id [8]byte
	_, _ = rand.Read(id[:])
	t.log, t.origin, t.logger, t.pos = log, hex.EncodeToString(id[:]), logger, 0
}

// set starts (timeout > 0) or stops a user's typing in a room.
func (t *typingTracker) set(ctx context.Context, roomID, userID string, typing bool, timeout time.Duration) {
	if t.log != nil {
		t.append(ctx, typingChange{RoomID: roomID, UserID: userID, Typing: typing, TimeoutMS: timeout.Milliseconds(), Origin: t.origin})
		return
	}
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

// append adds c to the shared log and waits, up to a few seconds, until
// this process has applied it. A change the log refuses (Redis
// unreachable) is lost, as typing may be: it times out anyway.
func (t *typingTracker) append(ctx context.Context, c typingChange) {
	payload, err := json.Marshal(c)
	if err != nil {
		return // strings, numbers and bools always marshal
	}
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	pos, err := t.log.Append(actx, payload)
	if err != nil {
		t.logger.Warn("typing change not shared with the other processes (Redis unreachable?): dropped", "room_id", c.RoomID, "err", err)
		return
	}
	t.awaitApplied(actx, pos)
}

// awaitApplied waits until pos is applied or ctx ends.
func (t *typingTracker) awaitApplied(ctx context.Context, pos int64) {
	for {
		t.mu.Lock()
		done, applied := t.pos >= pos, t.applied
		t.mu.Unlock()
		if done {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-applied:
		}
	}
}

// apply applies the shared log's change at pos, added at at, following
// the change at prev (split mode). Changes come in position order; one
// at or below the last applied is ignored. A prev other than the last
// position applied means this process missed changes (it was cut off from Redis for longer than the
// log keeps them): it starts again from empty sets, reporting every room
// that had typers as changed at pos, so that no client keeps a typer the
// others have dropped.
func (t *typingTracker) apply(pos, prev int64, at time.Time, c typingChange) {
	t.mu.Lock()
	if t.closed || pos <= t.pos {
		t.mu.Unlock()
		return
	}
	notify := false
	// A change whose predecessor is not the last one applied follows
	// changes this process missed (prev < 0: a change that does not name
	// its predecessor, whose positions went up by one).
	missed := prev != t.pos
	if prev < 0 {
		missed = pos > t.pos+1
	}
	if t.pos != 0 && missed {
		t.logger.Warn("typing changes missed (cut off from Redis for too long): starting again from empty typing sets", "after", t.pos, "next", pos)
		for roomID, users := range t.rooms {
			for _, e := range users {
				e.timer.Stop()
			}
			t.changed[roomID] = pos
			notify = true
		}
		clear(t.rooms)
	}
	t.pos = pos
	users := t.rooms[c.RoomID]
	old, was := users[c.UserID]
	switch {
	case c.Typing:
		if users == nil {
			users = map[string]*typingEntry{}
			t.rooms[c.RoomID] = users
		}
		if was {
			old.timer.Stop()
		}
		timeout := min(time.Duration(c.TimeoutMS)*time.Millisecond, maxTypingTimeout)
		if timeout <= 0 {
			timeout = defaultTypingTimeout
		}
		// Counted from when the change was added: one read late (a
		// process that starts reads the last minutes) has less left.
		wait := min(max(timeout-time.Since(at), 0), timeout)
		if c.Origin != t.origin {
			wait += typingExpiryGrace
		}
		entry := &typingEntry{pos: pos}
		roomID, userID := c.RoomID, c.UserID
		entry.timer = time.AfterFunc(wait, func() { t.expireShared(roomID, userID, entry) })
		users[c.UserID] = entry
		if !was {
			t.changed[c.RoomID] = pos
			notify = true
		}
	case was && (c.IfPos == 0 || c.IfPos == old.pos):
		old.timer.Stop()
		delete(users, c.UserID)
		if len(users) == 0 {
			delete(t.rooms, c.RoomID)
		}
		t.changed[c.RoomID] = pos
		notify = true
	}
	close(t.applied)
	t.applied = make(chan struct{})
	t.mu.Unlock()
	if notify {
		t.notify(TypingStream, pos)
	}
}

// expireShared appends the stop of entry, whose timeout passed, unless
// it was stopped or renewed since (split mode). It tries again later if
// the log refuses it.
func (t *typingTracker) expireShared(roomID, userID string, entry *typingEntry) {
	t.mu.Lock()
	current := !t.closed && t.rooms[roomID][userID] == entry
	t.mu.Unlock()
	if !current {
		return
	}
	payload, _ := json.Marshal(typingChange{RoomID: roomID, UserID: userID, IfPos: entry.pos, Origin: t.origin})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := t.log.Append(ctx, payload); err != nil {
		t.logger.Warn("cannot share the end of a typing notification (Redis unreachable?); retrying", "room_id", roomID, "err", err)
		t.mu.Lock()
		if !t.closed && t.rooms[roomID][userID] == entry {
			entry.timer = time.AfterFunc(typingExpiryRetry, func() { t.expireShared(roomID, userID, entry) })
		}
		t.mu.Unlock()
	}
}

// close stops every timer: nothing expires after it.
func (t *typingTracker) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for _, users := range t.rooms {
		for _, e := range users {
			e.timer.Stop()
		}
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
	s.rooms.typing.set(ctx, roomID, me.UserID, *body.Typing, timeout)
	s.sendTypingEDU(ctx, roomID, me.UserID, *body.Typing)
	return httpx.OK(w, httpx.EmptyObject)
}

// ApplyTypingEntry applies a change of the shared typing log
// (Deps.TypingLog) at pos, added at at: the log calls it for every
// change, in position order, in every process of a split deployment.
func (s *Server) ApplyTypingEntry(pos, prev int64, at time.Time, payload []byte) {
	if s.rooms.rooms == nil {
		return
	}
	var c typingChange
	if err := json.Unmarshal(payload, &c); err != nil || c.RoomID == "" || c.UserID == "" {
		s.log.Warn("ignoring a malformed change of the shared typing log", "pos", pos, "err", err)
		// Its position is still taken: the sets stay the same.
		c = typingChange{}
	}
	s.rooms.typing.apply(pos, prev, at, c)
}
