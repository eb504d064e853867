package clientapi

import (
	"context"
	"database/sql"
	"net/http"
	"sync"
	"unicode/utf8"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// PresenceStream is the stream name Deps.Notify hears for presence.
const PresenceStream = "presence"

// presenceLock makes presence positions commit in order on PostgreSQL.
const presenceLock = 4242103

// maxStatusMsg bounds status_msg, in code points.
const maxStatusMsg = 512

// currentlyActiveWindow is how recently a user must have set themselves
// online to count as currently active.
const currentlyActiveWindow = 5 * 60 * 1000 // ms

// Presence is one user's presence as the sync component reads it.
type Presence struct {
	UserID       string
	Presence     string // online, unavailable or offline
	StatusMsg    *string
	LastActiveTS int64
	Position     int64
}

// PresenceSince returns the presence changes with stream positions in
// (since, latest], in position order, and latest, the presence stream
// head when read. Sync keeps the users that share a room with the caller.
// Spec: client-server-api, "Presence".
func (s *Server) PresenceSince(ctx context.Context, since int64) (changes []Presence, latest int64, err error) {
	err = s.db.Read(ctx, func(q storage.Querier) error {
		if err := q.QueryRow(ctx, `SELECT COALESCE(MAX(position), 0) FROM presence`).Scan(&latest); err != nil {
			return err
		}
		rows, err := q.Query(ctx, `SELECT user_id, presence, status_msg, last_active_ts, position FROM presence
			WHERE position > $1 AND position <= $2 ORDER BY position`, since, latest)
		if err != nil {
			return err
		}
		changes, err = scanPresence(rows, changes[:0])
		return err
	})
	return changes, latest, err
}

// scanPresence appends the presence rows (user_id, presence,
// status_msg, last_active_ts, position) to changes and closes rows.
func scanPresence(rows *sql.Rows, changes []Presence) ([]Presence, error) {
	defer rows.Close()
	for rows.Next() {
		var p Presence
		if err := rows.Scan(&p.UserID, &p.Presence, &p.StatusMsg, &p.LastActiveTS, &p.Position); err != nil {
			return changes, err
		}
		changes = append(changes, p)
	}
	return changes, rows.Err()
}

// putPresence sets the caller's presence.
// Spec: client-server-api, "PUT /_matrix/client/v3/presence/{userId}/status".
func (s *Server) putPresence(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	userID, err := pathUserID(r)
	if err != nil {
		return err
	}
	me := caller(r)
	if userID != me.UserID {
		return mxerr.New(mxerr.Forbidden, "you cannot set another user's presence")
	}
	var body struct {
		Presence  string  `json:"presence"`
		StatusMsg *string `json:"status_msg"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	switch body.Presence {
	case "online", "unavailable", "offline":
	case "":
		return mxerr.New(mxerr.MissingParam, "presence is required")
	default:
		return mxerr.New(mxerr.InvalidParam, "presence must be online, unavailable or offline")
	}
	if body.StatusMsg != nil && utf8.RuneCountInString(*body.StatusMsg) > maxStatusMsg {
		return mxerr.New(mxerr.InvalidParam, "status_msg is longer than %d characters", maxStatusMsg)
	}
	if err := s.allowMessage(me); err != nil {
		return err
	}
	if err := s.writePresence(ctx, me.UserID, body.Presence, body.StatusMsg, nowMillis()); err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// getPresence answers with a local user's presence; a user who never set
// it is offline.
// Spec: client-server-api, "GET /_matrix/client/v3/presence/{userId}/status".
func (s *Server) getPresence(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	userID, err := pathUserID(r)
	if err != nil {
		return err
	}
	local := domainOf(userID) == s.serverName
	if local {
		if _, err := s.Profile(ctx, userID); err != nil {
			return mxerr.New(mxerr.NotFound, "unknown user %s", userID)
		}
	}
	// Other servers' users: what their m.presence EDUs said.
	var p Presence
	err = s.db.Reader().QueryRow(ctx, `SELECT presence, status_msg, last_active_ts FROM presence WHERE user_id = $1`, userID).
		Scan(&p.Presence, &p.StatusMsg, &p.LastActiveTS)
	if storage.IsNoRows(err) {
		if !local {
			// Spec: GET /presence/{userId}/status, 404 "There is no
			// presence state for this user".
			return mxerr.New(mxerr.NotFound, "no presence known for %s", userID)
		}
		return httpx.OK(w, map[string]any{"presence": "offline"})
	}
	if err != nil {
		return err
	}
	return httpx.OK(w, p.Content(nowMillis()))
}

// Content is the presence as an m.presence content (and the body of
// GET /presence/{userId}/status) as of now, in milliseconds.
// Spec: client-server-api, "m.presence", "Last active ago".
func (p Presence) Content(now int64) map[string]any {
	ago := max(now-p.LastActiveTS, 0)
	body := map[string]any{"presence": p.Presence, "last_active_ago": ago,
		"currently_active": p.Presence == "online" && ago < currentlyActiveWindow}
	if p.StatusMsg != nil {
		body["status_msg"] = *p.StatusMsg
	}
	return body
}

// writePresence stores a user's presence at a new stream position; the
// stream is told after commit.
func (s *Server) writePresence(ctx context.Context, userID, presence string, statusMsg *string, now int64) error {
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		if s.db.Engine() == storage.Postgres {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, presenceLock); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM presence WHERE user_id = $1`, userID); err != nil {
			return err
		}
		var pos int64
		if err := tx.QueryRow(ctx, `INSERT INTO presence (user_id, presence, status_msg, last_active_ts)
			VALUES ($1, $2, $3, $4) RETURNING position`, userID, presence, statusMsg, now).Scan(&pos); err != nil {
			return err
		}
		tx.AfterCommit(func() { s.streamAdvanced(PresenceStream, pos) })
		return nil
	})
	if err == nil {
		s.rooms.presenceSeen.set(userID, presence, now)
		s.sendPresenceEDU(ctx, Presence{UserID: userID, Presence: presence, StatusMsg: statusMsg, LastActiveTS: now})
	}
	return err
}

