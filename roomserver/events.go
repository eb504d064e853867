package roomserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Size limits. Spec: client-server-api, "Size limits".
const (
	maxEventBytes = 65536
	maxIDBytes    = 255
	maxSafeInt    = 1<<53 - 1
)

// loadedEvent is a stored event with its parsed form.
type loadedEvent struct {
	row *eventRow
	pdu gomatrixserverlib.PDU
}

// parseRow turns a stored row into a PDU of the room's version.
func parseRow(version string, row *eventRow) (*loadedEvent, error) {
	impl, err := roomVersion(version)
	if err != nil {
		return nil, err
	}
	pdu, err := guard("parsing stored event", func() (gomatrixserverlib.PDU, error) {
		return impl.NewEventFromTrustedJSONWithEventID(row.EventID, []byte(row.JSON), row.RedactedBecause != nil)
	})
	if err != nil {
		return nil, fmt.Errorf("parsing stored event %s: %w", row.EventID, err)
	}
	return &loadedEvent{row: row, pdu: pdu}, nil
}

// loadEvents returns the events with the given NIDs (in that order),
// parsed, from the cache or q. When tx is non-nil the reads may see the
// transaction's own uncommitted rows, so they are cached only after it
// commits.
func (s *Server) loadEvents(ctx context.Context, q storage.Querier, tx storage.Tx, version string, nids []int64) ([]*loadedEvent, error) {
	out := make([]*loadedEvent, len(nids))
	var missing []int64
	seen := eventsSeen(q)
	for i, nid := range nids {
		out[i] = s.events.getNID(nid, seen)
	}
	stale, err := s.freshHits(ctx, q, out)
	if err != nil {
		return nil, err
	}
	for _, i := range stale {
		out[i] = nil
	}
	for i, nid := range nids {
		if out[i] == nil {
			missing = append(missing, nid)
		}
	}
	if len(missing) > 0 {
		gen := s.eventGeneration(q)
		rows, err := eventRowsByNID(ctx, q, missing)
		if err != nil {
			return nil, err
		}
		got := make(map[int64]*loadedEvent, len(rows))
		for _, row := range rows {
			e, err := parseRow(version, row)
			if err != nil {
				return nil, err
			}
			got[row.NID] = e
			if tx != nil {
				tx.AfterCommit(func() { s.events.putLoaded(e, gen) })
			} else {
				s.events.putLoaded(e, gen)
			}
		}
		for i, nid := range nids {
			if out[i] == nil {
				out[i] = got[nid]
				if out[i] == nil {
					return nil, fmt.Errorf("event NID %d not found", nid)
				}
			}
		}
	}
	return out, nil
}

// loadClientEvents is loadEvents with each event made an *Event.
func (s *Server) loadClientEvents(ctx context.Context, q storage.Querier, tx storage.Tx, version string, nids []int64) ([]*Event, error) {
	loaded, err := s.loadEvents(ctx, q, tx, version, nids)
	if err != nil {
		return nil, err
	}
	out := make([]*Event, len(loaded))
	for i, e := range loaded {
		out[i] = toEvent(e)
	}
	return out, nil
}

