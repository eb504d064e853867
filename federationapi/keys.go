package federationapi

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// serverKey publishes our signing key, signed by itself.
//
// Spec: server-server-api, "Publishing Keys" (GET /_matrix/key/v2/server).
func (s *Server) serverKey(w http.ResponseWriter, r *http.Request) error {
	body, err := s.SignedServerKey(s.now())
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(body)
	return err
}

// SignedServerKey returns the self-signed key document valid from now,
// with the keys this server used before in old_verify_keys.
func (s *Server) SignedServerKey(now time.Time) ([]byte, error) {
	old := map[string]any{}
	for _, k := range s.oldKeys {
		old[k.KeyID] = map[string]any{"key": spec.Base64Bytes(k.Key).Encode(), "expired_ts": k.ExpiredTS}
	}
	doc := map[string]any{
		"server_name": s.serverName,
		"verify_keys": map[string]any{
			s.key.ID: map[string]string{"key": s.key.PublicBase64()},
		},
		"old_verify_keys": old,
		"valid_until_ts":  now.Add(s.keyValidity).UnixMilli(),
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.SignJSON(s.serverName, gomatrixserverlib.KeyID(s.key.ID), s.key.PrivateKey, raw)
}

// notaryQuery is POST /_matrix/key/v2/query: other servers' key
// documents as we have them (fetching what we lack), each countersigned
// by us. Spec: server-server-api, "Querying Keys Through Another Server".
func (s *Server) notaryQuery(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		ServerKeys map[string]map[string]struct {
			MinimumValidUntilTS int64 `json:"minimum_valid_until_ts"`
		} `json:"server_keys"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if len(req.ServerKeys) > 100 {
		return mxerr.New(mxerr.TooLarge, "at most 100 servers per query")
	}
	out := []json.RawMessage{}
	for server, keys := range req.ServerKeys {
		var minValid int64
		keyIDs := make([]string, 0, len(keys))
		for keyID, c := range keys {
			keyIDs = append(keyIDs, keyID)
			minValid = max(minValid, c.MinimumValidUntilTS)
		}
		doc, err := s.notaryDocument(r, server, keyIDs, minValid)
		if err != nil {
			return err
		}
		if doc != nil {
			out = append(out, doc)
		}
	}
	return httpx.OK(w, map[string]any{"server_keys": out})
}

// notaryQueryOne is GET /_matrix/key/v2/query/{serverName}.
func (s *Server) notaryQueryOne(w http.ResponseWriter, r *http.Request) error {
	server := chi.URLParam(r, "serverName")
	minValid, _ := strconv.ParseInt(r.URL.Query().Get("minimum_valid_until_ts"), 10, 64)
	doc, err := s.notaryDocument(r, server, nil, minValid)
	if err != nil {
		return err
	}
	out := []json.RawMessage{}
	if doc != nil {
		out = append(out, doc)
	}
	return httpx.OK(w, map[string]any{"server_keys": out})
}

func (s *Server) notaryDocument(r *http.Request, server string, keyIDs []string, minValid int64) (json.RawMessage, error) {
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(server)); !ok {
		return nil, mxerr.New(mxerr.InvalidParam, "invalid server name %q", server)
	}
	if server == s.serverName {
		return s.SignedServerKey(s.now())
	}
	doc, err := s.keys.document(r.Context(), server, keyIDs, minValid)
	if err != nil || doc == nil {
		return nil, err
	}
	return gomatrixserverlib.SignJSON(s.serverName, gomatrixserverlib.KeyID(s.key.ID), s.key.PrivateKey, doc)
}

// version is GET /_matrix/federation/v1/version.
func (s *Server) version(w http.ResponseWriter, r *http.Request) error {
	return httpx.OK(w, map[string]any{"server": map[string]string{"name": "Myelin", "version": Version}})
}

// Version is reported by GET /_matrix/federation/v1/version.
const Version = "0.1.0"
