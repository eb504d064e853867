package clientapi

import (
	"context"
	"net/http"
	"time"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// openIDTokenPrefix marks OpenID tokens; they are never access tokens
// (VerifyAccessToken refuses anything without accessTokenPrefix).
const openIDTokenPrefix = "myo_"

// openIDTokenLifetime is how long an OpenID token may be exchanged for
// the user's ID: an hour, as in the spec's example.
const openIDTokenLifetime = time.Hour

// requestOpenIDToken is POST /_matrix/client/v3/user/{userId}/openid/request_token.
// The token proves to a third party, through this server's federation
// API, who the user is; it grants nothing else.
// Spec: client-server-api, "POST /_matrix/client/v3/user/{userId}/openid/request_token".
func (s *Server) requestOpenIDToken(w http.ResponseWriter, r *http.Request) error {
	localpart, err := s.ownLocalpart(r, "request OpenID tokens")
	if err != nil {
		return err
	}
	var body map[string]any // "An empty object. Reserved for future expansion."
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	token := newToken(openIDTokenPrefix)
	expires := time.Now().Add(openIDTokenLifetime)
	err = s.db.Write(r.Context(), func(tx storage.Tx) error {
		_, err := tx.Exec(r.Context(), `INSERT INTO openid_tokens (token_hash, localpart, expires_ts) VALUES ($1, $2, $3)`,
			hashToken(token), localpart, expires.UnixMilli())
		return err
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{
		"access_token":       token,
		"token_type":         "Bearer",
		"matrix_server_name": s.serverName,
		"expires_in":         int64(openIDTokenLifetime / time.Second),
	})
}

// OpenIDUser returns the user an unexpired OpenID token was issued to
// (federationapi.OpenIDTokens); 401 M_UNKNOWN_TOKEN for any other token,
// including those of deactivated accounts.
// Spec: server-server-api, "GET /_matrix/federation/v1/openid/userinfo".
func (s *Server) OpenIDUser(ctx context.Context, token string) (string, error) {
	unknown := mxerr.New(mxerr.UnknownToken, "OpenID token unknown or expired")
	var (
		localpart   string
		expires     int64
		deactivated bool
	)
	err := s.db.Reader().QueryRow(ctx, `
		SELECT o.localpart, o.expires_ts, a.deactivated
		FROM openid_tokens o JOIN accounts a ON a.localpart = o.localpart
		WHERE o.token_hash = $1`, hashToken(token)).Scan(&localpart, &expires, &deactivated)
	if storage.IsNoRows(err) {
		return "", unknown
	}
	if err != nil {
		return "", err
	}
	if deactivated || time.Now().UnixMilli() >= expires {
		return "", unknown
	}
	return "@" + localpart + ":" + s.serverName, nil
}
