package federationapi

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/signing"
)

// Deps is what the federation API needs.
type Deps struct {
	ServerName string
	Key        *signing.Key
	// KeyValidity is how long other servers may cache our key.
	KeyValidity time.Duration
}

// Server is the federation API.
type Server struct {
	serverName  string
	key         *signing.Key
	keyValidity time.Duration
}

// New returns the federation API.
func New(deps Deps) *Server {
	validity := deps.KeyValidity
	if validity <= 0 {
		validity = 7 * 24 * time.Hour
	}
	return &Server{serverName: deps.ServerName, key: deps.Key, keyValidity: validity}
}

// Routes registers the key and federation endpoints.
func (s *Server) Routes(r chi.Router) {
	r.Method(http.MethodGet, "/_matrix/key/v2/server", httpx.H(s.serverKey))
	r.Method(http.MethodGet, "/_matrix/key/v2/server/{keyID}", httpx.H(s.serverKey))
}

// serverKey publishes our signing key, signed by itself.
//
// Spec: server-server-api, "Publishing Keys" (GET /_matrix/key/v2/server).
func (s *Server) serverKey(w http.ResponseWriter, r *http.Request) error {
	body, err := s.SignedServerKey(time.Now())
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(body)
	return err
}

// SignedServerKey returns the self-signed key document valid from now.
func (s *Server) SignedServerKey(now time.Time) ([]byte, error) {
	doc := map[string]any{
		"server_name": s.serverName,
		"verify_keys": map[string]any{
			s.key.ID: map[string]string{"key": s.key.PublicBase64()},
		},
		"old_verify_keys": map[string]any{},
		"valid_until_ts":  now.Add(s.keyValidity).UnixMilli(),
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.SignJSON(s.serverName, gomatrixserverlib.KeyID(s.key.ID), s.key.PrivateKey, raw)
}
