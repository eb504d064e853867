package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// errBadAlias is M_BAD_ALIAS. Spec: client-server-api, "PUT
// /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}".
const errBadAlias mxerr.Code = "M_BAD_ALIAS"

func (s *Server) roomEventRoutes(r chi.Router) {
	const v3 = "/_matrix/client/v3/rooms/{roomId}"
	handle(r, http.MethodPut, v3+"/send/{eventType}/{txnId}", s.sendMessage)
	// Spec: "When an empty string, the trailing slash on this endpoint is
	// optional."
	for _, p := range []string{"/state/{eventType}", "/state/{eventType}/", "/state/{eventType}/{stateKey}"} {
		handle(r, http.MethodGet, v3+p, s.getStateEvent)
		handle(r, http.MethodPut, v3+p, s.putStateEvent)
	}
	handle(r, http.MethodGet, v3+"/state", s.getState)
	handle(r, http.MethodPut, v3+"/redact/{eventId}/{txnId}", s.redact)
	handle(r, http.MethodGet, v3+"/event/{eventId}", s.getEvent)
	handle(r, http.MethodGet, v3+"/context/{eventId}", s.eventContext)
	handle(r, http.MethodGet, v3+"/messages", s.messages)
	handle(r, http.MethodGet, "/_matrix/client/v1/rooms/{roomId}/timestamp_to_event", s.timestampToEvent)
}

// eventContent reads a request body that must be a JSON object (an
// event's content) and returns it compacted.
func eventContent(r *http.Request) (json.RawMessage, error) {
	body, err := httpx.ReadBody(r)
	if err != nil {
		return nil, err
	}
	content, err := accountDataContent(body)
	if err != nil {
		return nil, err
	}
	return content, nil
}

// sendMessage sends a message event.
// Spec: client-server-api, "PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}".
func (s *Server) sendMessage(w http.ResponseWriter, r *http.Request) error {
	r, done := s.expectWrite(r)
	defer done()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	eventType, err := unescapedParam(r, "eventType")
	if err != nil {
		return err
	}
	txnID, err := unescapedParam(r, "txnId")
	if err != nil {
		return err
	}
	if delay, delayed, err := s.delayRequested(r); delayed || err != nil {
		if err != nil {
			return err
		}
		done() // no room event now: scheduling writes a delayed one
		return s.scheduleDelayed(w, r, delayedEvent{RoomID: roomID, Type: eventType, Delay: delay}, txnID)
	}
	content, err := eventContent(r)
	if err != nil {
		return err
	}
	me := caller(r)
	if err := s.allowMessage(me); err != nil {
		return err
	}
	if err := s.checkRelationshipTarget(r.Context(), me.UserID, roomID, content); err != nil { // MSC2836
		return err
	}
	ts, err := massagedTS(r, me)
	if err != nil {
		return err
	}
	resp, err := s.rooms.rooms.SendEvent(r.Context(), roomserver.SendEventRequest{
		RoomID: roomID, Sender: me.UserID, Type: eventType, Content: content,
		TxnID: &roomserver.TxnID{DeviceID: me.DeviceID, TxnID: txnID}, OriginServerTS: ts,
	})
	if err != nil {
		return err
	}
	return httpx.WriteEventID(w, resp.EventID)
}

// expectWrite announces the request's event write to the database's
// group-commit writer, so that a commit about to happen waits briefly for
// it (storage.DB.ExpectWrite); call done as soon as the request knows it
// will write no room event, and when it ends. The roomserver's event
// write ends the announcement (storage.ForAnnouncedWrite).
func (s *Server) expectWrite(r *http.Request) (_ *http.Request, done func()) {
	ctx, done := s.db.ExpectWrite(r.Context())
	return r.WithContext(ctx), done
}

// stateParams reads {eventType} and the optional {stateKey}.
func stateParams(r *http.Request) (roomID, eventType, stateKey string, err error) {
	if roomID, err = pathRoomID(r); err != nil {
		return
	}
	if eventType, err = unescapedParam(r, "eventType"); err != nil {
		return
	}
	stateKey, err = unescapedParam(r, "stateKey")
	return
}

