package clientapi

import (
	"net/http"

	"github.com/go-chi/chi/v5"
)

// roomExtraRoutes registers upgrades, the space hierarchy,
// room summaries and mutual rooms.
func (s *Server) roomExtraRoutes(r chi.Router) {
	const v3 = "/_matrix/client/v3/rooms/{roomId}"
	handle(r, http.MethodPost, v3+"/upgrade", s.upgradeRoom)
	handle(r, http.MethodGet, "/_matrix/client/v1/mutual_rooms", s.mutualRooms)
}

// ephemeralRoutes registers typing, receipts, read markers and presence.
func (s *Server) ephemeralRoutes(r chi.Router) {
	const v3 = "/_matrix/client/v3"
	handle(r, http.MethodPut, v3+"/rooms/{roomId}/typing/{userId}", s.setTyping)
	handle(r, http.MethodPost, v3+"/rooms/{roomId}/receipt/{receiptType}/{eventId}", s.sendReceipt)
	handle(r, http.MethodPost, v3+"/rooms/{roomId}/read_markers", s.setReadMarkers)
	handle(r, http.MethodGet, v3+"/presence/{userId}/status", s.getPresence)
	handle(r, http.MethodPut, v3+"/presence/{userId}/status", s.putPresence)
}
