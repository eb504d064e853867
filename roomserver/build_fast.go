package roomserver

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/edsign"
)

// Building a local event the way gomatrixserverlib's EventBuilder.Build
// does costs about a third of a send's CPU: it marshals the event, then
// parses and re-marshals it for the content hash, again to redact and
// sign, again to canonicalise, and redacts and canonicalises once more
// for the reference hash (the event ID). buildSigned produces the same
// bytes with one canonicalisation of the event and one of its redacted
// form, which serves both the signature and the event ID: both are
// computed over the redacted event without "signatures" and "unsigned"
// (server-server-api, "Signing events" and "Calculating the reference
// hash for an event"). TestBuildSignedMatchesBuilder checks, byte for
// byte, that the output is what EventBuilder.Build makes but for the
// signature's value, which it verifies: the signer uses a precomputed
// random nonce where Build's ed25519.Sign derives it from the message
// (RFC 8032 §5.1.6; internal/edsign says why that is as safe, and the
// event ID and hashes never cover "signatures"). For the usual
// event (plain strings outside the content) the members are written in
// their sorted order from the fields (appendEvent), the redacted form too
// for types whose content redaction empties, and the result is a
// localPDU answering from those fields, not a parse of the bytes.

// fastEvent is an event without hashes and signatures, before
// canonicalisation (CanonicalJSON sorts the keys).
type fastEvent struct {
	AuthEvents     []string        `json:"auth_events"`
	Content        json.RawMessage `json:"content"`
	Depth          int64           `json:"depth"`
	Origin         string          `json:"origin"`
	OriginServerTS spec.Timestamp  `json:"origin_server_ts"`
	PrevEvents     []string        `json:"prev_events"`
	PrevState      *[]string       `json:"prev_state,omitempty"`
	Redacts        string          `json:"redacts,omitempty"`
	RoomID         string          `json:"room_id,omitempty"`
	Sender         string          `json:"sender"`
	StateKey       *string         `json:"state_key,omitempty"`
	Type           string          `json:"type"`
}

// errNoFastPath sends a builder to EventBuilder.Build.
var errNoFastPath = errors.New("event needs the general builder")

