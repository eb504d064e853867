package clientapi

import (
	"net/http"

	"github.com/go-chi/chi/v5"
)

// roomExtraRoutes registers upgrades, reports, the space hierarchy,
// room summaries and mutual rooms.
func (s *Server) roomExtraRoutes(r chi.Router) {
	const v3 = "/_matrix/client/v3/rooms/{roomId}"
	handle(r, http.MethodPost, v3+"/upgrade", s.upgradeRoom)
	handle(r, http.MethodPost, v3+"/report/{eventId}", s.reportEvent)
	handle(r, http.MethodPost, v3+"/report", s.reportRoom)
}
