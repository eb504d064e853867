package pushserver

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Pusher limits. Spec: pushkey at most 512 bytes, app_id 64 characters.
const (
	maxPushkeyBytes   = 512
	maxAppIDChars     = 64
	maxPushersPerUser = 50
	maxPusherData     = 4 << 10
	gatewayPath       = "/_matrix/push/v1/notify"
)

func (s *Server) pusherRoutes(r chi.Router) {
	r.Method(http.MethodGet, v3+"/pushers", httpx.H(s.getPushers))
	r.Method(http.MethodPost, v3+"/pushers/set", httpx.H(s.setPusher))
}

// pusherJSON is a pusher as GET /pushers shows it.
type pusherJSON struct {
	Pushkey           string          `json:"pushkey"`
	Kind              string          `json:"kind"`
	AppID             string          `json:"app_id"`
	AppDisplayName    string          `json:"app_display_name"`
	DeviceDisplayName string          `json:"device_display_name"`
	ProfileTag        string          `json:"profile_tag,omitempty"`
	Lang              string          `json:"lang"`
	Data              json.RawMessage `json:"data"`
}

// getPushers answers GET /pushers.
// Spec: client-server-api, "GET /_matrix/client/v3/pushers".
func (s *Server) getPushers(w http.ResponseWriter, r *http.Request) error {
	userID := authn.FromContext(r.Context()).UserID
	rows, err := s.db.Reader().Query(r.Context(), `SELECT pushkey, kind, app_id, app_display_name, device_display_name,
		profile_tag, lang, data FROM pushers WHERE user_id = $1 ORDER BY app_id, pushkey`, userID)
	if err != nil {
		return err
	}
	defer rows.Close()
	out := []pusherJSON{}
	for rows.Next() {
		var p pusherJSON
		var data string
		if err := rows.Scan(&p.Pushkey, &p.Kind, &p.AppID, &p.AppDisplayName, &p.DeviceDisplayName, &p.ProfileTag, &p.Lang, &data); err != nil {
			return err
		}
		p.Data = json.RawMessage(data)
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"pushers": out})
}