// buildSigned builds, hashes and signs eb as EventBuilder.Build would for
// the event shape every local send after room creation has (room
// versions with hash event IDs and no state DAG, no preset signatures or
// unsigned data, not a create event); errNoFastPath for any other.
func buildSigned(impl gomatrixserverlib.IRoomVersion, eb *gomatrixserverlib.EventBuilder, now time.Time, origin spec.ServerName, keyID gomatrixserverlib.KeyID, signer *edsign.Signer) (gomatrixserverlib.PDU, error) {
	prev, prevOK := eb.PrevEvents.([]string)
	auth, authOK := eb.AuthEvents.([]string)
	var idEncoding *base64.Encoding
	switch impl.EventIDFormat() {
	case gomatrixserverlib.EventIDFormatV2:
		idEncoding = base64.RawStdEncoding
	case gomatrixserverlib.EventIDFormatV3:
		idEncoding = base64.RawURLEncoding
	}
	if idEncoding == nil || impl.EventFormat() != gomatrixserverlib.EventFormatV2 || impl.StateDAGs() ||
		!prevOK || !authOK || eb.PrevStateEvents != nil || len(eb.Signature) > 0 || len(eb.Unsigned) > 0 ||
		eb.Type == spec.MRoomCreate || len(eb.Content) == 0 {
		return nil, errNoFastPath
	}
	ev := fastEvent{
		AuthEvents: auth, Content: json.RawMessage(eb.Content), Depth: eb.Depth,
		Origin: string(origin), OriginServerTS: spec.AsTimestamp(now), PrevEvents: prev,
		Redacts: eb.Redacts, RoomID: eb.RoomID, Sender: eb.SenderID, StateKey: eb.StateKey, Type: eb.Type,
	}
	if ev.PrevEvents == nil {
		ev.PrevEvents = []string{}
	}
	if ev.AuthEvents == nil {
		ev.AuthEvents = []string{}
	}
	if eb.StateKey != nil {
		// Build writes the legacy empty "prev_state" on state events.
		ev.PrevState = &[]string{}
	}
	unhashed, assembled, err := canonicalEvent(impl, &ev)
	if err != nil {
		return nil, err
	}
	// Spec: server-server-api, "Calculating the content hash for an
	// event": the canonical event without unsigned, signatures, hashes.
	contentHash := sha256.Sum256(unhashed)
	hashes := `"hashes":{"sha256":"` + base64.RawStdEncoding.EncodeToString(contentHash[:]) + `"},`
	unhashedLen := len(unhashed)
	var redacted, hashed []byte
	ok := false
	if keep := keptTopLevelKeys(impl); assembled && keep != nil && !contentKeepingTypes[eb.Type] {
		// What redactStripped would cut from the hashed event, written
		// directly, into unhashed's buffer (unhashed is not read again:
		// the signed event is written from ev below).
		redacted, ok = appendEventKeeping(unhashed[:0], &ev, hashes, "", keep), true
	} else {
		if assembled {
			hashed = appendEvent(make([]byte, 0, len(unhashed)+len(hashes)), &ev, hashes, "")
		} else if hashed, err = insertAfterKey(unhashed, "depth", hashes); err != nil {
			// "hashes" sorts right after "depth", the last key before it.
			return nil, err
		}
		redacted, ok = redactStripped(impl, eb.Type, hashed)
	}
	if !ok {
		if redacted, err = impl.RedactEventJSON(hashed); err != nil {
			return nil, err
		}
		if redacted, err = gomatrixserverlib.CanonicalJSON(redacted); err != nil {
			return nil, err
		}
	}
	// Spec: appendices, "Signing JSON"; server-server-api, "Signing
	// Events": the signature of the redacted event's canonical JSON,
	// made with a nonce computed before the request came (edsign), so
	// only a hash and a scalar multiply-add are left for it.
	signature := signer.Sign(redacted)
	reference := sha256.Sum256(redacted)
	eventID := "$" + idEncoding.EncodeToString(reference[:])
	var signed []byte
	assembledSigned := assembled && plainJSONString(string(origin)) && plainJSONString(string(keyID))
	if assembledSigned {
		sigs := `"signatures":{"` + string(origin) + `":{"` + string(keyID) + `":"` + base64.RawStdEncoding.EncodeToString(signature) + `"}},`
		signed = appendEvent(make([]byte, 0, unhashedLen+len(hashes)+len(sigs)), &ev, hashes, sigs)
	} else {
		if hashed == nil {
			hashed = appendEvent(make([]byte, 0, unhashedLen+len(hashes)), &ev, hashes, "")
		}
		sigs, err := json.Marshal(map[string]map[string]string{
			string(origin): {string(keyID): base64.RawStdEncoding.EncodeToString(signature)},
		})
		if err != nil {
			return nil, err
		}
		// "signatures" sorts right after "sender" (then "state_key", "type").
		if signed, err = insertAfterKey(hashed, "sender", `"signatures":`+string(sigs)+`,`); err != nil {
			return nil, err
		}
	}
	var pdu gomatrixserverlib.PDU
	if assembledSigned {
		// Written by appendEvent from ev: its fields are the event's.
		if local, ok := newLocalPDU(impl, eventID, signed, &ev); ok {
			pdu = local
		}
	}
	if pdu == nil {
		if pdu, err = impl.NewEventFromTrustedJSONWithEventID(eventID, signed, false); err != nil {
			return nil, err
		}
	}
	if err := gomatrixserverlib.CheckFields(pdu); err != nil {
		return nil, err
	}
	return pdu, nil
}

