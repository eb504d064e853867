package clientapi

import (
	"database/sql"
	"net/http"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// whoisConnection is one ConnectionInfo of GET /admin/whois: what the
// device was last seen with. Myelin keeps one such record per device
// (the devices table's last_seen_*, written at most once a minute per
// session by VerifyAccessToken, the address dropped after
// client_api.ip_retention), so each device has one session of at most
// one connection.
type whoisConnection struct {
	IP        string `json:"ip,omitempty"`
	LastSeen  int64  `json:"last_seen,omitempty"`
	UserAgent string `json:"user_agent,omitempty"`
}

type whoisSession struct {
	Connections []whoisConnection `json:"connections"`
}

type whoisDevice struct {
	Sessions []whoisSession `json:"sessions"`
}

// whois answers GET /admin/whois/{userId}: a user may ask about
// themselves, a server administrator (`myelin user create -admin`) about
// any local user; anyone else is refused with 403 M_FORBIDDEN before the
// user is looked up, so the answer says nothing of who exists. A user
// of another server is 400 M_INVALID_PARAM (this server knows nothing of
// their sessions), an unknown local user 404 M_NOT_FOUND.
// Spec: client-server-api, "Server administration", "GET
// /_matrix/client/v3/admin/whois/{userId}" ("This API may be restricted
// to only be called by the user being looked up, or by a server admin").
func (s *Server) whois(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	userID, err := pathUserID(r)
	if err != nil {
		return err
	}
	me := caller(r)
	if userID != me.UserID {
		admin, err := s.isAdmin(ctx, me.UserID)
		if err != nil {
			return err
		}
		if !admin {
			return mxerr.New(mxerr.Forbidden, "only a server administrator may look up another user")
		}
	}
	local := s.localpart(userID)
	if local == "" {
		return mxerr.New(mxerr.InvalidParam, "%s is not a user of this server", userID)
	}
	if _, found, err := lookupAccount(ctx, s.db.Reader(), local); err != nil {
		return err
	} else if !found {
		return mxerr.New(mxerr.NotFound, "no user %s", userID)
	}
	rows, err := s.db.Reader().Query(ctx, `
		SELECT device_id, last_seen_ts, last_seen_ip, last_seen_user_agent
		FROM devices WHERE localpart = $1 ORDER BY device_id`, local)
	if err != nil {
		return err
	}
	defer rows.Close()
	devices := map[string]whoisDevice{}
	for rows.Next() {
		var (
			deviceID string
			seenTS   int64
			ip, ua   sql.NullString
		)
		if err := rows.Scan(&deviceID, &seenTS, &ip, &ua); err != nil {
			return err
		}
		session := whoisSession{Connections: []whoisConnection{}}
		if seenTS > 0 {
			session.Connections = append(session.Connections, whoisConnection{IP: ip.String, LastSeen: seenTS, UserAgent: ua.String})
		}
		devices[deviceID] = whoisDevice{Sessions: []whoisSession{session}}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"user_id": userID, "devices": devices})
}
