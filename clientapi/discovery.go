package clientapi

import (
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// specVersions lists the spec versions whose client-server surface Myelin
// serves. It grows as capabilities land; a version is listed only when
// what it requires is implemented.
var specVersions = []string{"v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"}

// unstableFeatures lists MSC feature flags that are really implemented.
var unstableFeatures = map[string]bool{
	// Simplified sliding sync (MSC4186), served by syncapi.
	"org.matrix.simplified_msc3575": true,
	// Deleting account data (MSC3391).
	"org.matrix.msc3391": true,
	// Deleting a device deletes its local notification settings (MSC3890).
	"org.matrix.msc3890": true,
	// Filtering room events by relation type (MSC3874).
	"org.matrix.msc3874": true,
	// Delayed events (MSC4140).
	"org.matrix.msc4140": true,
	// Invite filtering (MSC4155).
	"org.matrix.msc4155": true,
	// Dehydrated devices (MSC3814), served by the key server.
	"org.matrix.msc3814": true,
}

func (s *Server) discoveryRoutes(r chi.Router) {
	// Spec: client-server-api, "GET /_matrix/client/versions".
	handle(r, http.MethodGet, "/_matrix/client/versions", func(w http.ResponseWriter, r *http.Request) error {
		return httpx.OK(w, map[string]any{"versions": specVersions, "unstable_features": unstableFeatures})
	})
	// Spec: client-server-api, "Well-known URIs".
	handle(r, http.MethodGet, "/.well-known/matrix/client", func(w http.ResponseWriter, r *http.Request) error {
		return httpx.OK(w, map[string]any{"m.homeserver": map[string]string{"base_url": s.publicBaseURL()}})
	})
	handle(r, http.MethodGet, "/.well-known/matrix/support", s.supportInfo)
	// Spec: server-server-api, "GET /.well-known/matrix/server".
	handle(r, http.MethodGet, "/.well-known/matrix/server", func(w http.ResponseWriter, r *http.Request) error {
		if s.cfg.Global.WellKnownServer == "" {
			return mxerr.New(mxerr.NotFound, "no .well-known delegation is configured")
		}
		return httpx.OK(w, map[string]string{"m.server": s.cfg.Global.WellKnownServer})
	})
}

// supportInfo answers /.well-known/matrix/support from the config.
// Spec: client-server-api, "GET /.well-known/matrix/support" (v1.10): at
// least one of contacts or support_page; 404 when nothing is configured.
func (s *Server) supportInfo(w http.ResponseWriter, r *http.Request) error {
	g := s.cfg.Global
	body := map[string]any{}
	if g.AdminMatrixID != "" || g.AdminEmail != "" {
		contact := map[string]string{"role": "m.role.admin"}
		if g.AdminMatrixID != "" {
			contact["matrix_id"] = g.AdminMatrixID
		}
		if g.AdminEmail != "" {
			contact["email_address"] = g.AdminEmail
		}
		body["contacts"] = []any{contact}
	}
	if g.SupportPage != "" {
		body["support_page"] = g.SupportPage
	}
	if len(body) == 0 {
		return mxerr.New(mxerr.NotFound, "no support information is configured")
	}
	return httpx.OK(w, body)
}

func (s *Server) publicBaseURL() string {
	if u := s.cfg.Global.PublicBaseURL; u != "" {
		return strings.TrimRight(u, "/")
	}
	return "http://" + s.cfg.HTTP.Listen
}
