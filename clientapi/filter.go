package clientapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Filter is a sync filter as uploaded by a client.
//
// A nil list means the field was absent (no restriction); an empty,
// non-nil list was sent as [] (it matches nothing). Unknown fields are
// ignored here but kept in the stored JSON.
//
// Spec: client-server-api, "Filtering", and the Filter schema of "POST
// /_matrix/client/v3/user/{userId}/filter".
type Filter struct {
	// EventFields lists dot-separated paths of event fields to include;
	// nil means all fields.
	EventFields []string `json:"event_fields"`
	// EventFormat is "client" or "federation"; "" means client.
	EventFormat string `json:"event_format,omitempty"`
	// Presence filters presence updates.
	Presence *EventFilter `json:"presence,omitempty"`
	// AccountData filters global account data.
	AccountData *EventFilter `json:"account_data,omitempty"`
	// Room filters room data.
	Room *RoomFilter `json:"room,omitempty"`
}

// EventFilter is the schema's EventFilter.
type EventFilter struct {
	// Limit is the maximum number of events to return; nil means the
	// server's default. It is always > 0 once validated.
	Limit      *int     `json:"limit,omitempty"`
	NotSenders []string `json:"not_senders"`
	NotTypes   []string `json:"not_types"`
	Senders    []string `json:"senders"`
	Types      []string `json:"types"`
}

// RoomEventFilter is the schema's RoomEventFilter.
type RoomEventFilter struct {
	EventFilter
	UnreadThreadNotifications bool     `json:"unread_thread_notifications,omitempty"`
	LazyLoadMembers           bool     `json:"lazy_load_members,omitempty"`
	IncludeRedundantMembers   bool     `json:"include_redundant_members,omitempty"`
	NotRooms                  []string `json:"not_rooms"`
	Rooms                     []string `json:"rooms"`
	// ContainsURL is nil when url is not considered, else whether events
	// must (true) or must not (false) have content.url.
	ContainsURL *bool `json:"contains_url,omitempty"`
	// RelTypes, if non-nil, keeps only events whose m.relates_to has one
	// of these rel_types; NotRelTypes drops events with one of them
	// (MSC3874, filter_reltypes.go).
	RelTypes    []string `json:"org.matrix.msc3874.rel_types"`
	NotRelTypes []string `json:"org.matrix.msc3874.not_rel_types"`
}

// RoomFilter is the schema's RoomFilter.
type RoomFilter struct {
	NotRooms     []string         `json:"not_rooms"`
	Rooms        []string         `json:"rooms"`
	Ephemeral    *RoomEventFilter `json:"ephemeral,omitempty"`
	IncludeLeave bool             `json:"include_leave,omitempty"`
	State        *RoomEventFilter `json:"state,omitempty"`
	Timeline     *RoomEventFilter `json:"timeline,omitempty"`
	AccountData  *RoomEventFilter `json:"account_data,omitempty"`
}

// ParseFilter decodes and validates a filter: field types as the schema
// gives them, event_format client or federation, limits above zero, room
// IDs starting with '!' and user IDs with '@'. Errors are M_NOT_JSON for
// text that is not JSON and M_BAD_JSON for JSON that is not a valid
// filter. The sync component uses it for inline filters (?filter={...}).
func ParseFilter(data []byte) (*Filter, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, mxerr.New(mxerr.NotJSON, "the filter is empty")
	}
	var f Filter
	if err := httpx.Unmarshal(data, &f); err != nil {
		return nil, err
	}
	if err := f.validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

