package syncapi

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/roomserver"
)

// clientEvent is the client format of a room event without room_id, as
// /sync returns it. Spec: client-server-api, "Room Event Format"
// (ClientEventWithoutRoomID).
type clientEvent struct {
	Content        json.RawMessage `json:"content"`
	EventID        string          `json:"event_id"`
	OriginServerTS int64           `json:"origin_server_ts"`
	Sender         string          `json:"sender"`
	StateKey       *string         `json:"state_key,omitempty"`
	Type           string          `json:"type"`
	Redacts        string          `json:"redacts,omitempty"`
	Unsigned       *unsigned       `json:"unsigned,omitempty"`
}

type unsigned struct {
	Age           int64  `json:"age"`
	TransactionID string `json:"transaction_id,omitempty"`
	// Membership is the requesting user's membership after the event
	// (MSC4115, spec v1.11 "unsigned.membership").
	Membership string `json:"membership,omitempty"`
	// RedactedBecause names the redaction; the full event is not loaded.
	RedactedBy string `json:"redacted_by,omitempty"`
	// Relations are the event's bundled aggregations.
	Relations json.RawMessage `json:"m.relations,omitempty"`
	// PrevContent, PrevSender and ReplacesState describe the state event
	// a state event replaced. Spec: client-server-api, "Room Event
	// Format" (UnsignedData).
	PrevContent   json.RawMessage `json:"prev_content,omitempty"`
	PrevSender    string          `json:"prev_sender,omitempty"`
	ReplacesState string          `json:"replaces_state,omitempty"`
}

// strippedEvent is a stripped state event. Spec: client-server-api,
// "Stripped state". The m.room.create event keeps the fields of a full
// client event (event_id, origin_server_ts, room_id): since v1.16 it is
// required in invite and knock state and, per MSC4311, carried whole so
// that a room ID can be checked against its create event (Complement:
// TestMSC4311FullCreateEventOnStrippedState).
type strippedEvent struct {
	Content        json.RawMessage `json:"content"`
	Sender         string          `json:"sender"`
	StateKey       string          `json:"state_key"`
	Type           string          `json:"type"`
	EventID        string          `json:"event_id,omitempty"`
	OriginServerTS int64           `json:"origin_server_ts,omitempty"`
	RoomID         string          `json:"room_id,omitempty"`
}

// eventFormatter renders events for one request.
type eventFormatter struct {
	now        time.Time
	federation bool              // event_format: federation
	txnIDs     map[string]string // event ID -> the requesting device's txn ID
	// memberships maps event ID -> the requesting user's membership
	// after it, for unsigned.membership.
	memberships map[string]string
	// relations maps event ID -> its bundled aggregations.
	relations map[string]json.RawMessage
	// prevStates maps a state event's ID -> the state it replaced.
	prevStates map[string]*roomserver.PrevState
}

func (f *eventFormatter) format(e *roomserver.Event) json.RawMessage {
	if f.federation {
		return e.JSON
	}
	ce := clientEvent{
		Content:        e.Content,
		EventID:        e.EventID,
		OriginServerTS: e.OriginServerTS,
		Sender:         e.Sender,
		StateKey:       e.StateKey,
		Type:           e.Type,
		Redacts:        e.Redacts,
		Unsigned:       &unsigned{Age: max(0, f.now.UnixMilli()-e.OriginServerTS), RedactedBy: e.RedactedBecause},
	}
	if len(ce.Content) == 0 {
		ce.Content = json.RawMessage("{}")
	}
	if id, ok := f.txnIDs[e.EventID]; ok {
		ce.Unsigned.TransactionID = id
	}
	ce.Unsigned.Membership = f.memberships[e.EventID]
	ce.Unsigned.Relations = f.relations[e.EventID]
	if p := f.prevStates[e.EventID]; p != nil {
		ce.Unsigned.PrevContent, ce.Unsigned.PrevSender, ce.Unsigned.ReplacesState = p.Content, p.Sender, p.EventID
	}
	// Room for the whole event in one allocation, unsigned included.
	size := len(ce.Content) + len(ce.EventID) + len(ce.Sender) + len(ce.Type) + 160
	if out, ok := appendClientEvent(make([]byte, 0, size), &ce); ok {
		return out
	}
	out, _ := json.Marshal(ce) // fails as appendClientEvent did
	return out
}

