package clientapi

import (
	"context"
	"encoding/json"
	"time"

	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/roomserver"
)

// federationOnlyKeys are the top-level keys of a PDU that the client
// format leaves out.
// Spec: client-server-api, "Room Event Format" (ClientEvent) and
// server-server-api, "PDUs".
var federationOnlyKeys = []string{"auth_events", "prev_events", "hashes", "signatures", "depth", "origin", "prev_state", "membership"}

// eventFormatter renders events for one caller in the client format.
type eventFormatter struct {
	s        *Server
	userID   string
	deviceID string
	now      int64
	// depth counts how deep in bundled aggregations the events being
	// rendered are; at maxAggregationDepth none are added.
	depth int
}

// maxAggregationDepth bounds bundled aggregations: an event's thread
// summary carries its latest reply with that reply's own aggregations,
// and no deeper. Spec: "child events of the latest_event should
// themselves be aggregated ... The server should be careful to avoid loops".
const maxAggregationDepth = 2

func (s *Server) formatter(userID, deviceID string) *eventFormatter {
	return &eventFormatter{s: s, userID: userID, deviceID: deviceID, now: time.Now().UnixMilli()}
}

// one renders a single event.
func (f *eventFormatter) one(ctx context.Context, ev *roomserver.Event) (json.RawMessage, error) {
	out, err := f.many(ctx, []*roomserver.Event{ev})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// many renders events, looking transaction IDs and aggregations up once
// per call. The result is never nil.
func (f *eventFormatter) many(ctx context.Context, evs []*roomserver.Event) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(evs))
	if len(evs) == 0 {
		return out, nil
	}
	// The caller's own events from this device carry their transaction ID.
	// Spec: client-server-api, "Transaction identifiers".
	byRoom := map[string][]string{}
	for _, ev := range evs {
		if ev.Sender == f.userID {
			byRoom[ev.RoomID] = append(byRoom[ev.RoomID], ev.EventID)
		}
	}
	txnIDs := map[string]string{}
	for roomID, ids := range byRoom {
		got, err := f.s.rooms.rooms.TransactionIDs(ctx, roomID, f.userID, f.deviceID, ids)
		if err != nil {
			return nil, err
		}
		for k, v := range got {
			txnIDs[k] = v
		}
	}
	// Spec: unsigned.membership, the caller's membership at each event
	// (MSC4115); only for top-level events, not bundled ones.
	var memberships map[string]string
	if f.depth == 0 {
		ids := make([]string, len(evs))
		for i, ev := range evs {
			ids[i] = ev.EventID
		}
		var err error
		if memberships, err = f.s.rooms.rooms.MembershipsAt(ctx, f.userID, ids); err != nil {
			return nil, err
		}
	}
	var aggregations map[string]json.RawMessage
	if f.depth < maxAggregationDepth {
		var err error
		if aggregations, err = f.bundledAggregations(ctx, evs); err != nil {
			return nil, err
		}
	}
	for _, ev := range evs {
		raw, err := f.render(ev, txnIDs[ev.EventID], aggregations[ev.EventID], memberships[ev.EventID])
		if err != nil {
			return nil, err
		}
		out = append(out, raw)
	}
	return out, nil
}

// render turns one federation-format event into a ClientEvent.
func (f *eventFormatter) render(ev *roomserver.Event, txnID string, relations json.RawMessage, membership string) (json.RawMessage, error) {
	out, err := clientFormat(ev.JSON, ev.EventID, ev.RoomID, ev.RedactedBecause, f.now, txnID, relations)
	if err != nil || membership == "" {
		return out, err
	}
	return sjson.SetBytes(out, "unsigned.membership", membership)
}

// clientFormat converts PDU JSON to the client format: federation-only
// keys removed, event_id and room_id present, unsigned.age computed,
// unsigned.redacted_because itself in client format, and the optional
// transaction ID and bundled aggregations added.
func clientFormat(pdu json.RawMessage, eventID, roomID, redactedBecause string, now int64, txnID string, relations json.RawMessage) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(pdu, &m); err != nil {
		return nil, err
	}
	for _, k := range federationOnlyKeys {
		delete(m, k)
	}
	m["event_id"] = mustJSON(eventID)
	m["room_id"] = mustJSON(roomID)
	unsigned := map[string]json.RawMessage{}
	if raw, ok := m["unsigned"]; ok {
		_ = json.Unmarshal(raw, &unsigned) // a malformed unsigned is replaced
	}
	if rb, ok := unsigned["redacted_because"]; ok && redactedBecause != "" {
		converted, err := clientFormat(rb, redactedBecause, roomID, "", now, "", nil)
		if err != nil {
			return nil, err
		}
		unsigned["redacted_because"] = converted
	}
	var ts int64
	_ = json.Unmarshal(m["origin_server_ts"], &ts)
	unsigned["age"] = mustJSON(max(now-ts, 0))
	if txnID != "" {
		unsigned["transaction_id"] = mustJSON(txnID)
	}
	if len(relations) > 0 {
		unsigned["m.relations"] = relations
	}
	m["unsigned"] = mustJSON(unsigned)
	return json.Marshal(m)
}

// mustJSON marshals values that cannot fail to marshal.
func mustJSON(v any) json.RawMessage {
	raw, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return raw
}

// stripped renders events in the stripped state format (type,
// state_key, sender, content), as invite and knock state and the room
// summary use. Spec: client-server-api, "Stripped state".
func stripped(evs []*roomserver.Event) []map[string]any {
	out := make([]map[string]any, 0, len(evs))
	for _, ev := range evs {
		sk := ""
		if ev.StateKey != nil {
			sk = *ev.StateKey
		}
		out = append(out, map[string]any{"type": ev.Type, "state_key": sk, "sender": ev.Sender, "content": ev.Content})
	}
	return out
}
