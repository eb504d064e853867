package roomserver

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// The m.room.member invite rule for third-party invites, enforced in
// full by the roomserver on every event it authorises.
//
// Spec: rooms/v1 … v12, "Authorization rules", m.room.member, membership
// invite, content with third_party_invite (rule 4.4.1 in v8+):
//
//  1. If the target user is banned, reject.
//  2. If content.third_party_invite has no signed property, reject.
//  3. If signed has no mxid and token, reject.
//  4. If mxid does not match state_key, reject.
//  5. If there is no m.room.third_party_invite with state_key token, reject.
//  6. If sender is not the sender of that m.room.third_party_invite, reject.
//  7. If any signature in signed matches any of its public keys (the
//     legacy public_key and every public_keys entry), allow.
//  8. Otherwise, reject.
//
// The pinned gomatrixserverlib checks 4, 5 and 7 with public_keys only:
// it skips 1 and 6, never tries the legacy public_key, and verifies its
// re-marshalled copy of signed (which drops fields the identity server
// did not sign, and that an attacker may have added) instead of the
// object in the event. checkThirdPartyInvite applies all eight steps to
// the event as received; thirdPartyKeysProvider then shows
// gomatrixserverlib every valid key of the m.room.third_party_invite so
// that its narrower check cannot refuse an invite the spec allows.

// thirdPartyInviteOf returns content.third_party_invite of an
// m.room.member invite, or ok=false when the rule does not apply.
func thirdPartyInviteOf(pdu gomatrixserverlib.PDU) (raw json.RawMessage, ok bool, err error) {
	if pdu.Type() != spec.MRoomMember || pdu.StateKey() == nil {
		return nil, false, nil
	}
	var content struct {
		Membership       json.RawMessage `json:"membership"`
		ThirdPartyInvite json.RawMessage `json:"third_party_invite"`
	}
	if err := json.Unmarshal(pdu.Content(), &content); err != nil {
		return nil, false, fmt.Errorf("m.room.member content: %w", err)
	}
	var membership string
	if json.Unmarshal(content.Membership, &membership) != nil || membership != spec.Invite {
		return nil, false, nil
	}
	// A property that is present, even as null, makes the rule apply
	// ("If content has a third_party_invite property").
	if content.ThirdPartyInvite == nil {
		return nil, false, nil
	}
	return content.ThirdPartyInvite, true, nil
}

// checkThirdPartyInvite applies steps 1–8 to pdu, an m.room.member invite
// whose content carries raw as third_party_invite, against the auth
// events in provider.
func checkThirdPartyInvite(pdu gomatrixserverlib.PDU, raw json.RawMessage, provider gomatrixserverlib.AuthEventProvider) error {
	target := *pdu.StateKey()

	// 1. A banned target cannot be invited, not even by a third-party invite.
	if member, err := provider.Member(spec.SenderID(target)); err != nil {
		return err
	} else if member != nil {
		if m, err := member.Membership(); err == nil && m == spec.Ban {
			return fmt.Errorf("third-party invite: %s is banned", target)
		}
	}

	// 2. and 3.
	var invite map[string]json.RawMessage
	if err := json.Unmarshal(raw, &invite); err != nil || invite == nil {
		return fmt.Errorf("third-party invite: third_party_invite is not an object")
	}
	signed, ok := invite["signed"]
	var fields map[string]json.RawMessage
	if !ok || json.Unmarshal(signed, &fields) != nil || fields == nil {
		return fmt.Errorf("third-party invite: no signed object")
	}
	var mxid, token string
	if json.Unmarshal(fields["mxid"], &mxid) != nil || json.Unmarshal(fields["token"], &token) != nil {
		return fmt.Errorf("third-party invite: signed has no string mxid and token")
	}

	// 4.
	if mxid != target {
		return fmt.Errorf("third-party invite: signed.mxid %q is not the state_key %q", mxid, target)
	}

	// 5.
	tpi, err := provider.ThirdPartyInvite(token)
	if err != nil {
		return err
	}
	if tpi == nil {
		return fmt.Errorf("third-party invite: no m.room.third_party_invite with token %q", token)
	}

	// 6.
	if pdu.SenderID() != tpi.SenderID() {
		return fmt.Errorf("third-party invite: sender %s did not make the third-party invite (%s did)", pdu.SenderID(), tpi.SenderID())
	}

	// 7. and 8.
	keys := thirdPartyPublicKeys(tpi.Content())
	var sigs map[string]map[string]json.RawMessage
	if json.Unmarshal(fields["signatures"], &sigs) != nil {
		return fmt.Errorf("third-party invite: signed.signatures is not a map of signatures")
	}
	for _, key := range keys {
		for signer, byKey := range sigs {
			for keyID := range byKey {
				if !strings.HasPrefix(keyID, "ed25519:") {
					continue // not a signature these Ed25519 keys can make
				}
				if gomatrixserverlib.VerifyJSON(signer, gomatrixserverlib.KeyID(keyID), key, signed) == nil {
					return nil
				}
			}
		}
	}
	return fmt.Errorf("third-party invite: no signature in signed matches a key of the m.room.third_party_invite")
}