// canonicalEvent returns the canonical JSON of ev (its content as the
// client sent it), and whether it was assembled by appendEvent: when
// every string outside the content is plain (plainJSONString), only the
// content needs canonicalising, and the members are written in their
// sorted order around it, which is what canonicalising the whole event
// yields (the content is canonicalised as a value of its own either way,
// and plain strings encode the same in both). Otherwise the event is
// marshalled and canonicalised whole. Either way numbers outside the
// room version's range are refused, as Build's EnforcedCanonicalJSON
// refuses them.
func canonicalEvent(impl gomatrixserverlib.IRoomVersion, ev *fastEvent) ([]byte, bool, error) {
	if eventStringsPlain(ev) && ev.Depth >= -maxSafeInt && ev.Depth <= maxSafeInt &&
		uint64(ev.OriginServerTS) <= maxSafeInt {
		content, err := canonicalContent(impl, ev.Content)
		if err != nil {
			return nil, false, err
		}
		ev.Content = content
		return appendEvent(make([]byte, 0, 256+len(content)), ev, "", ""), true, nil
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return nil, false, err
	}
	out, err := gomatrixserverlib.EnforcedCanonicalJSON(raw, impl.Version())
	return out, false, err
}

// appendEvent appends ev as canonical JSON, with the members hashes and
// sigs (each "key":value, with a trailing comma, or empty) in their
// sorted places. ev's content must be canonical and its strings plain.
func appendEvent(dst []byte, ev *fastEvent, hashes, sigs string) []byte {
	return appendEventKeeping(dst, ev, hashes, sigs, nil)
}

// appendEventKeeping is appendEvent writing only the top-level members
// keep names, and the content as {} (a redaction that empties it), or
// every member as it is when keep is nil.
func appendEventKeeping(dst []byte, ev *fastEvent, hashes, sigs string, keep map[string]bool) []byte {
	kept := func(key string) bool { return keep == nil || keep[key] }
	str := func(key, v string) {
		if !kept(key) {
			return
		}
		dst = append(dst, '"')
		dst = append(dst, key...)
		dst = append(dst, `":"`...)
		dst = append(dst, v...)
		dst = append(dst, `",`...)
	}
	list := func(key string, ids []string) {
		if !kept(key) {
			return
		}
		dst = append(dst, '"')
		dst = append(dst, key...)
		dst = append(dst, `":[`...)
		for i, id := range ids {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, '"')
			dst = append(dst, id...)
			dst = append(dst, '"')
		}
		dst = append(dst, `],`...)
	}
	dst = append(dst, '{')
	list("auth_events", ev.AuthEvents)
	if keep == nil {
		dst = append(dst, `"content":`...)
		dst = append(dst, ev.Content...)
		dst = append(dst, ',')
	} else if keep["content"] {
		dst = append(dst, `"content":{},`...)
	}
	if kept("depth") {
		dst = append(dst, `"depth":`...)
		dst = strconv.AppendInt(dst, ev.Depth, 10)
		dst = append(dst, ',')
	}
	if kept("hashes") {
		dst = append(dst, hashes...)
	}
	str("origin", ev.Origin)
	if kept("origin_server_ts") {
		dst = append(dst, `"origin_server_ts":`...)
		dst = strconv.AppendInt(dst, int64(ev.OriginServerTS), 10)
		dst = append(dst, ',')
	}
	list("prev_events", ev.PrevEvents)
	if ev.PrevState != nil {
		list("prev_state", *ev.PrevState)
	}
	if ev.Redacts != "" {
		str("redacts", ev.Redacts)
	}
	if ev.RoomID != "" {
		str("room_id", ev.RoomID)
	}
	str("sender", ev.Sender)
	if kept("signatures") {
		dst = append(dst, sigs...)
	}
	if ev.StateKey != nil {
		str("state_key", *ev.StateKey)
	}
	str("type", ev.Type)
	if dst[len(dst)-1] == ',' {
		dst = dst[:len(dst)-1]
	}
	return append(dst, '}')
}