// setPusher answers POST /pushers/set: kind null deletes the pusher with
// this app_id and pushkey; otherwise it is created or updated, and
// unless append is set other users' pushers with the same app_id and
// pushkey are deleted. Only http pushers are supported.
// Spec: client-server-api, "POST /_matrix/client/v3/pushers/set".
func (s *Server) setPusher(w http.ResponseWriter, r *http.Request) error {
	caller := authn.FromContext(r.Context())
	var req struct {
		Kind              json.RawMessage `json:"kind"`
		AppID             *string         `json:"app_id"`
		Pushkey           *string         `json:"pushkey"`
		AppDisplayName    *string         `json:"app_display_name"`
		DeviceDisplayName *string         `json:"device_display_name"`
		ProfileTag        string          `json:"profile_tag"`
		Lang              *string         `json:"lang"`
		Data              json.RawMessage `json:"data"`
		Append            bool            `json:"append"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	var missing []string
	if req.Kind == nil {
		missing = append(missing, "kind")
	}
	if req.AppID == nil {
		missing = append(missing, "app_id")
	}
	if req.Pushkey == nil {
		missing = append(missing, "pushkey")
	}
	if len(missing) > 0 {
		return mxerr.New(mxerr.MissingParam, "missing parameters: %s", strings.Join(missing, ", "))
	}
	appID, pushkey := *req.AppID, *req.Pushkey
	if appID == "" || utf8.RuneCountInString(appID) > maxAppIDChars {
		return mxerr.New(mxerr.InvalidParam, "app_id must be 1 to %d characters", maxAppIDChars)
	}
	if pushkey == "" || len(pushkey) > maxPushkeyBytes {
		return mxerr.New(mxerr.InvalidParam, "pushkey must be 1 to %d bytes", maxPushkeyBytes)
	}
	ctx := r.Context()
	if string(req.Kind) == "null" {
		if err := s.db.Write(ctx, func(tx storage.Tx) error {
			return deletePusher(ctx, tx, caller.UserID, appID, pushkey)
		}); err != nil {
			return err
		}
		return httpx.OK(w, httpx.EmptyObject)
	}
	var kind string
	if json.Unmarshal(req.Kind, &kind) != nil {
		return mxerr.New(mxerr.InvalidParam, "kind must be a string or null")
	}
	if kind != "http" {
		return mxerr.New(mxerr.InvalidParam, "unsupported pusher kind %q: only http", kind)
	}
	if req.AppDisplayName == nil {
		missing = append(missing, "app_display_name")
	}
	if req.DeviceDisplayName == nil {
		missing = append(missing, "device_display_name")
	}
	if req.Lang == nil {
		missing = append(missing, "lang")
	}
	if req.Data == nil || string(req.Data) == "null" {
		missing = append(missing, "data")
	}
	if len(missing) > 0 {
		return mxerr.New(mxerr.MissingParam, "missing parameters: %s", strings.Join(missing, ", "))
	}
	if len(req.Data) > maxPusherData {
		return mxerr.New(mxerr.TooLarge, "data is at most %d bytes", maxPusherData)
	}
	if err := checkPusherData(req.Data); err != nil {
		return err
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, req.Data); err != nil {
		return mxerr.New(mxerr.BadJSON, "data is not valid JSON")
	}
	now := s.now().UnixMilli()
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		if !req.Append {
			if _, err := tx.Exec(ctx, `DELETE FROM push_queue WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3`,
				appID, pushkey, caller.UserID); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3`,
				appID, pushkey, caller.UserID); err != nil {
				return err
			}
		}
		var count int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM pushers WHERE user_id = $1 AND NOT (app_id = $2 AND pushkey = $3)`,
			caller.UserID, appID, pushkey).Scan(&count); err != nil {
			return err
		}
		if count >= maxPushersPerUser {
			return mxerr.New(mxerr.ResourceLimitExceeded, "at most %d pushers per user", maxPushersPerUser).WithStatus(400)
		}
		_, err := tx.Exec(ctx, `INSERT INTO pushers (user_id, app_id, pushkey, device_id, kind, app_display_name,
				device_display_name, profile_tag, lang, data, pushkey_ts)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
			ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET device_id = excluded.device_id, kind = excluded.kind,
				app_display_name = excluded.app_display_name, device_display_name = excluded.device_display_name,
				profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data, pushkey_ts = excluded.pushkey_ts`,
			caller.UserID, appID, pushkey, caller.DeviceID, kind, *req.AppDisplayName, *req.DeviceDisplayName,
			req.ProfileTag, *req.Lang, compact.String(), now)
		return err
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// checkPusherData checks an http pusher's data: url is an http(s) URL
// whose path is /_matrix/push/v1/notify, and format, if present, is
// event_id_only.
func checkPusherData(data json.RawMessage) error {
	var d struct {
		URL    *string         `json:"url"`
		Format json.RawMessage `json:"format"`
	}
	if json.Unmarshal(data, &d) != nil || data[0] != '{' {
		return mxerr.New(mxerr.InvalidParam, "data must be an object with a url")
	}
	if d.URL == nil {
		return mxerr.New(mxerr.MissingParam, "data.url is required for http pushers")
	}
	u, err := url.Parse(*d.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Path != gatewayPath {
		return mxerr.New(mxerr.InvalidParam, "data.url must be an http(s) URL with the path %s", gatewayPath)
	}
	if d.Format != nil && string(d.Format) != `"event_id_only"` {
		return mxerr.New(mxerr.InvalidParam, "data.format must be event_id_only when given")
	}
	return nil
}

func deletePusher(ctx context.Context, tx storage.Tx, userID, appID, pushkey string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM push_queue WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`, userID, appID, pushkey); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`, userID, appID, pushkey)
	return err
}