// thirdPartyPublicKeys returns the Ed25519 keys of an
// m.room.third_party_invite content: public_key, then each
// public_keys[].public_key. Keys are unpadded base64 in the standard or
// URL-safe alphabet; a value that is not a 32-byte key is skipped.
// Spec: client-server-api, "m.room.third_party_invite".
func thirdPartyPublicKeys(content []byte) []ed25519.PublicKey {
	var c struct {
		PublicKey  json.RawMessage `json:"public_key"`
		PublicKeys []struct {
			PublicKey json.RawMessage `json:"public_key"`
		} `json:"public_keys"`
	}
	if json.Unmarshal(content, &c) != nil {
		// public_keys of the wrong shape: the legacy key may still stand.
		c.PublicKeys = nil
		var legacy struct {
			PublicKey json.RawMessage `json:"public_key"`
		}
		_ = json.Unmarshal(content, &legacy)
		c.PublicKey = legacy.PublicKey
	}
	var out []ed25519.PublicKey
	add := func(raw json.RawMessage) {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return
		}
		if k := decodeEd25519Key(s); k != nil {
			out = append(out, k)
		}
	}
	add(c.PublicKey)
	for _, k := range c.PublicKeys {
		add(k.PublicKey)
	}
	return out
}

func decodeEd25519Key(s string) ed25519.PublicKey {
	s = strings.TrimRight(s, "=")
	for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == ed25519.PublicKeySize {
			return ed25519.PublicKey(b)
		}
	}
	return nil
}

// thirdPartyKeysProvider is the auth events of an invite that
// checkThirdPartyInvite has allowed, with the m.room.third_party_invite
// it completes shown to gomatrixserverlib with every valid key in
// public_keys (the legacy public_key included), so that
// gomatrixserverlib's own signature check sees the keys the spec lets
// the signature match.
type thirdPartyKeysProvider struct {
	gomatrixserverlib.AuthEventProvider
}

func (p thirdPartyKeysProvider) ThirdPartyInvite(stateKey string) (gomatrixserverlib.PDU, error) {
	ev, err := p.AuthEventProvider.ThirdPartyInvite(stateKey)
	if err != nil || ev == nil {
		return ev, err
	}
	type publicKey struct {
		PublicKey string `json:"public_key"`
	}
	keys := []publicKey{}
	for _, k := range thirdPartyPublicKeys(ev.Content()) {
		keys = append(keys, publicKey{base64.RawStdEncoding.EncodeToString(k)})
	}
	content, err := json.Marshal(struct {
		PublicKeys []publicKey `json:"public_keys"`
	}{keys})
	if err != nil {
		return nil, err
	}
	return contentView{PDU: ev, content: content}, nil
}

// contentView is an event seen with other content. It is only ever
// handed to gomatrixserverlib's auth check, never stored or sent.
type contentView struct {
	gomatrixserverlib.PDU
	content []byte
}

func (v contentView) Content() []byte { return v.content }