// eventStringsPlain reports whether every string of ev outside its
// content is plain.
func eventStringsPlain(ev *fastEvent) bool {
	for _, ids := range [][]string{ev.AuthEvents, ev.PrevEvents} {
		for _, id := range ids {
			if !plainJSONString(id) {
				return false
			}
		}
	}
	if ev.PrevState != nil && len(*ev.PrevState) > 0 {
		return false
	}
	if ev.StateKey != nil && !plainJSONString(*ev.StateKey) {
		return false
	}
	return plainJSONString(ev.Origin) && plainJSONString(ev.Redacts) && plainJSONString(ev.RoomID) &&
		plainJSONString(ev.Sender) && plainJSONString(ev.Type)
}

// plainJSONString reports whether s is printable ASCII without a quote
// or a backslash: such a string is written as itself between quotes by canonical
// JSON and by encoding/json alike (appendEvent writes it so).
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// insertAfterKey returns obj (a canonical JSON object) with text inserted
// after the top-level member key and its following comma. key must be
// followed by another member.
func insertAfterKey(obj []byte, key, text string) ([]byte, error) {
	v := gjson.GetBytes(obj, key)
	end := v.Index + len(v.Raw)
	if !v.Exists() || v.Index == 0 || end >= len(obj) || obj[end] != ',' {
		return nil, errNoFastPath
	}
	end++
	out := make([]byte, 0, len(obj)+len(text))
	out = append(out, obj[:end]...)
	out = append(out, text...)
	return append(out, obj[end:]...), nil
}

// contentKeepingTypes are the event types whose content some room
// version's redaction algorithm keeps in part (the union over room
// versions 1–12; rooms/v1 to rooms/v11, "Redactions"). Every other type
// loses its whole content.
var contentKeepingTypes = map[string]bool{
	"m.room.member": true, "m.room.create": true, "m.room.join_rules": true, "m.room.power_levels": true,
	"m.room.aliases": true, "m.room.history_visibility": true, "m.room.redaction": true,
}

// redactionProbeKeys are the top-level keys a probe event carries to learn
// which keys a room version's redaction keeps: every key buildSigned
// writes and the others the algorithms name.
var redactionProbeKeys = []string{"auth_events", "content", "depth", "event_id", "hashes", "membership",
	"origin", "origin_server_ts", "prev_events", "prev_state", "redacts", "room_id", "sender",
	"signatures", "state_key", "type", "unsigned"}

// redactionKeeps caches, per room version, the top-level keys its
// redaction keeps (nil: the version is not probed successfully, use the
// general algorithm). Filled once per version by keptTopLevelKeys.
var redactionKeeps sync.Map // room version -> map[string]bool

// keptTopLevelKeys learns from gomatrixserverlib which top-level keys
// impl's redaction algorithm keeps, by redacting a probe event of a type
// whose content it must empty. nil when the probe does not behave so.
func keptTopLevelKeys(impl gomatrixserverlib.IRoomVersion) map[string]bool {
	if v, ok := redactionKeeps.Load(impl.Version()); ok {
		return v.(map[string]bool)
	}
	probe := map[string]any{}
	for _, k := range redactionProbeKeys {
		probe[k] = "v"
	}
	probe["content"] = map[string]any{"body": "b"}
	probe["type"] = "org.example.probe"
	var keep map[string]bool
	raw, err := json.Marshal(probe)
	if err == nil {
		if out, err := impl.RedactEventJSON(raw); err == nil {
			var got map[string]json.RawMessage
			if json.Unmarshal(out, &got) == nil && string(got["content"]) == "{}" {
				keep = map[string]bool{}
				for k := range got {
					keep[k] = true
				}
			}
		}
	}
	redactionKeeps.Store(impl.Version(), keep)
	return keep
}