// loadEventsByID is loadEvents by event ID; unknown IDs are left out of
// the map.
func (s *Server) loadEventsByID(ctx context.Context, q storage.Querier, tx storage.Tx, ids []string) (map[string]*loadedEvent, error) {
	out := make(map[string]*loadedEvent, len(ids))
	hits := make([]*loadedEvent, len(ids))
	seen := eventsSeen(q)
	for i, id := range ids {
		hits[i] = s.events.getID(id, seen)
	}
	stale, err := s.freshHits(ctx, q, hits)
	if err != nil {
		return nil, err
	}
	for _, i := range stale {
		hits[i] = nil
	}
	var missing []string
	for i, id := range ids {
		if hits[i] != nil {
			out[id] = hits[i]
		} else {
			missing = append(missing, id)
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	gen := s.eventGeneration(q)
	rows, err := eventRowsByID(ctx, q, missing)
	if err != nil {
		return nil, err
	}
	versions := map[string]string{}
	for _, row := range rows {
		version, ok := versions[row.RoomID]
		if !ok {
			if err := q.QueryRow(ctx, `SELECT room_version FROM roomserver_rooms WHERE room_id = $1`, row.RoomID).Scan(&version); err != nil {
				return nil, fmt.Errorf("room of event %s: %w", row.EventID, err)
			}
			versions[row.RoomID] = version
		}
		e, err := parseRow(version, row)
		if err != nil {
			return nil, err
		}
		out[row.EventID] = e
		if tx != nil {
			tx.AfterCommit(func() { s.events.putLoaded(e, gen) })
		} else {
			s.events.putLoaded(e, gen)
		}
	}
	return out, nil
}

// toEvent converts to the API's Event. Content and JSON are the parsed
// event's own bytes (the same bytes as the stored row), not copies: a
// woken /sync renders the same cached events for every listener of a room,
// and copying each event's JSON per request was a quarter of the bytes
// allocated while 200 listeners were served (docs/benchmarks.md, "Memory at
// idle and peak"). Callers only read them (see Event).
func toEvent(e *loadedEvent) *Event {
	return eventOf(e.row, e.pdu.Content(), e.pdu.JSON())
}

// eventOf is the API's Event of a row with its content and JSON.
func eventOf(row *eventRow, content, eventJSON []byte) *Event {
	ev := &Event{
		EventID:        row.EventID,
		RoomID:         row.RoomID,
		Type:           row.Type,
		StateKey:       row.StateKey,
		Sender:         row.Sender,
		OriginServerTS: row.OriginServerTS,
		Depth:          row.Depth,
		StreamPos:      row.NID,
		Content:        json.RawMessage(content),
		JSON:           json.RawMessage(eventJSON),
	}
	if row.Redacts != nil {
		ev.Redacts = *row.Redacts
	}
	if row.Membership != nil {
		ev.Membership = *row.Membership
	}
	if row.RedactedBecause != nil {
		ev.RedactedBecause = *row.RedactedBecause
	}
	return ev
}

// rowFromPDU fills the columns derived from an event.
func rowFromPDU(pdu gomatrixserverlib.PDU) *eventRow {
	row := &eventRow{
		EventID:        pdu.EventID(),
		RoomID:         pdu.RoomID().String(),
		Type:           pdu.Type(),
		StateKey:       pdu.StateKey(),
		Sender:         string(pdu.SenderID()),
		Depth:          pdu.Depth(),
		OriginServerTS: int64(pdu.OriginServerTS()),
		JSON:           string(pdu.JSON()),
	}
	if pdu.Type() == "m.room.member" && pdu.StateKey() != nil {
		if m, err := pdu.Membership(); err == nil {
			row.Membership = &m
		}
	}
	if pdu.Type() == "m.room.redaction" {
		row.Redacts = nullString(redactsOf(pdu))
	}
	return row
}

// redactsOf returns the target of a redaction: the top-level "redacts"
// key, or content.redacts from v11 on.
// Spec: rooms/v11, "Moving the redacts key".
func redactsOf(pdu gomatrixserverlib.PDU) string {
	if r := pdu.Redacts(); r != "" {
		return r
	}
	return gjson.GetBytes(pdu.Content(), "redacts").Str
}

// validateClientJSON enforces the JSON rules events must obey on any
// room version: valid UTF-8, no lone surrogate escapes, no duplicate
// keys, and numbers that are integers in [-(2^53-1), 2^53-1].
// Spec: appendices, "Canonical JSON"; security cases 3 and 4.
func validateClientJSON(raw []byte) error {
	if !utf8.Valid(raw) {
		return mxerr.New(mxerr.BadJSON, "content is not valid UTF-8")
	}
	if err := checkSurrogates(raw); err != nil {
		return err
	}
	return checkClientJSON(raw)
}

// checkClientJSON applies walkJSON's rules {numbers: true} — valid JSON,
// no duplicate keys, nesting at most maxJSONDepth, integers in range —
// in one pass over the bytes with gjson instead of encoding/json's token
// stream, which cost a twentieth of a send's CPU.
// TestClientJSONCheckMatchesDecoder holds both to the same verdicts.
func checkClientJSON(raw []byte) error {
	if !gjson.ValidBytes(raw) {
		return mxerr.New(mxerr.BadJSON, "invalid JSON")
	}
	return checkJSONValue(gjson.ParseBytes(raw), 0)
}

func checkJSONValue(v gjson.Result, depth int) error {
	if depth > maxJSONDepth {
		return mxerr.New(mxerr.BadJSON, "JSON nested too deeply")
	}
	var err error
	switch {
	case v.IsObject():
		var seen map[string]bool
		v.ForEach(func(k, val gjson.Result) bool {
			if seen[k.Str] {
				err = mxerr.New(mxerr.BadJSON, "duplicate key %q", k.Str)
				return false
			}
			if seen == nil {
				seen = make(map[string]bool)
			}
			seen[k.Str] = true
			err = checkJSONValue(val, depth+1)
			return err == nil
		})
	case v.IsArray():
		v.ForEach(func(_, val gjson.Result) bool {
			err = checkJSONValue(val, depth+1)
			return err == nil
		})
	case v.Type == gjson.Number:
		err = checkNumber(v.Raw)
	}
	return err
}

// jsonRules says what walkJSON enforces beyond valid JSON without
// duplicate keys.
type jsonRules struct {
	// numbers: integers in [-(2^53-1), 2^53-1] only.
	numbers bool
	// caseFold: in the top-level object and its "content" (the objects
	// Go decodes into structs), no two keys equal under case folding
	// (encoding/json would read either into the same field), and the
	// keys of topKeys and contentKeys spelt exactly, not in another case.
	// Other objects are decoded into maps, which are case-sensitive.
	caseFold             bool
	topKeys, contentKeys map[string]bool
}

func walkJSON(raw []byte, rules jsonRules) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := checkValue(dec, 0, rules, rules.topKeys); err != nil {
		return err
	}
	if _, err := dec.Token(); err == nil {
		return mxerr.New(mxerr.BadJSON, "trailing data after JSON value")
	}
	return nil
}

const maxJSONDepth = 100

// checkValue checks the next value of dec; exact, when not nil, lists
// the keys that must not appear in another case in this object.
func checkValue(dec *json.Decoder, depth int, rules jsonRules, exact map[string]bool) error {
	if depth > maxJSONDepth {
		return mxerr.New(mxerr.BadJSON, "JSON nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return mxerr.Wrap(err, mxerr.BadJSON, "invalid JSON")
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			seen := map[string]bool{}
			for dec.More() {
				keyTok, err := dec.Token()
				if err != nil {
					return mxerr.Wrap(err, mxerr.BadJSON, "invalid JSON")
				}
				key, _ := keyTok.(string)
				if seen[key] {
					return mxerr.New(mxerr.BadJSON, "duplicate key %q", key)
				}
				if rules.caseFold && exact != nil {
					for other := range seen {
						if strings.EqualFold(other, key) {
							return mxerr.New(mxerr.BadJSON, "keys %q and %q differ only in case", other, key)
						}
					}
					if !exact[key] {
						for want := range exact {
							if strings.EqualFold(want, key) {
								return mxerr.New(mxerr.BadJSON, "key %q must be spelt %q", key, want)
							}
						}
					}
				}
				seen[key] = true
				var next map[string]bool
				if depth == 0 && key == "content" {
					next = rules.contentKeys
				}
				if err := checkValue(dec, depth+1, rules, next); err != nil {
					return err
				}
			}
			_, err = dec.Token()
		case '[':
			for dec.More() {
				if err := checkValue(dec, depth+1, rules, nil); err != nil {
					return err
				}
			}
			_, err = dec.Token()
		}
		if err != nil {
			return mxerr.Wrap(err, mxerr.BadJSON, "invalid JSON")
		}
	case json.Number:
		if rules.numbers {
			return checkNumber(string(t))
		}
	}
	return nil
}

func checkNumber(s string) error {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '.' || c == 'e' || c == 'E' {
			return mxerr.New(mxerr.BadJSON, "number %s is not an integer", s)
		}
	}
	if s == "-0" {
		return mxerr.New(mxerr.BadJSON, "-0 is not allowed")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n > maxSafeInt || n < -maxSafeInt {
		return mxerr.New(mxerr.BadJSON, "integer %s is out of range", s)
	}
	return nil
}

// checkSurrogates rejects \uD800-\uDFFF escapes that are not a proper
// high-low pair: Go would silently turn them into U+FFFD, changing the
// canonical bytes.
func checkSurrogates(raw []byte) error {
	inString := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if !inString {
			if c == '"' {
				inString = true
			}
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			if i+1 >= len(raw) {
				return nil
			}
			if raw[i+1] != 'u' {
				i++
				continue
			}
			r, ok := hex4(raw, i+2)
			if !ok {
				return nil // the decoder reports it
			}
			i += 5
			switch {
			case r >= 0xDC00 && r <= 0xDFFF:
				return mxerr.New(mxerr.BadJSON, "lone low surrogate escape")
			case r >= 0xD800 && r <= 0xDBFF:
				if i+6 >= len(raw) || raw[i+1] != '\\' || raw[i+2] != 'u' {
					return mxerr.New(mxerr.BadJSON, "lone high surrogate escape")
				}
				low, ok := hex4(raw, i+3)
				if !ok || low < 0xDC00 || low > 0xDFFF {
					return mxerr.New(mxerr.BadJSON, "lone high surrogate escape")
				}
				i += 6
			}
		}
	}
	return nil
}

