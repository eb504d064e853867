package keyserver

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Cross-signing. Spec: client-server-api, "Cross-signing" and
// "POST /_matrix/client/v3/keys/device_signing/upload".

// Cross-signing key types, stored in key_type and named by "usage".
const (
	keyTypeMaster      = "master"
	keyTypeSelfSigning = "self_signing"
	keyTypeUserSigning = "user_signing"
)

// crossSigningKey is a validated or stored cross-signing key.
type crossSigningKey struct {
	keyType   string
	publicKey string // unpadded base64
	pub       ed25519.PublicKey
	canonical []byte        // without signatures
	obj       *signedObject // the uploaded object; nil when loaded from storage
}

// keyID is the key's ID in signatures: "ed25519:<public key>".
func (k *crossSigningKey) keyID() string { return "ed25519:" + k.publicKey }

// validateCrossSigningKey checks a CrossSigningKey object: its user_id,
// that usage names keyType, and exactly one ed25519 key whose ID holds
// the public key itself.
func validateCrossSigningKey(raw json.RawMessage, userID, keyType string) (*crossSigningKey, error) {
	obj, err := parseSigned(raw)
	if err != nil {
		return nil, mxerr.New(mxerr.BadJSON, "%s key: %v", keyType, err)
	}
	if got := obj.stringField("user_id"); got != userID {
		return nil, mxerr.New(mxerr.InvalidParam, "%s key: user_id %q is not %q", keyType, got, userID)
	}
	var usage []string
	if err := json.Unmarshal(obj.fields["usage"], &usage); err != nil || !slices.Contains(usage, keyType) {
		return nil, mxerr.New(mxerr.InvalidParam, "%s key: usage must include %q", keyType, keyType)
	}
	var keys map[string]string
	if err := json.Unmarshal(obj.fields["keys"], &keys); err != nil || len(keys) != 1 {
		return nil, mxerr.New(mxerr.InvalidParam, "%s key: keys must hold exactly one key", keyType)
	}
	for keyID, value := range keys {
		alg, pubText, _ := strings.Cut(keyID, ":")
		if alg != algEd25519 || pubText != value {
			return nil, mxerr.New(mxerr.InvalidParam, "%s key: the key ID must be ed25519:<the public key>", keyType)
		}
		pub, err := decodeEd25519(value)
		if err != nil {
			return nil, mxerr.New(mxerr.InvalidParam, "%s key: %v", keyType, err)
		}
		return &crossSigningKey{keyType: keyType, publicKey: value, pub: pub, canonical: obj.canonical, obj: obj}, nil
	}
	panic("unreachable")
}