// putStateEvent sends a state event. Sending content equal to the
// current state by the same sender returns the existing event instead of
// a new one, so clients that re-send settings do not spam the room.
// Spec: client-server-api, "PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}".
func (s *Server) putStateEvent(w http.ResponseWriter, r *http.Request) error {
	r, done := s.expectWrite(r)
	defer done()
	ctx := r.Context()
	roomID, eventType, stateKey, err := stateParams(r)
	if err != nil {
		return err
	}
	if delay, delayed, err := s.delayRequested(r); delayed || err != nil {
		if err != nil {
			return err
		}
		done() // no room event now: scheduling writes a delayed one
		return s.scheduleDelayed(w, r, delayedEvent{RoomID: roomID, Type: eventType, StateKey: &stateKey, Delay: delay}, "")
	}
	content, err := eventContent(r)
	if err != nil {
		return err
	}
	me := caller(r)
	if eventType == "m.room.member" && domainOf(stateKey) == s.serverName &&
		gjson.GetBytes(content, "membership").Str == "invite" {
		// Spec: "Invite permission" lists this endpoint among those an
		// invitee's block applies to.
		if err := s.CheckInvite(ctx, me.UserID, stateKey); err != nil {
			return err
		}
	}
	if eventType == "m.room.canonical_alias" {
		if err := s.checkCanonicalAlias(ctx, roomID, content); err != nil {
			return err
		}
	}
	if err := s.allowMessage(me); err != nil {
		return err
	}
	if err := s.checkRelationshipTarget(ctx, me.UserID, roomID, content); err != nil { // MSC2836
		return err
	}
	if current, err := s.rooms.rooms.CurrentStateEvent(ctx, me.UserID, roomID, eventType, stateKey); err == nil &&
		current.Sender == me.UserID && sameJSON(current.Content, content) {
		if m, _ := s.rooms.rooms.Membership(ctx, roomID, me.UserID); m == "join" {
			done() // nothing to write: no held commit may wait for it
			return httpx.WriteEventID(w, current.EventID)
		}
	}
	ts, err := massagedTS(r, me)
	if err != nil {
		return err
	}
	resp, err := s.rooms.rooms.SendEvent(ctx, roomserver.SendEventRequest{
		RoomID: roomID, Sender: me.UserID, Type: eventType, StateKey: &stateKey, Content: content, OriginServerTS: ts,
	})
	if err != nil {
		return err
	}
	return httpx.WriteEventID(w, resp.EventID)
}

// sameJSON reports whether two JSON values are equal as values.
func sameJSON(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	ja, _ := json.Marshal(x)
	jb, _ := json.Marshal(y)
	return bytes.Equal(ja, jb)
}

