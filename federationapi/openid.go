package federationapi

import (
	"context"
	"net/http"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// OpenIDTokens resolves the OpenID tokens local users requested
// (clientapi.Server).
type OpenIDTokens interface {
	// OpenIDUser returns the user an unexpired token belongs to; 401
	// M_UNKNOWN_TOKEN otherwise.
	OpenIDUser(ctx context.Context, token string) (string, error)
}

// openIDUserInfo is GET /_matrix/federation/v1/openid/userinfo. It is
// called by third-party services, not servers, so it carries no X-Matrix
// signature: the OpenID token is the credential.
// Spec: server-server-api, "GET /_matrix/federation/v1/openid/userinfo".
func (s *Server) openIDUserInfo(w http.ResponseWriter, r *http.Request) error {
	token := r.URL.Query().Get("access_token")
	if token == "" || s.openID == nil {
		return mxerr.New(mxerr.UnknownToken, "OpenID token unknown or expired")
	}
	userID, err := s.openID.OpenIDUser(r.Context(), token)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]string{"sub": userID})
}
