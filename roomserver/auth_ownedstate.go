package roomserver

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Owned state: MSC3757 ("Restricting who can overwrite a state event"),
// offered as the unstable room versions org.matrix.msc3757.10 and
// org.matrix.msc3757.11 — room versions 10 and 11 with the MSC's rule 8
// in place of theirs. They are never the default and are listed as
// unstable.
//
// Rule 8 of v10/v11 ("If the event has a state_key that starts with an @
// and does not match the sender, reject") becomes, for a state_key that
// starts with @:
//
//  1. the leading user ID — the state_key up to the first _ after its
//     first : (or all of it) — must be a valid user ID;
//  2. what follows the leading user ID must be at most 256 bytes;
//  3. if the leading user ID is not the sender, the sender's power level
//     must be greater than that user's.
//
// The MSC also raises the state_key limit to 511 bytes. gomatrixserverlib
// refuses state keys over 255 bytes when it parses or builds any event,
// so these versions keep the 255-byte limit.
//
// gomatrixserverlib cannot express the new rule, and has no room version
// of its own for it. Each owned-state version is registered with it as
// the stable version it extends under the new identifier, so it parses,
// builds, redacts and resolves state as that version (its events report
// the base version); ownedStateCheck applies the new rule 8 and then
// shows gomatrixserverlib the event with its own sender as the state
// key, which passes the old rule 8 and leaves every other rule as it was.

// ownedStateVersions maps each owned-state room version to the stable
// version it extends.
var ownedStateVersions = map[string]string{
	"org.matrix.msc3757.10": "10",
	"org.matrix.msc3757.11": "11",
}

// UnstableRoomVersions lists the unstable room versions a room may be
// created in or joined with (never the default), sorted.
func UnstableRoomVersions() []string {
	return slices.Sorted(maps.Keys(ownedStateVersions))
}

// ownedStateVersion is an owned-state room version as gomatrixserverlib
// sees it: its base version under another identifier, unstable.
type ownedStateVersion struct {
	gomatrixserverlib.IRoomVersion
	id gomatrixserverlib.RoomVersion
}

func (v ownedStateVersion) Version() gomatrixserverlib.RoomVersion { return v.id }
func (v ownedStateVersion) Stable() bool                           { return false }

// gomatrixserverlib's version table is global; it is written once, here,
// before any goroutine can read it.
func init() {
	for id, base := range ownedStateVersions {
		impl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(base))
		gomatrixserverlib.SetRoomVersion(ownedStateVersion{IRoomVersion: impl, id: gomatrixserverlib.RoomVersion(id)})
	}
}

// ownedStateRoom reports whether the room of these auth events is an
// owned-state room, by the room_version of its create event.
func ownedStateRoom(provider gomatrixserverlib.AuthEventProvider) (create gomatrixserverlib.PDU, ok bool) {
	create, err := provider.Create()
	if err != nil || create == nil {
		return nil, false
	}
	var c struct {
		RoomVersion string `json:"room_version"`
	}
	if json.Unmarshal(create.Content(), &c) != nil {
		return nil, false
	}
	_, ok = ownedStateVersions[c.RoomVersion]
	return create, ok
}

// leadingUserID is the user ID a state key starting with @ belongs to
// (MSC3757 rule 8.1.1), or an error when that prefix is not a valid user
// ID. Historical user IDs are valid, as they are for senders.
func leadingUserID(stateKey string) (string, error) {
	prefix := stateKey
	if colon := strings.IndexByte(stateKey, ':'); colon >= 0 {
		if under := strings.IndexByte(stateKey[colon+1:], '_'); under >= 0 {
			prefix = stateKey[:colon+1+under]
		}
	}
	if _, err := spec.NewUserID(prefix, true); err != nil {
		return "", fmt.Errorf("state key %q does not start with a valid user ID: %v", stateKey, err)
	}
	if len(stateKey)-len(prefix) > 256 {
		return "", fmt.Errorf("state key %q has more than 256 bytes after its user ID", stateKey)
	}
	return prefix, nil
}

// ownedStateCheck applies MSC3757 rule 8 to pdu when its room is an
// owned-state room, and returns the event gomatrixserverlib is to check
// in its place (pdu itself when the rule does not apply).
func ownedStateCheck(pdu gomatrixserverlib.PDU, provider gomatrixserverlib.AuthEventProvider) (gomatrixserverlib.PDU, error) {
	stateKey := pdu.StateKey()
	// m.room.member and m.room.create have their own rules, decided
	// before rule 8.
	if stateKey == nil || !strings.HasPrefix(*stateKey, "@") || pdu.Type() == spec.MRoomMember || pdu.Type() == spec.MRoomCreate {
		return pdu, nil
	}
	create, ok := ownedStateRoom(provider)
	if !ok {
		return pdu, nil
	}
	owner, err := leadingUserID(*stateKey)
	if err != nil {
		return nil, err
	}
	sender := string(pdu.SenderID())
	if owner != sender {
		senderLevel, err := ownedStatePowerLevel(provider, create, sender)
		if err != nil {
			return nil, err
		}
		ownerLevel, err := ownedStatePowerLevel(provider, create, owner)
		if err != nil {
			return nil, err
		}
		if senderLevel <= ownerLevel {
			return nil, fmt.Errorf("%s (power %d) may not overwrite state owned by %s (power %d)", sender, senderLevel, owner, ownerLevel)
		}
	}
	return stateKeyView{PDU: pdu, stateKey: sender}, nil
}

// ownedStatePowerLevel is userID's power level: from m.room.power_levels,
// or without one 100 for the room's creator and 0 for everyone else.
// Spec: rooms/v10 and v11, "Authorization rules" (power levels note);
// client-server-api, "m.room.power_levels".
func ownedStatePowerLevel(provider gomatrixserverlib.AuthEventProvider, create gomatrixserverlib.PDU, userID string) (int64, error) {
	pl, err := provider.PowerLevels()
	if err != nil {
		return 0, err
	}
	if pl != nil {
		content, err := gomatrixserverlib.NewPowerLevelContentFromEvent(pl)
		if err != nil {
			return 0, err
		}
		return content.UserLevel(spec.SenderID(userID)), nil
	}
	creator := string(create.SenderID()) // v11: the create event's sender
	var c struct {
		RoomVersion string `json:"room_version"`
		Creator     string `json:"creator"`
	}
	if json.Unmarshal(create.Content(), &c) == nil && ownedStateVersions[c.RoomVersion] == "10" {
		creator = c.Creator // v10: content.creator
	}
	if userID == creator {
		return 100, nil
	}
	return 0, nil
}

// checkOwnedStateKey refuses, with M_BAD_JSON, a local state event whose
// state key starts with @ without a valid leading user ID in an
// owned-state room: such an event can never pass rule 8, and the request
// itself is malformed.
func checkOwnedStateKey(version string, eventType string, stateKey *string) error {
	if _, ok := ownedStateVersions[version]; !ok || stateKey == nil || !strings.HasPrefix(*stateKey, "@") || eventType == spec.MRoomMember {
		return nil
	}
	if _, err := leadingUserID(*stateKey); err != nil {
		return mxerr.Wrap(err, mxerr.BadJSON, "state key neither is a user ID nor starts with one followed by _")
	}
	return nil
}

// stateKeyView is an event seen with another state key. It is only ever
// handed to gomatrixserverlib's auth check, never stored or sent.
type stateKeyView struct {
	gomatrixserverlib.PDU
	stateKey string
}

func (v stateKeyView) StateKey() *string            { return &v.stateKey }
func (v stateKeyView) StateKeyEquals(s string) bool { return v.stateKey == s }
