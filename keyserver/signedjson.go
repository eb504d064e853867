package keyserver

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
)

// signedObject is a signed JSON object split into what the signatures
// cover and the signatures themselves.
//
// Spec: appendices, "Signing JSON": a signature covers the canonical JSON
// of the object without its "signatures" and "unsigned" properties.
type signedObject struct {
	// fields is the object without "signatures" and "unsigned".
	fields map[string]json.RawMessage
	// signatures is user ID → key ID → unpadded base64 signature.
	signatures map[string]map[string]string
	// canonical is the canonical JSON of fields: the signed bytes, and the
	// form the object is stored in.
	canonical []byte
}

// parseSigned splits raw into a signedObject. Anything that is not an
// object, or whose signatures are not strings, is an error.
func parseSigned(raw json.RawMessage) (*signedObject, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return nil, errors.New("not a JSON object")
	}
	o := &signedObject{fields: fields, signatures: map[string]map[string]string{}}
	if sigs, ok := fields["signatures"]; ok {
		if err := json.Unmarshal(sigs, &o.signatures); err != nil {
			return nil, errors.New("signatures must map user IDs to key IDs to strings")
		}
		if o.signatures == nil {
			o.signatures = map[string]map[string]string{}
		}
	}
	delete(fields, "signatures")
	delete(fields, "unsigned")
	canonical, err := canonicalJSON(fields)
	if err != nil {
		return nil, err
	}
	o.canonical = canonical
	return o, nil
}

// canonicalJSON encodes v as Matrix canonical JSON.
// Spec: appendices, "Canonical JSON".
func canonicalJSON(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	out, err := gomatrixserverlib.CanonicalJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("not canonical-JSON encodable: %w", err)
	}
	return out, nil
}

// verify checks the signature by userID's key keyID ("ed25519:...") with
// public key pub.
func (o *signedObject) verify(userID, keyID string, pub ed25519.PublicKey) error {
	sig, ok := o.signatures[userID][keyID]
	if !ok {
		return fmt.Errorf("no signature by %s %s", userID, keyID)
	}
	return verifySignature(o.canonical, sig, pub)
}

// verifySignature checks one unpadded base64 signature of message.
func verifySignature(message []byte, sig string, pub ed25519.PublicKey) error {
	raw, err := decodeBase64(sig)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return errors.New("malformed signature")
	}
	if !ed25519.Verify(pub, message, raw) {
		return errors.New("signature does not verify")
	}
	return nil
}

// stringField returns the string property name, or "" if absent or not a string.
func (o *signedObject) stringField(name string) string {
	var s string
	if raw, ok := o.fields[name]; ok && json.Unmarshal(raw, &s) == nil {
		return s
	}
	return ""
}

// withSignatures returns the object's JSON with the given signatures
// (and nothing else unsigned) attached.
func withSignatures(canonical []byte, sigs map[string]map[string]string, unsigned map[string]any) (json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(canonical, &fields); err != nil {
		return nil, err
	}
	if len(sigs) > 0 {
		raw, err := json.Marshal(sigs)
		if err != nil {
			return nil, err
		}
		fields["signatures"] = raw
	}
	if len(unsigned) > 0 {
		raw, err := json.Marshal(unsigned)
		if err != nil {
			return nil, err
		}
		fields["unsigned"] = raw
	}
	return json.Marshal(fields)
}

// decodeBase64 decodes standard base64 with or without padding, as
// Matrix keys and signatures are unpadded but some clients pad.
func decodeBase64(s string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}

// decodeEd25519 decodes an unpadded base64 ed25519 public key.
func decodeEd25519(s string) (ed25519.PublicKey, error) {
	raw, err := decodeBase64(s)
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, errors.New("malformed ed25519 key")
	}
	return ed25519.PublicKey(raw), nil
}

// decodeCurve25519 checks an unpadded base64 curve25519 public key.
func decodeCurve25519(s string) error {
	raw, err := decodeBase64(s)
	if err != nil || len(raw) != 32 {
		return errors.New("malformed curve25519 key")
	}
	return nil
}