func hex4(raw []byte, at int) (rune, bool) {
	if at+4 > len(raw) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(raw[at:at+4]), 16, 32)
	return rune(v), err == nil
}

// checkEventLimits applies the size limits to a built event.
// Spec: client-server-api, "Size limits".
func checkEventLimits(pdu gomatrixserverlib.PDU) error {
	if n := len(pdu.JSON()); n > maxEventBytes {
		return mxerr.New(mxerr.TooLarge, "event is %d bytes, more than the %d allowed", n, maxEventBytes)
	}
	return CheckPDUFieldLimits(pdu)
}

// CheckPDUFieldLimits applies the per-key size limits to an event of
// any origin. Room versions before 11 count them in codepoints, not
// bytes (gomatrixserverlib's StrictEventByteLimits; Synapse enforced
// codepoints there): an event other servers accepted in such a room
// must be accepted here too, or the room's DAG breaks here (Complement:
// TestOutboundFederationEventSizeGetMissingEvents). Events this server
// makes are held to bytes before they are built (checkFieldLimits).
func CheckPDUFieldLimits(pdu gomatrixserverlib.PDU) error {
	v, err := gomatrixserverlib.GetRoomVersion(pdu.Version())
	if err != nil || v.StrictEventByteLimits() {
		return checkFieldLimits(pdu.Type(), pdu.StateKey(), string(pdu.SenderID()))
	}
	over := func(s string) bool { return utf8.RuneCountInString(s) > maxIDBytes }
	switch {
	case over(pdu.Type()):
		return mxerr.New(mxerr.BadJSON, "event type is longer than %d codepoints", maxIDBytes)
	case pdu.StateKey() != nil && over(*pdu.StateKey()):
		return mxerr.New(mxerr.BadJSON, "state key is longer than %d codepoints", maxIDBytes)
	case over(string(pdu.SenderID())):
		return mxerr.New(mxerr.BadJSON, "sender is longer than %d codepoints", maxIDBytes)
	}
	return nil
}

func checkFieldLimits(eventType string, stateKey *string, sender string) error {
	if len(eventType) > maxIDBytes {
		return mxerr.New(mxerr.BadJSON, "event type is longer than %d bytes", maxIDBytes)
	}
	if stateKey != nil && len(*stateKey) > maxIDBytes {
		return mxerr.New(mxerr.BadJSON, "state key is longer than %d bytes", maxIDBytes)
	}
	if len(sender) > maxIDBytes {
		return mxerr.New(mxerr.BadJSON, "sender is longer than %d bytes", maxIDBytes)
	}
	return nil
}

// buildError maps gomatrixserverlib's build failures to Matrix errors.
func buildError(err error) error {
	var verr gomatrixserverlib.EventValidationError
	if errors.As(err, &verr) {
		if verr.Code == gomatrixserverlib.EventValidationTooLarge {
			return mxerr.Wrap(err, mxerr.TooLarge, "event too large")
		}
		return mxerr.Wrap(err, mxerr.BadJSON, "invalid event")
	}
	var jerr gomatrixserverlib.BadJSONError
	if errors.As(err, &jerr) {
		return mxerr.Wrap(err, mxerr.BadJSON, "invalid event JSON")
	}
	return fmt.Errorf("building event: %w", err)
}
