package clientapi

import (
	"context"
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/internal/ratelimit"
	"github.com/myelin-chat/myelin/roomserver"
)

// Rooms is what the client API needs from the roomserver: its front door
// plus the client-only reads. *roomserver.Server implements it.
type Rooms interface {
	roomserver.API
	roomserver.ClientReads
	Relationships // relationships.go (MSC2836)
}

// roomMigrations are the tables of the room endpoints (aliases, the
// published room directory, reports, the relations index, receipts,
// presence). They are a migration set of their own, component
// "clientapi_rooms", so their numbering never collides with the account
// tables' set.
//
//go:embed rooms_migrations/*.sql
var roomMigrations embed.FS

// roomsComponent is the schema component name of roomMigrations.
const roomsComponent = "clientapi_rooms"

// roomsPart is the state of the room endpoints inside Server.
type roomsPart struct {
	rooms Rooms // nil: room endpoints are not served
	// messageLimit limits events sent per user.
	// Spec: client-server-api, "Rate limiting".
	messageLimit *ratelimit.Limiter
	// relations indexes m.relates_to of every event from the room stream.
	relations *relationsIndexer
	// typing holds typing notifications in memory.
	typing *typingTracker
	// presenceSeen spares syncs with an unchanged set_presence a write.
	presenceSeen *presenceCache
	// wake is Deps.Wake (nil: GET /events is not served).
	wake notifier.Broadcaster
}

// initRooms migrates the room tables and prepares the room endpoints.
func (s *Server) initRooms(ctx context.Context, rooms Rooms) error {
	if rooms == nil {
		return nil
	}
	sub, err := fs.Sub(roomMigrations, "rooms_migrations")
	if err != nil {
		return err
	}
	if err := s.db.Migrate(ctx, roomsComponent, sub); err != nil {
		return err
	}
	limit := s.cfg.ClientAPI.RateLimits
	s.rooms = roomsPart{
		rooms:        rooms,
		messageLimit: s.newLimiter("message", limit.Message.PerSecond, limit.Message.Burst),
		relations:    &relationsIndexer{db: s.db, rooms: rooms},
		typing:       newTypingTracker(s.streamAdvanced),
		presenceSeen: newPresenceCache(),
	}
	// Spec: client-server-api, "m.room.member": a changed displayname or
	// avatar_url is sent to every room the user is joined to.
	s.onProfileChange = s.updateMemberEvents
	return nil
}

// roomRoutes registers the room endpoints (authenticated).
func (s *Server) roomRoutes(r chi.Router) {
	if s.rooms.rooms == nil {
		return
	}
	s.roomMembershipRoutes(r)
	s.roomEventRoutes(r)
	s.directoryRoutes(r)
	s.relationRoutes(r)
	s.roomExtraRoutes(r)
	s.reportRoutes(r)
	s.ephemeralRoutes(r)
	s.searchRoutes(r)
	s.threadSubscriptionRoutes(r)
	s.eventRelationshipRoutes(r)
	s.peekRoutes(r)
}

// caller is the authenticated user of a request.
func caller(r *http.Request) *authn.Device { return authn.FromContext(r.Context()) }

// pathRoomID reads {roomId} and checks its shape.
func pathRoomID(r *http.Request) (string, error) {
	roomID, err := unescapedParam(r, "roomId")
	if err != nil {
		return "", err
	}
	if !validRoomID(roomID) {
		return "", mxerr.New(mxerr.InvalidParam, "%q is not a valid room ID", roomID)
	}
	return roomID, nil
}

// pathRoomEventIDs reads {roomId} and {eventId} and checks their shapes.
func pathRoomEventIDs(r *http.Request) (roomID, eventID string, err error) {
	if roomID, err = pathRoomID(r); err != nil {
		return "", "", err
	}
	if eventID, err = unescapedParam(r, "eventId"); err != nil {
		return "", "", err
	}
	// No event ID holds NUL or bytes that are not UTF-8 (and PostgreSQL
	// refuses such text as a parameter).
	if len(eventID) < 2 || len(eventID) > 255 || eventID[0] != '$' ||
		!utf8.ValidString(eventID) || strings.ContainsRune(eventID, 0) {
		return "", "", mxerr.New(mxerr.InvalidParam, "%q is not a valid event ID", eventID)
	}
	return roomID, eventID, nil
}

// validAlias reports whether a has a room alias's shape:
// #localpart:server, at most 255 bytes.
// Spec: appendices, "Room Aliases".
func validAlias(a string) bool {
	if len(a) < 4 || len(a) > 255 || a[0] != '#' {
		return false
	}
	local, server, ok := strings.Cut(a[1:], ":")
	return ok && local != "" && server != "" && !strings.ContainsAny(local, "\x00")
}

// domainOf returns the server name part of a user ID, room alias or
// v1–v11 room ID.
func domainOf(id string) string {
	_, domain, _ := strings.Cut(id, ":")
	return domain
}

// updateMemberEvents re-sends userID's join event, with their current
// displayname and avatar_url, in every room they are joined to.
func (s *Server) updateMemberEvents(ctx context.Context, userID string) {
	roomIDs, err := s.rooms.rooms.JoinedRooms(ctx, userID)
	if err != nil {
		s.log.Warn("profile change: listing joined rooms", "err", err)
		return
	}
	content := s.memberProfile(ctx, userID)
	for _, roomID := range roomIDs {
		if _, err := s.rooms.rooms.Join(ctx, roomserver.MembershipRequest{RoomID: roomID, Sender: userID, Content: content}); err != nil {
			s.log.Warn("profile change: updating member event", "room", roomID, "err", err)
		}
	}
}

// memberProfile returns the displayname and avatar_url to put in userID's
// m.room.member events (empty when unset).
// Spec: client-server-api, "m.room.member" and "Events on Change of Profile Information".
func (s *Server) memberProfile(ctx context.Context, userID string) map[string]any {
	out := map[string]any{}
	fields, err := s.Profile(ctx, userID)
	if err != nil {
		return out
	}
	for _, key := range []string{fieldDisplayName, fieldAvatarURL} {
		if raw, ok := fields[key]; ok {
			var v string
			if json.Unmarshal(raw, &v) == nil && v != "" {
				out[key] = v
			}
		}
	}
	return out
}