// marshalled reports whether format's output is already what
// json.Marshal makes of it as a json.RawMessage (compact, with <, >, &,
// U+2028 and U+2029 escaped), so that the response's encoder need not
// check and copy it again: true of the client format, which
// appendClientEvent builds from parts in that form (content through
// appendRaw, strings through httpx.AppendJSONString) or json.Marshal writes, or
// nil when both fail (written as null either way). The federation
// format is the stored event's JSON, which is not.
func (f *eventFormatter) marshalled() bool { return !f.federation }

func (f *eventFormatter) formatAll(events []*roomserver.Event) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(events))
	for _, e := range events {
		out = append(out, f.format(e))
	}
	return out
}

func strip(e *roomserver.Event) strippedEvent {
	key := ""
	if e.StateKey != nil {
		key = *e.StateKey
	}
	content := e.Content
	if len(content) == 0 {
		content = json.RawMessage("{}")
	}
	out := strippedEvent{Content: content, Sender: e.Sender, StateKey: key, Type: e.Type}
	if e.Type == "m.room.create" && key == "" {
		out.EventID, out.OriginServerTS, out.RoomID = e.EventID, e.OriginServerTS, e.RoomID
	}
	return out
}

// strippedStateTypes are the state events an invitee or knocker sees.
// Spec: client-server-api, "Stripped state" (the recommended set).
var strippedStateTypes = []string{
	"m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar",
	"m.room.canonical_alias", "m.room.encryption", "m.room.topic",
}

// matchType reports whether t matches pattern, where '*' matches any
// sequence of characters. Spec: client-server-api, "Filtering" (types).
func matchType(pattern, t string) bool {
	first, rest, wild := strings.Cut(pattern, "*")
	if !wild {
		return pattern == t
	}
	// The pieces between the stars, matched in order without splitting
	// the pattern (a filter's patterns are checked for every event).
	if !strings.HasPrefix(t, first) {
		return false
	}
	t = t[len(first):]
	for {
		piece, after, more := strings.Cut(rest, "*")
		if !more {
			return strings.HasSuffix(t, piece)
		}
		idx := strings.Index(t, piece)
		if idx < 0 {
			return false
		}
		t = t[idx+len(piece):]
		rest = after
	}
}

func matchAnyType(patterns []string, t string) bool {
	for _, p := range patterns {
		if matchType(p, t) {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// eventFilterAllows applies an EventFilter's type and sender rules. A nil
// filter allows everything; an empty non-nil types or senders list
// allows nothing. Spec: client-server-api, "Filtering".
func eventFilterAllows(f *clientapi.EventFilter, eventType, sender string) bool {
	if f == nil {
		return true
	}
	if matchAnyType(f.NotTypes, eventType) || contains(f.NotSenders, sender) {
		return false
	}
	if f.Types != nil && !matchAnyType(f.Types, eventType) {
		return false
	}
	if f.Senders != nil && !contains(f.Senders, sender) {
		return false
	}
	return true
}

// roomEventFilterAllows adds the RoomEventFilter's room and contains_url
// rules.
func roomEventFilterAllows(f *clientapi.RoomEventFilter, e *roomserver.Event) bool {
	if f == nil {
		return true
	}
	if !eventFilterAllows(&f.EventFilter, e.Type, e.Sender) {
		return false
	}
	if contains(f.NotRooms, e.RoomID) || (f.Rooms != nil && !contains(f.Rooms, e.RoomID)) {
		return false
	}
	if f.ContainsURL != nil {
		has := gjson.GetBytes(e.Content, "url").Type == gjson.String
		if has != *f.ContainsURL {
			return false
		}
	}
	return f.RelTypeAllows(e.Content)
}

func filterEvents(f *clientapi.RoomEventFilter, events []*roomserver.Event) []*roomserver.Event {
	if f == nil {
		return events
	}
	out := events[:0:0]
	for _, e := range events {
		if roomEventFilterAllows(f, e) {
			out = append(out, e)
		}
	}
	return out
}

// roomAllowed applies RoomFilter.rooms / not_rooms.
func roomAllowed(f *clientapi.Filter, roomID string) bool {
	if f == nil || f.Room == nil {
		return true
	}
	if contains(f.Room.NotRooms, roomID) {
		return false
	}
	return f.Room.Rooms == nil || contains(f.Room.Rooms, roomID)
}

func stateKeyOf(e *roomserver.Event) string {
	if e.StateKey == nil {
		return ""
	}
	return *e.StateKey
}