// checkCanonicalAlias validates an m.room.canonical_alias content: each
// alias must be well formed (M_INVALID_PARAM) and point to this room
// (M_BAD_ALIAS). Aliases on other servers cannot be resolved without
// federation and are refused as M_BAD_ALIAS.
// Spec: client-server-api, "m.room.canonical_alias" and "PUT .../state/...".
func (s *Server) checkCanonicalAlias(ctx context.Context, roomID string, content json.RawMessage) error {
	var c struct {
		Alias      *string  `json:"alias"`
		AltAliases []string `json:"alt_aliases"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return mxerr.New(mxerr.InvalidParam, "alias must be a string and alt_aliases an array of strings")
	}
	aliases := c.AltAliases
	if c.Alias != nil && *c.Alias != "" {
		aliases = append([]string{*c.Alias}, aliases...)
	}
	for _, a := range aliases {
		if !validAlias(a) {
			return mxerr.New(mxerr.InvalidParam, "%q is not a valid room alias", a)
		}
	}
	for _, a := range aliases {
		if domainOf(a) != s.serverName {
			return mxerr.New(errBadAlias, "the alias %s is on another server and cannot be checked", a)
		}
		target, _, err := s.lookupAlias(ctx, a)
		if mxerr.Is(err, mxerr.NotFound) || err == nil && target != roomID {
			return mxerr.New(errBadAlias, "the alias %s does not point to this room", a)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// getStateEvent answers with one state event's content, or the whole
// event with format=event.
// Spec: client-server-api, "GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}".
func (s *Server) getStateEvent(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, eventType, stateKey, err := stateParams(r)
	if err != nil {
		return err
	}
	format := r.URL.Query().Get("format")
	if format != "" && format != "content" && format != "event" {
		return mxerr.New(mxerr.InvalidParam, "format must be content or event")
	}
	me := caller(r)
	ev, err := s.rooms.rooms.CurrentStateEvent(ctx, me.UserID, roomID, eventType, stateKey)
	if err != nil {
		return err
	}
	if format == "event" {
		out, err := s.formatter(me.UserID, me.DeviceID).one(ctx, ev)
		if err != nil {
			return err
		}
		return httpx.OK(w, out)
	}
	return httpx.OK(w, ev.Content)
}

// getState answers with every state event of the room the caller may see.
// Spec: client-server-api, "GET /_matrix/client/v3/rooms/{roomId}/state".
func (s *Server) getState(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	me := caller(r)
	state, err := s.rooms.rooms.CurrentState(ctx, me.UserID, roomID)
	if err != nil {
		return err
	}
	out, err := s.formatter(me.UserID, me.DeviceID).many(ctx, state)
	if err != nil {
		return err
	}
	return httpx.OK(w, out)
}

// redact redacts an event.
// Spec: client-server-api, "PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}".
func (s *Server) redact(w http.ResponseWriter, r *http.Request) error {
	r, done := s.expectWrite(r)
	defer done()
	roomID, eventID, err := pathRoomEventIDs(r)
	if err != nil {
		return err
	}
	txnID, err := unescapedParam(r, "txnId")
	if err != nil {
		return err
	}
	var body struct {
		Reason *string `json:"reason"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	content := map[string]any{}
	if body.Reason != nil {
		content["reason"] = *body.Reason
	}
	me := caller(r)
	if err := s.allowMessage(me); err != nil {
		return err
	}
	if err := s.checkMayRedact(r.Context(), me.UserID, roomID, eventID); err != nil {
		return err
	}
	resp, err := s.rooms.rooms.SendEvent(r.Context(), roomserver.SendEventRequest{
		RoomID: roomID, Sender: me.UserID, Type: "m.room.redaction", Content: mustJSON(content), Redacts: eventID,
		TxnID: &roomserver.TxnID{DeviceID: me.DeviceID, TxnID: txnID},
	})
	if err != nil {
		return err
	}
	return httpx.WriteEventID(w, resp.EventID)
}

// visibleEvent loads an event of roomID the caller may see; M_NOT_FOUND
// otherwise (also when it belongs to another room).
func (s *Server) visibleEvent(ctx context.Context, userID, roomID, eventID string) (*roomserver.Event, error) {
	ev, err := s.rooms.rooms.Event(ctx, userID, eventID)
	if err != nil {
		return nil, err
	}
	if ev.RoomID != roomID {
		return nil, mxerr.New(mxerr.NotFound, "event not found")
	}
	return ev, nil
}

// getEvent answers with one event.
// Spec: client-server-api, "GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}".
func (s *Server) getEvent(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, eventID, err := pathRoomEventIDs(r)
	if err != nil {
		return err
	}
	me := caller(r)
	ev, err := s.visibleEvent(ctx, me.UserID, roomID, eventID)
	if err != nil {
		return err
	}
	out, err := s.formatter(me.UserID, me.DeviceID).one(ctx, ev)
	if err != nil {
		return err
	}
	return httpx.OK(w, out)
}

// powerLevels is the part of m.room.power_levels content clientapi reads.
// Spec: client-server-api, "m.room.power_levels".
type powerLevels struct {
	Users         map[string]int64 `json:"users"`
	UsersDefault  int64            `json:"users_default"`
	EventsDefault int64            `json:"events_default"`
	StateDefault  *int64           `json:"state_default"`
	Events        map[string]int64 `json:"events"`
	Redact        *int64           `json:"redact"`
}

// creatorPower stands for the infinite power of v12 room creators.
const creatorPower = int64(1) << 62

// userPower returns userID's power level in roomID and the room's power
// levels, as userID may read them. Creators of rooms with privileged
// creators (v12) rank above every level.
// Spec: client-server-api, "m.room.power_levels"; rooms/v12, "Privileged creators".
func (s *Server) userPower(ctx context.Context, userID, roomID string) (int64, *powerLevels, error) {
	create, err := s.rooms.rooms.CurrentStateEvent(ctx, userID, roomID, "m.room.create", "")
	if err != nil {
		return 0, nil, err
	}
	version, err := s.rooms.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return 0, nil, err
	}
	if version == "12" {
		var c struct {
			AdditionalCreators []string `json:"additional_creators"`
		}
		_ = json.Unmarshal(create.Content, &c)
		if create.Sender == userID || contains(c.AdditionalCreators, userID) {
			return creatorPower, &powerLevels{}, nil
		}
	}
	pl := &powerLevels{}
	plEvent, err := s.rooms.rooms.CurrentStateEvent(ctx, userID, roomID, "m.room.power_levels", "")
	if mxerr.Is(err, mxerr.NotFound) {
		// No power levels: the creator has 100, everyone else 0.
		if create.Sender == userID {
			return 100, pl, nil
		}
		return 0, pl, nil
	}
	if err != nil {
		return 0, nil, err
	}
	if err := json.Unmarshal(plEvent.Content, pl); err != nil {
		return 0, nil, mxerr.Wrap(err, mxerr.BadState, "the room's power levels are malformed")
	}
	if level, ok := pl.Users[userID]; ok {
		return level, pl, nil
	}
	return pl.UsersDefault, pl, nil
}

// redactLevel is the power needed to redact others' events (default 50).
func (pl *powerLevels) redactLevel() int64 {
	if pl.Redact != nil {
		return *pl.Redact
	}
	return 50
}

// stateLevel is the power needed to send a state event of eventType.
func (pl *powerLevels) stateLevel(eventType string) int64 {
	if l, ok := pl.Events[eventType]; ok {
		return l
	}
	if pl.StateDefault != nil {
		return *pl.StateDefault
	}
	return 50
}

// checkMayRedact refuses redacting another user's event without the
// redact power level. From room version 3 on, the auth rules accept such
// a redaction event but no server applies it; answering 403 tells the
// client instead of storing an event that does nothing.
// Spec: client-server-api, "PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}".
func (s *Server) checkMayRedact(ctx context.Context, userID, roomID, eventID string) error {
	target, err := s.rooms.rooms.Event(ctx, userID, eventID)
	if err != nil || target.RoomID != roomID || target.Sender == userID {
		return nil // unknown targets are left to the roomserver
	}
	level, pl, err := s.userPower(ctx, userID, roomID)
	if err != nil {
		return err
	}
	if level < pl.redactLevel() {
		return mxerr.New(mxerr.Forbidden, "you need power level %d to redact other users' events", pl.redactLevel())
	}
	return nil
}
