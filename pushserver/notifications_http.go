package pushserver

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// Page sizes of GET /notifications.
const (
	defaultNotificationLimit = 20
	maxNotificationLimit     = 100
)

func (s *Server) notificationRoutes(r chi.Router) {
	r.Method(http.MethodGet, v3+"/notifications", httpx.H(s.getNotifications))
}

// getNotifications answers GET /notifications: the caller's
// notifications, newest first, paged by from/next_token (the last
// entry's stream position: a user has at most one notification per
// event, so it names one row), with only=highlight keeping highlighted
// ones. Events the caller can no longer see are left out. The query
// walks push_notifications_user_pos (user, stream position) backwards:
// no sort, a page's rows read.
// Spec: client-server-api, "GET /_matrix/client/v3/notifications".
func (s *Server) getNotifications(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	userID := authn.FromContext(ctx).UserID
	q := r.URL.Query()
	limit := defaultNotificationLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return mxerr.New(mxerr.InvalidParam, "limit must be a non-negative integer")
		}
		limit = min(max(n, 1), maxNotificationLimit)
	}
	from := int64(1<<62 - 1)
	if v := q.Get("from"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return mxerr.New(mxerr.InvalidParam, "from is not a token from this endpoint")
		}
		from = n
	}
	onlyHighlight := q.Get("only") == "highlight"
	rows, err := s.db.Reader().Query(ctx, notificationsQuery(onlyHighlight), userID, from, limit+1)
	if err != nil {
		return err
	}
	type entry struct {
		pos          int64
		roomID, evID string
		actions      string
		ts           int64
		read         bool
	}
	var entries []entry
	for rows.Next() {
		var e entry
		if err := rows.Scan(&e.pos, &e.roomID, &e.evID, &e.actions, &e.ts, &e.read); err != nil {
			rows.Close()
			return err
		}
		entries = append(entries, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	resp := map[string]any{}
	if len(entries) > limit {
		entries = entries[:limit]
		resp["next_token"] = strconv.FormatInt(entries[len(entries)-1].pos, 10)
	}
	out := []map[string]any{}
	for _, e := range entries {
		ev, err := s.rooms.Event(ctx, userID, e.evID)
		if err != nil {
			continue // no longer visible (or gone)
		}
		out = append(out, map[string]any{
			"actions": json.RawMessage(e.actions),
			"event":   clientEvent(ev),
			"read":    e.read,
			"room_id": e.roomID,
			"ts":      e.ts,
		})
	}
	resp["notifications"] = out
	return httpx.OK(w, resp)
}

// notificationsQuery reads a page of GET /notifications: user $1's rows
// below stream position $2, newest first, at most $3, each with whether
// a read marker is at or past it.
func notificationsQuery(onlyHighlight bool) string {
	query := `SELECT n.stream_pos, n.room_id, n.event_id, n.actions, n.ts,
			n.stream_pos <= COALESCE(ra.read_pos, 0) OR n.stream_pos <= COALESCE(rt.read_pos, 0)
		FROM push_notifications n
		LEFT JOIN push_read ra ON ra.user_id = n.user_id AND ra.room_id = n.room_id AND ra.thread_id = ''
		LEFT JOIN push_read rt ON rt.user_id = n.user_id AND rt.room_id = n.room_id AND rt.thread_id = n.thread_id
		WHERE n.user_id = $1 AND n.stream_pos < $2`
	if onlyHighlight {
		query += ` AND n.highlight`
	}
	return query + ` ORDER BY n.stream_pos DESC LIMIT $3`
}

// clientEvent renders an event in the client format without room_id.
// Spec: client-server-api, "ClientEventWithoutRoomID".
func clientEvent(ev *roomserver.Event) map[string]any {
	content := ev.Content
	if len(content) == 0 {
		content = json.RawMessage(`{}`)
	}
	out := map[string]any{
		"content":          content,
		"event_id":         ev.EventID,
		"origin_server_ts": ev.OriginServerTS,
		"sender":           ev.Sender,
		"type":             ev.Type,
	}
	if ev.StateKey != nil {
		out["state_key"] = *ev.StateKey
	}
	return out
}