// redactStripped returns the canonical redacted form of the canonical
// event hashed, of type typ, without parsing it into maps: when typ's
// content is emptied by redaction in every room version, redaction keeps
// the top-level keys impl keeps (learnt by keptTopLevelKeys) and
// replaces content with {}; dropping members of a canonical object and
// emptying one leaves it canonical. false when that does not apply (a
// content-keeping type, an unprobed version, a key the probe did not
// cover): the caller then runs the general algorithm.
// TestBuildSignedMatchesBuilder and TestRedactStrippedMatchesAlgorithm
// hold it to gomatrixserverlib's bytes.
func redactStripped(impl gomatrixserverlib.IRoomVersion, typ string, hashed []byte) ([]byte, bool) {
	if contentKeepingTypes[typ] {
		return nil, false
	}
	keep := keptTopLevelKeys(impl)
	if keep == nil {
		return nil, false
	}
	out := make([]byte, 0, len(hashed))
	out = append(out, '{')
	ok := true
	gjson.ParseBytes(hashed).ForEach(func(k, v gjson.Result) bool {
		if !slices.Contains(redactionProbeKeys, k.Str) {
			ok = false
			return false
		}
		if !keep[k.Str] {
			return true
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, k.Raw...)
		out = append(out, ':')
		if k.Str == "content" {
			out = append(out, "{}"...)
		} else {
			out = append(out, v.Raw...)
		}
		return true
	})
	if !ok {
		return nil, false
	}
	return append(out, '}'), true
}

// stateAuthEvents is the AuthEventProvider build gives
// EventBuilder.AddAuthEvents: gomatrixserverlib.AuthEvents over the
// chosen state events, without the room ID AuthEvents.AddEvent parses
// (by regular expression) from every event for Valid, which selecting
// auth events never calls; Valid parses them when asked.
type stateAuthEvents struct {
	events []gomatrixserverlib.PDU
}

var _ gomatrixserverlib.AuthEventProvider = (*stateAuthEvents)(nil)

// newStateAuthEvents is gomatrixserverlib.NewAuthEvents(events): the
// same error for an event without a state key, and the last event of a
// (type, state key) wins.
func newStateAuthEvents(events []gomatrixserverlib.PDU) (*stateAuthEvents, error) {
	for _, e := range events {
		if e.StateKey() == nil {
			return nil, fmt.Errorf("AddEvent: event %q does not have a state key", e.Type())
		}
	}
	return &stateAuthEvents{events: events}, nil
}

func (a *stateAuthEvents) find(typ, stateKey string) gomatrixserverlib.PDU {
	for i := len(a.events) - 1; i >= 0; i-- {
		if e := a.events[i]; e.Type() == typ && *e.StateKey() == stateKey {
			return e
		}
	}
	return nil
}

func (a *stateAuthEvents) Create() (gomatrixserverlib.PDU, error) {
	return a.find(spec.MRoomCreate, ""), nil
}

func (a *stateAuthEvents) JoinRules() (gomatrixserverlib.PDU, error) {
	return a.find(spec.MRoomJoinRules, ""), nil
}

func (a *stateAuthEvents) PowerLevels() (gomatrixserverlib.PDU, error) {
	return a.find(spec.MRoomPowerLevels, ""), nil
}

func (a *stateAuthEvents) Member(stateKey spec.SenderID) (gomatrixserverlib.PDU, error) {
	return a.find(spec.MRoomMember, string(stateKey)), nil
}

func (a *stateAuthEvents) ThirdPartyInvite(stateKey string) (gomatrixserverlib.PDU, error) {
	return a.find(spec.MRoomThirdPartyInvite, stateKey), nil
}

// Valid reports whether every event is in one room, as AuthEvents does.
func (a *stateAuthEvents) Valid() bool {
	for _, e := range a.events {
		if e.RoomID().String() != a.events[0].RoomID().String() {
			return false
		}
	}
	return true
}