// presenceRefresh is how often, at most, a syncing user's unchanged
// presence is written (to refresh last_active_ts).
const presenceRefresh = 60 * 1000 // ms

// SyncPresence applies a sync request's set_presence. Spec:
// client-server-api, "GET /_matrix/client/v3/sync", set_presence:
// "online" (the default) marks the user online, "unavailable" marks them
// idle, and "offline" leaves their presence alone. The status message is
// kept.
//
// Clients sync continuously, so an unchanged presence is not written on
// every request: within presenceRefresh of the last write nothing is
// read or written, and after it an unchanged presence whose user still
// counts as currently active only has last_active_ts refreshed in place,
// without a new stream position (Spec: "Last active ago": while
// currently_active, updates to the last active time need not be sent).
//
// In a split deployment (Deps.Shared) another process may have stored
// another presence since this one's write, so the stored row is read on
// every request instead: only the write is spared within
// presenceRefresh of the last.
func (s *Server) SyncPresence(ctx context.Context, userID, presence string) error {
	if presence == "offline" || s.rooms.rooms == nil {
		return nil
	}
	now := nowMillis()
	if !s.shared && s.rooms.presenceSeen.fresh(userID, presence, now) {
		return nil
	}
	var cur Presence
	err := s.db.Reader().QueryRow(ctx, `SELECT presence, status_msg, last_active_ts FROM presence WHERE user_id = $1`, userID).
		Scan(&cur.Presence, &cur.StatusMsg, &cur.LastActiveTS)
	switch {
	case storage.IsNoRows(err):
		return s.writePresence(ctx, userID, presence, nil, now)
	case err != nil:
		return err
	}
	if s.shared && cur.Presence == presence && now-cur.LastActiveTS < presenceRefresh {
		return nil
	}
	if cur.Presence != presence || now-cur.LastActiveTS >= currentlyActiveWindow {
		// A new state, or a user who no longer counted as currently
		// active becoming so again: both are news for other users.
		return s.writePresence(ctx, userID, presence, cur.StatusMsg, now)
	}
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE presence SET last_active_ts = $1 WHERE user_id = $2 AND presence = $3`, now, userID, presence)
		return err
	})
	if err == nil {
		s.rooms.presenceSeen.set(userID, presence, now)
	}
	return err
}

// presenceCache remembers, per user, the presence last stored and when,
// so that syncs with an unchanged set_presence skip the database. It is
// per process: a write by another process is seen at the latest after
// presenceRefresh.
//
// Concurrency: guarded by mu.
type presenceCache struct {
	mu    sync.Mutex
	users map[string]presenceSeen // guarded by mu
}

type presenceSeen struct {
	presence string
	ts       int64 // ms
}

// maxPresenceCache bounds the cache; it is emptied when full.
const maxPresenceCache = 100000

func newPresenceCache() *presenceCache { return &presenceCache{users: map[string]presenceSeen{}} }

// fresh reports whether userID's presence was stored as presence less
// than presenceRefresh before now.
func (c *presenceCache) fresh(userID, presence string, now int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen, ok := c.users[userID]
	return ok && seen.presence == presence && now-seen.ts < presenceRefresh
}

func (c *presenceCache) set(userID, presence string, now int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.users) >= maxPresenceCache {
		clear(c.users)
	}
	c.users[userID] = presenceSeen{presence: presence, ts: now}
}