// loadCrossSigningKey returns the user's stored key of keyType, or nil.
func loadCrossSigningKey(ctx context.Context, q storage.Querier, userID, keyType string) (*crossSigningKey, error) {
	k := &crossSigningKey{keyType: keyType}
	var text string
	err := q.QueryRow(ctx, `SELECT public_key, key_json FROM keyserver_cross_signing_keys WHERE user_id = $1 AND key_type = $2`,
		userID, keyType).Scan(&k.publicKey, &text)
	if storage.IsNoRows(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	k.canonical = []byte(text)
	if k.pub, err = decodeEd25519(k.publicKey); err != nil {
		return nil, err
	}
	return k, nil
}

// loadCrossSigningKeys returns the user's stored keys by type.
func loadCrossSigningKeys(ctx context.Context, q storage.Querier, userID string) (map[string]*crossSigningKey, error) {
	out := map[string]*crossSigningKey{}
	for _, t := range []string{keyTypeMaster, keyTypeSelfSigning, keyTypeUserSigning} {
		k, err := loadCrossSigningKey(ctx, q, userID, t)
		if err != nil {
			return nil, err
		}
		if k != nil {
			out[t] = k
		}
	}
	return out, nil
}

// errNeedsUIA is returned inside the write when the stored keys changed
// since the request was checked and now require authentication.
var errNeedsUIA = errors.New("keyserver: replacing cross-signing keys needs user-interactive authentication")

// uploadCrossSigningKeys answers POST /keys/device_signing/upload.
func (s *Server) uploadCrossSigningKeys(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	ctx := r.Context()
	var req struct {
		MasterKey      json.RawMessage `json:"master_key"`
		SelfSigningKey json.RawMessage `json:"self_signing_key"`
		UserSigningKey json.RawMessage `json:"user_signing_key"`
		Auth           json.RawMessage `json:"auth"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	upload := map[string]*crossSigningKey{}
	for keyType, raw := range map[string]json.RawMessage{
		keyTypeMaster: req.MasterKey, keyTypeSelfSigning: req.SelfSigningKey, keyTypeUserSigning: req.UserSigningKey,
	} {
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		k, err := validateCrossSigningKey(raw, d.UserID, keyType)
		if err != nil {
			return err
		}
		upload[keyType] = k
	}
	if len(upload) == 0 {
		return mxerr.New(mxerr.MissingParam, "no cross-signing keys in the request")
	}
	devices, err := s.userDevices(ctx, d.UserID)
	if err != nil {
		return err
	}
	for _, k := range upload {
		// Spec: device IDs and cross-signing public keys share a namespace.
		if _, clash := devices[k.publicKey]; clash {
			return mxerr.New(mxerr.Forbidden, "the %s public key is one of your device IDs", k.keyType)
		}
	}
	existing, err := loadCrossSigningKeys(ctx, s.db.Reader(), d.UserID)
	if err != nil {
		return err
	}
	var consume func(context.Context, storage.Tx) error
	if needsUIA(existing, upload) {
		if consume, err = s.passwordUIA(ctx, r, req.Auth); err != nil {
			return err
		}
	}
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		return s.storeCrossSigningKeys(ctx, tx, d.UserID, upload, consume)
	})
	if errors.Is(err, errNeedsUIA) {
		// Keys appeared since the check above: authenticate, then retry once.
		if consume, err = s.passwordUIA(ctx, r, req.Auth); err != nil {
			return err
		}
		err = s.db.Write(ctx, func(tx storage.Tx) error {
			return s.storeCrossSigningKeys(ctx, tx, d.UserID, upload, consume)
		})
	}
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// passwordUIA asks Deps.RequirePassword to authenticate the request.
func (s *Server) passwordUIA(ctx context.Context, r *http.Request, auth json.RawMessage) (func(context.Context, storage.Tx) error, error) {
	if d := authn.FromContext(ctx); d != nil && d.AppServiceID != "" {
		// Spec: application-service-api, "Cross-signing" (v1.17): no UIA
		// for application services, even when keys already exist.
		return func(context.Context, storage.Tx) error { return nil }, nil
	}
	if s.requirePassword == nil {
		return nil, mxerr.New(mxerr.Forbidden, "replacing cross-signing keys needs user-interactive authentication, which this server cannot offer")
	}
	return s.requirePassword(ctx, r, "device_signing_upload", auth)
}

// needsUIA applies the spec's rule: authentication is needed unless there
// is no master key yet, or every uploaded key equals the stored one.
func needsUIA(existing, upload map[string]*crossSigningKey) bool {
	if existing[keyTypeMaster] == nil {
		return false
	}
	for t, k := range upload {
		old := existing[t]
		if old == nil || !bytes.Equal(old.canonical, k.canonical) {
			return true
		}
	}
	return false
}

// storeCrossSigningKeys checks the signature chain against the stored
// keys as they are inside tx, then stores the keys and their signatures.
func (s *Server) storeCrossSigningKeys(ctx context.Context, tx storage.Tx, userID string, upload map[string]*crossSigningKey, consume func(context.Context, storage.Tx) error) error {
	existing, err := loadCrossSigningKeys(ctx, tx, userID)
	if err != nil {
		return err
	}
	if consume != nil {
		if err := consume(ctx, tx); err != nil {
			return err
		}
	} else if needsUIA(existing, upload) {
		return errNeedsUIA
	}
	master := upload[keyTypeMaster]
	if master == nil {
		master = existing[keyTypeMaster]
	}
	if master == nil {
		return mxerr.New(mxerr.MissingParam, "no master signing key is available")
	}
	// Spec: the self- and user-signing keys must be signed by the
	// accompanying master key, or the stored one.
	for _, t := range []string{keyTypeSelfSigning, keyTypeUserSigning} {
		if k := upload[t]; k != nil {
			if err := k.obj.verify(userID, master.keyID(), master.pub); err != nil {
				return mxerr.New(mxerr.InvalidSignature, "%s key is not signed by the master key: %v", t, err)
			}
		}
	}
	changed := false
	for _, t := range []string{keyTypeMaster, keyTypeSelfSigning, keyTypeUserSigning} {
		k, old := upload[t], existing[t]
		if k == nil {
			if t != keyTypeMaster && old != nil && upload[keyTypeMaster] != nil && !bytes.Equal(upload[keyTypeMaster].canonical, existing[keyTypeMaster].canonical) {
				// A new master key orphans the old sub-keys: their
				// signatures by the old master no longer chain.
				if err := deleteCrossSigningKey(ctx, tx, userID, old); err != nil {
					return err
				}
				changed = true
			}
			continue
		}
		if old != nil && bytes.Equal(old.canonical, k.canonical) {
			continue
		}
		if old != nil {
			if err := deleteCrossSigningKey(ctx, tx, userID, old); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO keyserver_cross_signing_keys (user_id, key_type, public_key, key_json, updated_ts)
			VALUES ($1, $2, $3, $4, $5)`, userID, t, k.publicKey, string(k.canonical), time.Now().UnixMilli()); err != nil {
			return err
		}
		changed = true
		if t != keyTypeMaster {
			if err := putSignature(ctx, tx, userID, k.publicKey, userID, master.keyID(), k.obj.signatures[userID][master.keyID()]); err != nil {
				return err
			}
		}
	}
	// Signatures of the master key by the user's own devices, sent along,
	// are kept when they verify.
	if k := upload[keyTypeMaster]; k != nil {
		stored, err := s.storeDeviceSignaturesOfMaster(ctx, tx, userID, k)
		if err != nil {
			return err
		}
		changed = changed || stored
	}
	if !changed {
		return nil
	}
	return recordDeviceListChange(ctx, s.db, tx, s.notify, userID)
}

