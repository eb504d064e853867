package roomserver

import (
	"errors"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// pduTopKeys are the top-level keys of a PDU (all room versions).
// Spec: server-server-api, "PDUs"; rooms/v1 "Event format".
var pduTopKeys = keySet("auth_events", "content", "depth", "event_id", "hashes", "origin", "origin_server_ts",
	"prev_events", "prev_state", "redacts", "room_id", "sender", "signatures", "state_key", "type", "unsigned", "membership")

// authContentKeys are the content keys the auth rules and redaction
// algorithm read, for the event types whose content they read.
var authContentKeys = map[string]map[string]bool{
	"m.room.create": keySet("creator", "room_version", "additional_creators", "m.federate", "predecessor"),
	"m.room.member": keySet("membership", "join_authorised_via_users_server", "third_party_invite"),
	"m.room.power_levels": keySet("ban", "events", "events_default", "invite", "kick", "notifications", "redact",
		"state_default", "users", "users_default"),
	"m.room.join_rules":         keySet("join_rule", "allow"),
	"m.room.history_visibility": keySet("history_visibility"),
	"m.room.third_party_invite": keySet("public_key", "public_keys", "display_name", "key_validity_url"),
	"m.room.redaction":          keySet("redacts"),
	"m.room.server_acl":         keySet("allow", "deny", "allow_ip_literals"),
}

func keySet(keys ...string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// CheckPDUJSON refuses a PDU whose bytes other servers could read
// differently from us (security case 4): invalid UTF-8, lone surrogate
// escapes (Go turns them into U+FFFD), duplicate keys (Go keeps the last
// one, others may keep the first), and keys that differ from each other
// or from a key the protocol defines only in case ("Membership"):
// encoding/json matches struct fields case-insensitively, so
// gomatrixserverlib would read {"Membership":"join"} as a join that the
// spec, and every other server, sees as having no membership at all.
// Number rules are the room version's (CheckCanonicalJSON).
func CheckPDUJSON(raw []byte) error {
	if !utf8.Valid(raw) {
		return mxerr.New(mxerr.BadJSON, "PDU is not valid UTF-8")
	}
	if err := checkSurrogates(raw); err != nil {
		return err
	}
	// Other events' content is left alone: Synapse lets a client send
	// {"a":1,"A":2}, and refusing it would split us from the room.
	return walkJSON(raw, jsonRules{caseFold: true, topKeys: pduTopKeys,
		contentKeys: authContentKeys[gjson.GetBytes(raw, "type").Str]})
}

// parseUntrustedPDU is CheckPDUJSON, then the room version's parser.
func parseUntrustedPDU(impl gomatrixserverlib.IRoomVersion, raw []byte) (gomatrixserverlib.PDU, error) {
	if err := CheckPDUJSON(raw); err != nil {
		return nil, err
	}
	return NewUntrustedPDU(impl, raw)
}

// NewUntrustedPDU parses a PDU from another server. gomatrixserverlib
// returns an event together with a "persistable" validation error when
// a type or state key is within the codepoint limit of room versions
// before 11 but over 255 bytes: such an event is kept (its size is
// checked by CheckPDUFieldLimits), as other servers kept it.
func NewUntrustedPDU(impl gomatrixserverlib.IRoomVersion, raw []byte) (gomatrixserverlib.PDU, error) {
	pdu, err := guard("parsing PDU", func() (gomatrixserverlib.PDU, error) { return impl.NewEventFromUntrustedJSON(raw) })
	var verr gomatrixserverlib.EventValidationError
	if err != nil && pdu != nil && errors.As(err, &verr) && verr.Persistable {
		return pdu, nil
	}
	return pdu, err
}
