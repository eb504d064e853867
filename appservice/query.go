package appservice

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Error codes of the ping endpoint.
// Spec: client-server-api, "POST /_matrix/client/v1/appservice/{appserviceId}/ping".
const (
	errURLNotSet         mxerr.Code = "M_URL_NOT_SET"
	errBadStatus         mxerr.Code = "M_BAD_STATUS"
	errConnectionFailed  mxerr.Code = "M_CONNECTION_FAILED"
	errConnectionTimeout mxerr.Code = "M_CONNECTION_TIMEOUT"
)

// queryTimeout bounds a user or alias query: it runs inside a client's
// request.
const queryTimeout = 10 * time.Second

// QueryUser asks the services whose user namespaces hold userID whether it
// exists, so that a bridge can create it on demand. It reports whether one
// answered 200 (the service should then have registered the user).
//
// Spec: application-service-api, "GET /_matrix/app/v1/users/{userId}".
func (s *Server) QueryUser(ctx context.Context, userID string) bool {
	for _, reg := range s.deps.Registry.All() {
		if reg.URL == "" || !matchAny(reg.Namespaces.Users, userID, false) {
			continue
		}
		if s.query(ctx, reg, familyUsers, "/users/"+url.PathEscape(userID)) {
			return true
		}
	}
	return false
}

// QueryAlias asks the services whose alias namespaces hold alias whether
// it exists, so that a bridge can create the room and alias on demand.
//
// Spec: application-service-api, "GET /_matrix/app/v1/rooms/{roomAlias}".
func (s *Server) QueryAlias(ctx context.Context, alias string) bool {
	for _, reg := range s.deps.Registry.All() {
		if reg.URL == "" || !reg.OwnsAlias(alias) {
			continue
		}
		if s.query(ctx, reg, familyRooms, "/rooms/"+url.PathEscape(alias)) {
			return true
		}
	}
	return false
}

// query asks reg GET /_matrix/app/v1{path}, falling back to the legacy
// route {path} (legacy.go), and reports whether it answered 200.
func (s *Server) query(ctx context.Context, reg *Registration, family legacyFamily, path string) bool {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	resp, err := s.doVersioned(ctx, reg, family, http.MethodGet, "/_matrix/app/v1"+path, path, nil, nil)
	if err != nil {
		s.log.Warn("application service query failed", "appservice", reg.ID, "err", err)
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode == http.StatusOK
}

// Routes registers the client-server endpoints application services call.
func (s *Server) Routes(r chi.Router) {
	r.Method(http.MethodPost, "/_matrix/client/v1/appservice/{appserviceId}/ping", httpx.H(s.ping))
}

// ping answers POST /_matrix/client/v1/appservice/{appserviceId}/ping: the
// homeserver pings the service at POST {url}/_matrix/app/v1/ping and
// reports how long it took.
//
// Spec: client-server-api, "POST /_matrix/client/v1/appservice/{appserviceId}/ping".
func (s *Server) ping(w http.ResponseWriter, r *http.Request) error {
	token, ok := authn.Token(r)
	if !ok {
		return mxerr.New(mxerr.MissingToken, "missing access token")
	}
	// Spec: 403 M_FORBIDDEN when the token is not this service's as_token
	// (a user's token included).
	reg := s.deps.Registry.ByToken(token)
	id, err := url.PathUnescape(chi.URLParam(r, "appserviceId"))
	if reg == nil || err != nil || id != reg.ID {
		return mxerr.New(mxerr.Forbidden, "the access token does not belong to this application service")
	}
	var body struct {
		TransactionID *string `json:"transaction_id"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	if reg.URL == "" {
		return mxerr.New(errURLNotSet, "application service doesn't have a URL configured")
	}
	out := map[string]any{}
	if body.TransactionID != nil {
		out["transaction_id"] = *body.TransactionID
	}
	payload, _ := json.Marshal(out)
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	start := time.Now()
	resp, err := s.do(ctx, reg, http.MethodPost, reg.URL+"/_matrix/app/v1/ping", payload)
	if err != nil {
		var ne net.Error
		if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
			return mxerr.New(errConnectionTimeout, "connection to application service timed out").WithStatus(http.StatusGatewayTimeout)
		}
		return mxerr.New(errConnectionFailed, "connection to application service failed").WithStatus(http.StatusBadGateway)
	}
	defer resp.Body.Close()
	respBody, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	elapsed := time.Since(start)
	if resp.StatusCode != http.StatusOK {
		return mxerr.New(errBadStatus, "ping returned status %d", resp.StatusCode).WithStatus(http.StatusBadGateway).
			With("status", resp.StatusCode).With("body", string(respBody))
	}
	return httpx.OK(w, map[string]int64{"duration_ms": elapsed.Milliseconds()})
}
