package roomserver

import (
	"reflect"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Remembered auth decisions.
//
// gomatrixserverlib.Allowed parses the create, power levels and member
// contents of the auth events on every call (encoding/json), which was
// the largest part of a message's auth check. For the events every send
// of a message is — no state key, and a type other than the five with
// rules of their own (create, aliases, member, power levels, redaction)
// — the auth rules (rooms/vN, "Authorization rules": the create event's
// room and m.federate, the sender's membership, the sender's power level
// against the level required for the type; gomatrixserverlib's
// commonChecks) read nothing of the event but its room ID, sender and
// type, and nothing else but the auth events. So the decision is a
// function of those three strings and the auth events.
//
// The auth events are keyed by the identity of their parsed objects
// (pointers, held by the key, so an address is never reused while an
// entry names it) together with their redaction state: a parsed event's
// content changes only by its Redact method, which sets Redacted. An
// event read again (another parse) is another object, so a state
// change — new power levels, a leave — is a new key, never a stale hit.
// Only "allowed" is remembered: a refusal's error names the refused
// event, and refusals are rare on this path; they are always decided
// afresh. The cache is bounded and emptied when full.

// maxAuthDecisions bounds the remembered decisions.
const maxAuthDecisions = 4096

// maxKeyedAuthEvents is the most auth events a remembered decision has
// (a message's are create, power levels and the sender's member event).
const maxKeyedAuthEvents = 4

type authEventKey struct {
	pdu      gomatrixserverlib.PDU // a pointer: compared by identity
	redacted bool
}

type authDecisionKey struct {
	roomID, sender, eventType, version string
	n                                  int
	auth                               [maxKeyedAuthEvents]authEventKey
}

type authDecisionCache struct {
	mu      sync.Mutex
	allowed map[authDecisionKey]struct{} // guarded by mu
}

// authDecisions is process-wide: its keys are object identities, so
// entries of different servers in one process never meet.
var authDecisions authDecisionCache

// authDecisionKeyFor returns the key of pdu's decision against
// authEvents, or false when the decision is not one to remember.
func authDecisionKeyFor(pdu gomatrixserverlib.PDU, authEvents []gomatrixserverlib.PDU) (authDecisionKey, bool) {
	var k authDecisionKey
	if pdu.StateKey() != nil || len(authEvents) == 0 || len(authEvents) > maxKeyedAuthEvents {
		return k, false
	}
	switch pdu.Type() {
	case spec.MRoomCreate, spec.MRoomAliases, spec.MRoomMember, spec.MRoomPowerLevels, spec.MRoomRedaction:
		return k, false
	}
	for i, ae := range authEvents {
		if ae == nil || reflect.TypeOf(ae).Kind() != reflect.Pointer {
			return k, false
		}
		k.auth[i] = authEventKey{pdu: ae, redacted: ae.Redacted()}
	}
	k.n = len(authEvents)
	k.roomID = pdu.RoomID().String()
	k.sender = string(pdu.SenderID())
	k.eventType = pdu.Type()
	k.version = string(pdu.Version())
	return k, true
}

func (c *authDecisionCache) isAllowed(k authDecisionKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.allowed[k]
	return ok
}

func (c *authDecisionCache) rememberAllowed(k authDecisionKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.allowed == nil || len(c.allowed) >= maxAuthDecisions {
		c.allowed = make(map[authDecisionKey]struct{})
	}
	c.allowed[k] = struct{}{}
}