// deleteCrossSigningKey removes a replaced key, the signatures of it and
// the signatures it made.
func deleteCrossSigningKey(ctx context.Context, tx storage.Tx, userID string, old *crossSigningKey) error {
	if _, err := tx.Exec(ctx, `DELETE FROM keyserver_cross_signing_keys WHERE user_id = $1 AND key_type = $2`, userID, old.keyType); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM keyserver_signatures WHERE target_user_id = $1 AND target_key_id = $2`, userID, old.publicKey); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `DELETE FROM keyserver_signatures WHERE signer_user_id = $1 AND signer_key_id = $2`, userID, old.keyID())
	return err
}

// storeDeviceSignaturesOfMaster keeps the signatures of master by the
// user's devices that verify against the devices' stored ed25519 keys.
func (s *Server) storeDeviceSignaturesOfMaster(ctx context.Context, tx storage.Tx, userID string, master *crossSigningKey) (bool, error) {
	stored := false
	for keyID, sig := range master.obj.signatures[userID] {
		deviceID, ok := strings.CutPrefix(keyID, "ed25519:")
		if !ok || deviceID == master.publicKey {
			continue
		}
		pub, err := deviceSigningKey(ctx, tx, userID, deviceID)
		if err != nil {
			return false, err
		}
		if pub == nil || verifySignature(master.canonical, sig, pub) != nil {
			continue
		}
		if err := putSignature(ctx, tx, userID, master.publicKey, userID, keyID, sig); err != nil {
			return false, err
		}
		stored = true
	}
	return stored, nil
}

// deviceSigningKey returns the device's stored ed25519 key, or nil.
func deviceSigningKey(ctx context.Context, q storage.Querier, userID, deviceID string) (ed25519.PublicKey, error) {
	var text string
	err := q.QueryRow(ctx, `SELECT ed25519_key FROM keyserver_device_keys WHERE user_id = $1 AND device_id = $2`,
		userID, deviceID).Scan(&text)
	if storage.IsNoRows(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return decodeEd25519(text)
}

// uploadSignatures answers POST /keys/signatures/upload. Each signed
// object must equal the stored key (apart from signatures), and carry a
// valid signature by the right key of the caller: the self-signing key
// for the caller's devices, a device for the caller's master key, the
// user-signing key for another user's master key. Each failure is
// reported per key; the rest are stored.
//
// Spec: client-server-api, "POST /_matrix/client/v3/keys/signatures/upload".
func (s *Server) uploadSignatures(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	ctx := r.Context()
	var req map[string]map[string]json.RawMessage
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	failures := map[string]map[string]any{}
	fail := func(userID, keyID string, code mxerr.Code, msg string) {
		if failures[userID] == nil {
			failures[userID] = map[string]any{}
		}
		failures[userID][keyID] = map[string]any{"errcode": string(code), "error": msg}
	}
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		clear(failures)
		var targets []string
		for targetUser, keys := range req {
			stored := false
			for keyID, raw := range keys {
				ok, err := s.applySignature(ctx, tx, d.UserID, targetUser, keyID, raw, fail)
				if err != nil {
					return err
				}
				stored = stored || ok
			}
			if stored {
				targets = append(targets, targetUser)
			}
		}
		slices.Sort(targets)
		return recordDeviceListChange(ctx, s.db, tx, s.notify, targets...)
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"failures": failures})
}

// applySignature checks and stores the caller's signature(s) on one key.
// It reports a rejected signature through fail and returns false.
func (s *Server) applySignature(ctx context.Context, tx storage.Tx, caller, targetUser, keyID string, raw json.RawMessage,
	fail func(userID, keyID string, code mxerr.Code, msg string)) (bool, error) {
	obj, err := parseSigned(raw)
	if err != nil {
		fail(targetUser, keyID, mxerr.BadJSON, err.Error())
		return false, nil
	}
	mySigs := obj.signatures[caller]
	if len(mySigs) == 0 {
		fail(targetUser, keyID, mxerr.InvalidSignature, "no signature by "+caller)
		return false, nil
	}
	if !s.isLocal(targetUser) {
		fail(targetUser, keyID, mxerr.NotFound, "signing keys of users on other servers needs federation, which is not available yet")
		return false, nil
	}
	targetMaster, err := loadCrossSigningKey(ctx, tx, targetUser, keyTypeMaster)
	if err != nil {
		return false, err
	}
	if targetUser != caller {
		// Another user's master key, signed by the caller's user-signing key.
		if targetMaster == nil || targetMaster.publicKey != keyID {
			fail(targetUser, keyID, mxerr.NotFound, "only another user's master key can be signed")
			return false, nil
		}
		usk, err := loadCrossSigningKey(ctx, tx, caller, keyTypeUserSigning)
		if err != nil {
			return false, err
		}
		if usk == nil {
			fail(targetUser, keyID, mxerr.InvalidSignature, "you have no user-signing key")
			return false, nil
		}
		return s.checkAndStore(ctx, tx, obj, targetMaster.canonical, targetUser, keyID, caller, usk.keyID(), usk.pub, fail)
	}
	if targetMaster != nil && targetMaster.publicKey == keyID {
		// The caller's master key, signed by one of the caller's devices.
		if !bytes.Equal(obj.canonical, targetMaster.canonical) {
			fail(targetUser, keyID, mxerr.InvalidParam, "the signed object does not match the stored master key")
			return false, nil
		}
		stored := false
		for sigKeyID := range mySigs {
			deviceID, ok := strings.CutPrefix(sigKeyID, "ed25519:")
			if !ok || deviceID == keyID {
				continue
			}
			pub, err := deviceSigningKey(ctx, tx, caller, deviceID)
			if err != nil {
				return false, err
			}
			if pub == nil {
				continue
			}
			ok, err = s.checkAndStore(ctx, tx, obj, targetMaster.canonical, targetUser, keyID, caller, sigKeyID, pub, fail)
			if err != nil || !ok {
				return false, err
			}
			stored = true
		}
		if !stored {
			fail(targetUser, keyID, mxerr.InvalidSignature, "no signature by one of your devices")
		}
		return stored, nil
	}
	// One of the caller's devices, signed by the self-signing key.
	var deviceJSON string
	err = tx.QueryRow(ctx, `SELECT key_json FROM keyserver_device_keys WHERE user_id = $1 AND device_id = $2`,
		targetUser, keyID).Scan(&deviceJSON)
	if storage.IsNoRows(err) {
		fail(targetUser, keyID, mxerr.NotFound, "no such device or key")
		return false, nil
	}
	if err != nil {
		return false, err
	}
	ssk, err := loadCrossSigningKey(ctx, tx, caller, keyTypeSelfSigning)
	if err != nil {
		return false, err
	}
	if ssk == nil {
		fail(targetUser, keyID, mxerr.InvalidSignature, "you have no self-signing key")
		return false, nil
	}
	return s.checkAndStore(ctx, tx, obj, []byte(deviceJSON), targetUser, keyID, caller, ssk.keyID(), ssk.pub, fail)
}

// checkAndStore verifies obj matches the stored key and carries a valid
// signature by signerKeyID, then stores that signature.
func (s *Server) checkAndStore(ctx context.Context, tx storage.Tx, obj *signedObject, storedCanonical []byte,
	targetUser, targetKey, signerUser, signerKeyID string, pub ed25519.PublicKey,
	fail func(userID, keyID string, code mxerr.Code, msg string)) (bool, error) {
	if !bytes.Equal(obj.canonical, storedCanonical) {
		fail(targetUser, targetKey, mxerr.InvalidParam, "the signed object does not match the stored key")
		return false, nil
	}
	if err := obj.verify(signerUser, signerKeyID, pub); err != nil {
		fail(targetUser, targetKey, mxerr.InvalidSignature, "invalid signature: "+err.Error())
		return false, nil
	}
	return true, putSignature(ctx, tx, targetUser, targetKey, signerUser, signerKeyID, obj.signatures[signerUser][signerKeyID])
}
