package roomserver

import (
	"crypto/ed25519"
	"sync"
	"sync/atomic"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// localPDU is an event buildSigned has just written: the PDU methods a
// send calls (type, state key, sender, IDs, content, JSON, depth) answer
// from the fields the event was written from, instead of from a parse of
// the signed bytes back into gomatrixserverlib's event (encoding/json,
// about a twentieth of a send's CPU), and RoomID is validated once rather
// than by a regular expression on every call (the auth-event selection,
// the auth decision and the event row each call it). Every other method
// (content accessors, Redact, Sign, SetUnsigned…, all rare) goes to
// gomatrixserverlib's event of the same bytes, parsed on first use; after
// a method that changes the event in place (Redact, SetUnsignedField,
// Sign), every method does. TestLocalPDUMatchesParsed holds each method
// to the parsed event's answer.
//
// Like gomatrixserverlib's events, a localPDU may be read by many
// goroutines at once but not read while changed in place.
type localPDU struct {
	impl    gomatrixserverlib.IRoomVersion
	eventID string
	raw     []byte // the signed event JSON
	ev      fastEvent
	roomID  spec.RoomID
	// createID is the create event's ID implied by the room ID (room
	// versions whose room ID is their create event's hash), else "".
	createID string

	once   sync.Once
	parsed gomatrixserverlib.PDU
	// changed: a method that changes the event in place has run on
	// parsed, which now answers every method. Atomic, so that a reader
	// that sees it set also sees parsed.
	changed atomic.Bool
}

var _ gomatrixserverlib.PDU = (*localPDU)(nil)

// maxRoomIDBytes is the longest room ID gomatrixserverlib's parse of an
// event accepts (its checkID).
const maxRoomIDBytes = 255

// newLocalPDU returns the localPDU of the signed event raw, written by
// appendEvent from ev (whose content is canonical), or false when ev's
// room ID is not one RoomID can return or one the parse would refuse
// (longer than 255 bytes): the caller then parses, and fails as before.
func newLocalPDU(impl gomatrixserverlib.IRoomVersion, eventID string, raw []byte, ev *fastEvent) (*localPDU, bool) {
	if len(ev.RoomID) > maxRoomIDBytes {
		return nil, false
	}
	roomID, ok := parsedRoomIDs.parse(ev.RoomID)
	if !ok {
		return nil, false
	}
	p := &localPDU{impl: impl, eventID: eventID, raw: raw, ev: *ev, roomID: roomID}
	// Own copies: the builder's slices and state key stay the caller's.
	p.ev.AuthEvents = append([]string{}, ev.AuthEvents...)
	p.ev.PrevEvents = append([]string{}, ev.PrevEvents...)
	if ev.StateKey != nil {
		sk := *ev.StateKey
		p.ev.StateKey = &sk
	}
	p.ev.PrevState = nil
	if impl.DomainlessRoomIDs() {
		// gomatrixserverlib's eventV3.AuthEventIDs.
		p.createID = "$" + ev.RoomID[1:]
	}
	return p, true
}

// roomIDMemo remembers spec.NewRoomID's answer for the room IDs it has
// accepted: every local event parsed its room's ID again, and a room
// version 12 ID (no domain) is checked by a regular expression — half a
// percent of a send's CPU on the 8-sender benchmark (docs/benchmarks.md,
// "perf25"). The answer depends on the string alone, so a remembered one
// is never stale. Refused IDs are not remembered (they fail the send
// anyway). At most maxRoomIDMemo entries; when full it is emptied.
//
// Concurrency: guarded by mu.
type roomIDMemo struct {
	mu  sync.Mutex
	ids map[string]spec.RoomID
}

// maxRoomIDMemo bounds roomIDMemo: rooms with local sends, whose IDs are
// at most maxRoomIDBytes each (~2.5 MiB when full).
const maxRoomIDMemo = 10000

var parsedRoomIDs = roomIDMemo{ids: make(map[string]spec.RoomID)}

// parse returns spec.NewRoomID(id), or false when that fails.
func (m *roomIDMemo) parse(id string) (spec.RoomID, bool) {
	m.mu.Lock()
	parsed, ok := m.ids[id]
	m.mu.Unlock()
	if ok {
		return parsed, true
	}
	fresh, err := spec.NewRoomID(id)
	if err != nil {
		return spec.RoomID{}, false
	}
	m.mu.Lock()
	if len(m.ids) >= maxRoomIDMemo {
		clear(m.ids)
	}
	m.ids[id] = *fresh
	m.mu.Unlock()
	return *fresh, true
}

// full returns gomatrixserverlib's event of the same bytes, parsed once.
func (p *localPDU) full() gomatrixserverlib.PDU {
	p.once.Do(func() {
		pdu, err := p.impl.NewEventFromTrustedJSONWithEventID(p.eventID, p.raw, false)
		if err != nil {
			// buildSigned parsed these very bytes' shape before; a
			// failure here is a bug, as gomatrixserverlib's own
			// unreachable cases are.
			panic("roomserver: local event does not parse: " + err.Error())
		}
		p.parsed = pdu
	})
	return p.parsed
}

func (p *localPDU) EventID() string {
	if p.changed.Load() {
		return p.parsed.EventID()
	}
	return p.eventID
}

func (p *localPDU) StateKey() *string {
	if p.changed.Load() {
		return p.parsed.StateKey()
	}
	return p.ev.StateKey
}

func (p *localPDU) StateKeyEquals(s string) bool {
	if p.changed.Load() {
		return p.parsed.StateKeyEquals(s)
	}
	return p.ev.StateKey != nil && *p.ev.StateKey == s
}

func (p *localPDU) Type() string {
	if p.changed.Load() {
		return p.parsed.Type()
	}
	return p.ev.Type
}

func (p *localPDU) Content() []byte {
	if p.changed.Load() {
		return p.parsed.Content()
	}
	return p.ev.Content
}

func (p *localPDU) Version() gomatrixserverlib.RoomVersion {
	if p.changed.Load() {
		return p.parsed.Version()
	}
	if o, ok := p.impl.(ownedStateVersion); ok {
		// The parse records the version of the implementation it ran,
		// the owned-state version's stable base.
		return o.IRoomVersion.Version()
	}
	return p.impl.Version()
}

func (p *localPDU) RoomID() spec.RoomID {
	if p.changed.Load() {
		return p.parsed.RoomID()
	}
	return p.roomID
}

func (p *localPDU) Redacts() string {
	if p.changed.Load() {
		return p.parsed.Redacts()
	}
	return p.ev.Redacts
}

func (p *localPDU) Redacted() bool {
	if p.changed.Load() {
		return p.parsed.Redacted()
	}
	return false
}

func (p *localPDU) PrevEventIDs() []string {
	if p.changed.Load() {
		return p.parsed.PrevEventIDs()
	}
	return p.ev.PrevEvents
}

func (p *localPDU) OriginServerTS() spec.Timestamp {
	if p.changed.Load() {
		return p.parsed.OriginServerTS()
	}
	return p.ev.OriginServerTS
}

func (p *localPDU) SenderID() spec.SenderID {
	if p.changed.Load() {
		return p.parsed.SenderID()
	}
	return spec.SenderID(p.ev.Sender)
}

func (p *localPDU) Unsigned() []byte {
	if p.changed.Load() {
		return p.parsed.Unsigned()
	}
	return nil // buildSigned writes no "unsigned"
}

func (p *localPDU) Depth() int64 {
	if p.changed.Load() {
		return p.parsed.Depth()
	}
	return p.ev.Depth
}

func (p *localPDU) JSON() []byte {
	if p.changed.Load() {
		return p.parsed.JSON()
	}
	return p.raw
}

// MarshalJSON is the event JSON, as gomatrixserverlib's events marshal.
func (p *localPDU) MarshalJSON() ([]byte, error) {
	return p.JSON(), nil
}

func (p *localPDU) AuthEventIDs() []string {
	if p.changed.Load() {
		return p.parsed.AuthEventIDs()
	}
	if p.createID != "" {
		// A new slice each call, as gomatrixserverlib's eventV3 returns.
		return append([]string{p.createID}, p.ev.AuthEvents...)
	}
	return p.ev.AuthEvents
}

func (p *localPDU) PrevStateEventIDs() []string {
	if p.changed.Load() {
		return p.parsed.PrevStateEventIDs()
	}
	return nil // "prev_state_events" is never written
}

// The methods below read or change what the fields above do not hold:
// gomatrixserverlib's event answers them.

func (p *localPDU) JoinRule() (string, error) { return p.full().JoinRule() }

func (p *localPDU) HistoryVisibility() (gomatrixserverlib.HistoryVisibility, error) {
	return p.full().HistoryVisibility()
}

func (p *localPDU) Membership() (string, error) { return p.full().Membership() }

func (p *localPDU) PowerLevels() (*gomatrixserverlib.PowerLevelContent, error) {
	return p.full().PowerLevels()
}

func (p *localPDU) ToHeaderedJSON() ([]byte, error) { return p.full().ToHeaderedJSON() }

func (p *localPDU) IsSticky(now, received time.Time) bool { return p.full().IsSticky(now, received) }

func (p *localPDU) StickyEndTime(received time.Time) time.Time {
	return p.full().StickyEndTime(received)
}

func (p *localPDU) SetUnsigned(unsigned any) (gomatrixserverlib.PDU, error) {
	return p.full().SetUnsigned(unsigned)
}

func (p *localPDU) Redact() {
	p.full().Redact()
	p.changed.Store(true)
}

func (p *localPDU) SetUnsignedField(path string, value any) error {
	err := p.full().SetUnsignedField(path, value)
	p.changed.Store(true)
	return err
}

// Sign: gomatrixserverlib's events add the signature to themselves and
// return themselves.
func (p *localPDU) Sign(signingName string, keyID gomatrixserverlib.KeyID, privateKey ed25519.PrivateKey) gomatrixserverlib.PDU {
	out := p.full().Sign(signingName, keyID, privateKey)
	p.changed.Store(true)
	return out
}
