package clientapi

import (
	"context"
	"net/http"
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
		defer rows.Close()
		for rows.Next() {
			var p Presence
			if err := rows.Scan(&p.UserID, &p.Presence, &p.StatusMsg, &p.LastActiveTS, &p.Position); err != nil {
				return err
			}
			changes = append(changes, p)
		}
		return rows.Err()
	})
	return changes, latest, err
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
	if err := s.rooms.messageLimit.Allow(me.UserID); err != nil {
		return err
	}
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		if s.db.Engine() == storage.Postgres {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, presenceLock); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM presence WHERE user_id = $1`, me.UserID); err != nil {
			return err
		}
		var pos int64
		if err := tx.QueryRow(ctx, `INSERT INTO presence (user_id, presence, status_msg, last_active_ts)
			VALUES ($1, $2, $3, $4) RETURNING position`, me.UserID, body.Presence, body.StatusMsg, nowMillis()).Scan(&pos); err != nil {
			return err
		}
		tx.AfterCommit(func() { s.streamAdvanced(PresenceStream, pos) })
		return nil
	})
	if err != nil {
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
	if _, err := s.Profile(ctx, userID); err != nil {
		return mxerr.New(mxerr.NotFound, "unknown user %s", userID)
	}
	var p Presence
	err = s.db.Reader().QueryRow(ctx, `SELECT presence, status_msg, last_active_ts FROM presence WHERE user_id = $1`, userID).
		Scan(&p.Presence, &p.StatusMsg, &p.LastActiveTS)
	if storage.IsNoRows(err) {
		return httpx.OK(w, map[string]any{"presence": "offline"})
	}
	if err != nil {
		return err
	}
	ago := max(nowMillis()-p.LastActiveTS, 0)
	body := map[string]any{"presence": p.Presence, "last_active_ago": ago,
		"currently_active": p.Presence == "online" && ago < currentlyActiveWindow}
	if p.StatusMsg != nil {
		body["status_msg"] = *p.StatusMsg
	}
	return httpx.OK(w, body)
}