func (f *Filter) validate() error {
	switch f.EventFormat {
	case "", "client", "federation":
	default:
		return mxerr.New(mxerr.BadJSON, "event_format must be client or federation, not %q", f.EventFormat)
	}
	if err := f.Presence.validate("presence"); err != nil {
		return err
	}
	if err := f.AccountData.validate("account_data"); err != nil {
		return err
	}
	if f.Room == nil {
		return nil
	}
	if err := validateIDs("room.rooms", f.Room.Rooms, "!"); err != nil {
		return err
	}
	if err := validateIDs("room.not_rooms", f.Room.NotRooms, "!"); err != nil {
		return err
	}
	for name, sub := range map[string]*RoomEventFilter{
		"room.ephemeral": f.Room.Ephemeral, "room.state": f.Room.State,
		"room.account_data": f.Room.AccountData,
	} {
		if err := sub.validate(name); err != nil {
			return err
		}
	}
	// A timeline limit of 0 is taken, although the schema asks for more
	// than 0: clients use it to get a room's state without its events
	// (as Synapse allows; Complement TestArchivedRoomsHistory). The
	// timeline is then empty and limited.
	if tl := f.Room.Timeline; tl != nil && tl.Limit != nil && *tl.Limit == 0 {
		zero := *tl
		zero.Limit = nil
		return zero.validate("room.timeline")
	}
	return f.Room.Timeline.validate("room.timeline")
}

func (e *EventFilter) validate(name string) error {
	if e == nil {
		return nil
	}
	if e.Limit != nil && *e.Limit <= 0 {
		return mxerr.New(mxerr.BadJSON, "%s.limit must be an integer greater than 0", name)
	}
	if err := validateIDs(name+".senders", e.Senders, "@"); err != nil {
		return err
	}
	return validateIDs(name+".not_senders", e.NotSenders, "@")
}

func (e *RoomEventFilter) validate(name string) error {
	if e == nil {
		return nil
	}
	if err := e.EventFilter.validate(name); err != nil {
		return err
	}
	if err := validateIDs(name+".rooms", e.Rooms, "!"); err != nil {
		return err
	}
	return validateIDs(name+".not_rooms", e.NotRooms, "!")
}

// validateIDs checks the schema's pattern for lists of room or user IDs.
func validateIDs(name string, ids []string, sigil string) error {
	for _, id := range ids {
		if !strings.HasPrefix(id, sigil) {
			return mxerr.New(mxerr.BadJSON, "%s: %q does not start with %s", name, id, sigil)
		}
	}
	return nil
}

func (s *Server) filterRoutes(r chi.Router) {
	handle(r, http.MethodPost, "/_matrix/client/v3/user/{userId}/filter", s.postFilter)
	handle(r, http.MethodGet, "/_matrix/client/v3/user/{userId}/filter/{filterId}", s.getFilter)
}

// postFilter stores a filter and answers with its ID.
// Spec: client-server-api, "POST /_matrix/client/v3/user/{userId}/filter".
func (s *Server) postFilter(w http.ResponseWriter, r *http.Request) error {
	local, err := s.filterOwner(r)
	if err != nil {
		return err
	}
	body, err := httpx.ReadBody(r)
	if err != nil {
		return err
	}
	if _, err := ParseFilter(body); err != nil {
		return err
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, body); err != nil {
		return mxerr.New(mxerr.NotJSON, "the filter is not valid JSON")
	}
	filterID, err := s.storeFilter(r.Context(), local, compact.Bytes())
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]string{"filter_id": filterID})
}

// getFilter answers with a stored filter, as uploaded.
// Spec: client-server-api, "GET /_matrix/client/v3/user/{userId}/filter/{filterId}".
func (s *Server) getFilter(w http.ResponseWriter, r *http.Request) error {
	local, err := s.filterOwner(r)
	if err != nil {
		return err
	}
	filterID, err := unescapedParam(r, "filterId")
	if err != nil {
		return err
	}
	stored, err := s.loadFilter(r.Context(), local, filterID)
	if err != nil {
		return err
	}
	return httpx.OK(w, stored)
}

// filterOwner checks that the caller is the user in the path.
func (s *Server) filterOwner(r *http.Request) (string, error) {
	if caller := authn.FromContext(r.Context()); caller != nil && caller.IsGuest {
		return "", mxerr.New(mxerr.GuestAccessForbidden, "guests cannot store filters; send the filter inline")
	}
	return s.ownLocalpart(r, "use filters")
}
