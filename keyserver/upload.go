package keyserver

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Key algorithms with a defined format.
// Spec: client-server-api, "Key algorithms".
const (
	algEd25519          = "ed25519"
	algCurve25519       = "curve25519"
	algSignedCurve25519 = "signed_curve25519"
)

// Limits on what one device may upload (security case 31: a flood of
// one-time keys is refused, not stored).
const (
	maxOneTimeKeysPerUpload = 1000
	maxOneTimeKeysStored    = 10000
	maxKeyIDLength          = 255
)

// uploadRequest is the body of POST /keys/upload.
type uploadRequest struct {
	DeviceKeys   json.RawMessage            `json:"device_keys"`
	OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
	FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
}

// deviceKeys is a validated device keys object.
type deviceKeys struct {
	obj        *signedObject
	ed25519    string
	curve25519 string
}

// otk is a validated one-time or fallback key.
type otk struct {
	algorithm string
	keyID     string
	json      []byte // canonical JSON of the value as uploaded
}

// uploadKeys answers POST /keys/upload.
// Spec: client-server-api, "POST /_matrix/client/v3/keys/upload".
func (s *Server) uploadKeys(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	if d.DeviceID == "" {
		// An application service acting without device_id has no device
		// to hold keys. Spec: application-service-api, "Identity assertion".
		return mxerr.New(mxerr.InvalidParam, "uploading keys needs a device: pass device_id with the as_token")
	}
	var req uploadRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if len(req.OneTimeKeys) > maxOneTimeKeysPerUpload {
		return mxerr.New(mxerr.InvalidParam, "at most %d one-time keys per upload", maxOneTimeKeysPerUpload)
	}
	ctx := r.Context()
	var newDevice *deviceKeys
	if len(req.DeviceKeys) > 0 && string(req.DeviceKeys) != "null" {
		dk, err := validateDeviceKeys(req.DeviceKeys, d.UserID, d.DeviceID)
		if err != nil {
			return err
		}
		newDevice = dk
	}
	var counts map[string]int
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		// One-time and fallback keys change the device's key counts.
		if len(req.OneTimeKeys) > 0 || len(req.FallbackKeys) > 0 {
			if err := s.keyCountsChanged(ctx, tx, d.UserID, d.DeviceID); err != nil {
				return err
			}
		} else {
			s.counts.dropOnCommit(tx, d.UserID, d.DeviceID)
		}
		if err := s.storeUploadTx(ctx, tx, d, newDevice, req.OneTimeKeys, req.FallbackKeys); err != nil {
			return err
		}
		var err error
		counts, err = oneTimeKeyCounts(ctx, tx, d.UserID, d.DeviceID)
		return err
	})
	if err != nil {
		return err
	}
	if _, ok := counts[algSignedCurve25519]; !ok {
		counts[algSignedCurve25519] = 0
	}
	return httpx.OK(w, map[string]any{"one_time_key_counts": counts})
}

// validateDeviceKeys checks a device keys object: it names the caller's
// user and device, lists algorithms, has well-formed keys for the device
// (an ed25519 key at least) and is signed by that ed25519 key.
// Spec: client-server-api, "Device keys" and the DeviceKeys schema.
func validateDeviceKeys(raw json.RawMessage, userID, deviceID string) (*deviceKeys, error) {
	obj, err := parseSigned(raw)
	if err != nil {
		return nil, mxerr.New(mxerr.BadJSON, "device_keys: %v", err)
	}
	if got := obj.stringField("user_id"); got != userID {
		return nil, mxerr.New(mxerr.InvalidParam, "device_keys.user_id %q is not the caller %q", got, userID)
	}
	if got := obj.stringField("device_id"); got != deviceID {
		return nil, mxerr.New(mxerr.InvalidParam, "device_keys.device_id %q is not the caller's device %q", got, deviceID)
	}
	var algorithms []string
	if err := json.Unmarshal(obj.fields["algorithms"], &algorithms); err != nil || len(algorithms) == 0 {
		return nil, mxerr.New(mxerr.BadJSON, "device_keys.algorithms must be a non-empty list of strings")
	}
	var keys map[string]string
	if err := json.Unmarshal(obj.fields["keys"], &keys); err != nil || len(keys) == 0 {
		return nil, mxerr.New(mxerr.BadJSON, "device_keys.keys must map key IDs to strings")
	}
	dk := &deviceKeys{obj: obj}
	for keyID, value := range keys {
		alg, id, ok := strings.Cut(keyID, ":")
		if !ok || alg == "" || id != deviceID {
			return nil, mxerr.New(mxerr.InvalidParam, "device_keys.keys: key ID %q must be <algorithm>:%s", keyID, deviceID)
		}
		switch alg {
		case algEd25519:
			if _, err := decodeEd25519(value); err != nil {
				return nil, mxerr.New(mxerr.InvalidParam, "device_keys.keys.%s: %v", keyID, err)
			}
			dk.ed25519 = value
		case algCurve25519:
			if err := decodeCurve25519(value); err != nil {
				return nil, mxerr.New(mxerr.InvalidParam, "device_keys.keys.%s: %v", keyID, err)
			}
			dk.curve25519 = value
		default:
			// Spec: unknown algorithms are allowed; their keys must at
			// least be non-empty strings.
			if value == "" {
				return nil, mxerr.New(mxerr.InvalidParam, "device_keys.keys.%s is empty", keyID)
			}
		}
	}
	if dk.ed25519 == "" {
		return nil, mxerr.New(mxerr.InvalidParam, "device_keys.keys must hold ed25519:%s", deviceID)
	}
	pub, _ := decodeEd25519(dk.ed25519)
	if err := obj.verify(userID, "ed25519:"+deviceID, pub); err != nil {
		return nil, mxerr.New(mxerr.InvalidSignature, "device_keys must be signed by the device's ed25519 key: %v", err).WithStatus(http.StatusBadRequest)
	}
	return dk, nil
}

// storeUploadTx stores what one upload brings for device d, in tx: its
// device keys (nil: none), then its one-time and fallback keys, each
// checked against the device's signing key. /keys/upload and the
// dehydrated device's PUT both come through here.
func (s *Server) storeUploadTx(ctx context.Context, tx storage.Tx, d *authn.Device, deviceKeys *deviceKeys, oneTime, fallback map[string]json.RawMessage) error {
	signingKey, err := s.storeDeviceKeys(ctx, tx, d, deviceKeys)
	if err != nil {
		return err
	}
	otks, err := validateOneTimeKeys(oneTime, d, signingKey, false)
	if err != nil {
		return err
	}
	fallbacks, err := validateOneTimeKeys(fallback, d, signingKey, true)
	if err != nil {
		return err
	}
	if err := storeOneTimeKeys(ctx, tx, d, otks); err != nil {
		return err
	}
	return storeFallbackKeys(ctx, tx, d, fallbacks)
}

// storeDeviceKeys stores newDevice (if any) for the caller and returns
// the device's ed25519 key (new or stored; nil if the device has none),
// which one-time keys must be signed with. A device's identity keys never
// change: a different ed25519 or curve25519 key is refused.
func (s *Server) storeDeviceKeys(ctx context.Context, tx storage.Tx, d *authn.Device, newDevice *deviceKeys) (ed25519.PublicKey, error) {
	var oldJSON, oldEd, oldCurve string
	err := tx.QueryRow(ctx, `
		SELECT key_json, ed25519_key, curve25519_key FROM keyserver_device_keys
		WHERE user_id = $1 AND device_id = $2`, d.UserID, d.DeviceID).Scan(&oldJSON, &oldEd, &oldCurve)
	exists := err == nil
	if err != nil && !storage.IsNoRows(err) {
		return nil, err
	}
	if newDevice == nil {
		if !exists {
			return nil, nil
		}
		return decodeEd25519(oldEd)
	}
	if exists && (oldEd != newDevice.ed25519 || oldCurve != newDevice.curve25519) {
		return nil, mxerr.New(mxerr.InvalidParam,
			"device %s already has different identity keys; a device's identity keys cannot be replaced (log in as a new device)", d.DeviceID)
	}
	pub, _ := decodeEd25519(newDevice.ed25519)
	if exists && bytes.Equal([]byte(oldJSON), newDevice.obj.canonical) {
		return pub, nil // the same keys again: nothing changed
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO keyserver_device_keys (user_id, device_id, key_json, ed25519_key, curve25519_key, updated_ts)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json, updated_ts = excluded.updated_ts`,
		d.UserID, d.DeviceID, string(newDevice.obj.canonical), newDevice.ed25519, newDevice.curve25519, time.Now().UnixMilli()); err != nil {
		return nil, err
	}
	// The content changed, so signatures of the old content no longer
	// hold: keep only the new self-signature.
	if _, err := tx.Exec(ctx, `DELETE FROM keyserver_signatures WHERE target_user_id = $1 AND target_key_id = $2`,
		d.UserID, d.DeviceID); err != nil {
		return nil, err
	}
	selfKeyID := "ed25519:" + d.DeviceID
	if err := putSignature(ctx, tx, d.UserID, d.DeviceID, d.UserID, selfKeyID, newDevice.obj.signatures[d.UserID][selfKeyID]); err != nil {
		return nil, err
	}
	// A signature by the user's self-signing key sent along is kept if it
	// verifies (clients re-uploading a cross-signed device send it).
	if ssk, err := loadCrossSigningKey(ctx, tx, d.UserID, keyTypeSelfSigning); err != nil {
		return nil, err
	} else if ssk != nil {
		sskKeyID := "ed25519:" + ssk.publicKey
		if sig, ok := newDevice.obj.signatures[d.UserID][sskKeyID]; ok && verifySignature(newDevice.obj.canonical, sig, ssk.pub) == nil {
			if err := putSignature(ctx, tx, d.UserID, d.DeviceID, d.UserID, sskKeyID, sig); err != nil {
				return nil, err
			}
		}
	}
	return pub, recordDeviceChanges(ctx, s.db, tx, s.notify, d.UserID, d.DeviceID)
}

// putSignature stores (or replaces) one signature.
func putSignature(ctx context.Context, tx storage.Tx, targetUser, targetKey, signerUser, signerKey, sig string) error {
	_, err := tx.Exec(ctx, `
		INSERT INTO keyserver_signatures (target_user_id, target_key_id, signer_user_id, signer_key_id, signature)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id) DO UPDATE SET signature = excluded.signature`,
		targetUser, targetKey, signerUser, signerKey, sig)
	return err
}

// validateOneTimeKeys checks one-time (or fallback) keys. Each key ID is
// <algorithm>:<id>; curve25519 keys are bare strings; signed_curve25519
// keys are objects with a "key" signed by the device's ed25519 key;
// other algorithms must be a string or an object.
// Spec: client-server-api, "One-time and fallback keys", "Key algorithms".
func validateOneTimeKeys(keys map[string]json.RawMessage, d *authn.Device, signingKey ed25519.PublicKey, fallback bool) ([]otk, error) {
	field := "one_time_keys"
	if fallback {
		field = "fallback_keys"
	}
	out := make([]otk, 0, len(keys))
	seenAlg := map[string]bool{}
	for keyID, raw := range keys {
		alg, id, ok := strings.Cut(keyID, ":")
		if !ok || alg == "" || id == "" || len(keyID) > maxKeyIDLength {
			return nil, mxerr.New(mxerr.InvalidParam, "%s: key ID %q must be <algorithm>:<key id>", field, keyID)
		}
		if fallback {
			// Spec: at most one fallback key per algorithm.
			if seenAlg[alg] {
				return nil, mxerr.New(mxerr.InvalidParam, "fallback_keys: more than one %s key", alg)
			}
			seenAlg[alg] = true
		}
		trimmed := bytes.TrimSpace(raw)
		var canonical []byte
		switch {
		case len(trimmed) > 0 && trimmed[0] == '"':
			var value string
			if err := json.Unmarshal(trimmed, &value); err != nil || value == "" {
				return nil, mxerr.New(mxerr.BadJSON, "%s.%s must be a non-empty string or an object", field, keyID)
			}
			if alg == algSignedCurve25519 {
				return nil, mxerr.New(mxerr.InvalidParam, "%s.%s: signed_curve25519 keys must be signed objects", field, keyID)
			}
			if alg == algCurve25519 {
				if err := decodeCurve25519(value); err != nil {
					return nil, mxerr.New(mxerr.InvalidParam, "%s.%s: %v", field, keyID, err)
				}
			}
			canonical, _ = json.Marshal(value)
		case len(trimmed) > 0 && trimmed[0] == '{':
			obj, err := parseSigned(trimmed)
			if err != nil {
				return nil, mxerr.New(mxerr.BadJSON, "%s.%s: %v", field, keyID, err)
			}
			if alg == algCurve25519 {
				return nil, mxerr.New(mxerr.InvalidParam, "%s.%s: curve25519 keys are strings", field, keyID)
			}
			if alg == algSignedCurve25519 {
				if err := decodeCurve25519(obj.stringField("key")); err != nil {
					return nil, mxerr.New(mxerr.InvalidParam, "%s.%s.key: %v", field, keyID, err)
				}
				if signingKey == nil {
					return nil, mxerr.New(mxerr.InvalidParam, "%s: upload device_keys before signed keys", field)
				}
				if err := obj.verify(d.UserID, "ed25519:"+d.DeviceID, signingKey); err != nil {
					return nil, mxerr.New(mxerr.InvalidSignature, "%s.%s: %v", field, keyID, err).WithStatus(http.StatusBadRequest)
				}
			}
			canonical, err = canonicalJSON(json.RawMessage(trimmed))
			if err != nil {
				return nil, mxerr.New(mxerr.BadJSON, "%s.%s: %v", field, keyID, err)
			}
		default:
			return nil, mxerr.New(mxerr.BadJSON, "%s.%s must be a string or an object", field, keyID)
		}
		out = append(out, otk{algorithm: alg, keyID: id, json: canonical})
	}
	return out, nil
}

// storeOneTimeKeys adds one-time keys. Re-uploading a stored key with the
// same content is a no-op; with different content it is refused.
func storeOneTimeKeys(ctx context.Context, tx storage.Tx, d *authn.Device, keys []otk) error {
	if len(keys) == 0 {
		return nil
	}
	var stored int
	if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM keyserver_one_time_keys WHERE user_id = $1 AND device_id = $2`,
		d.UserID, d.DeviceID).Scan(&stored); err != nil {
		return err
	}
	now := time.Now().UnixMilli()
	added := 0
	for _, k := range keys {
		var existing string
		err := tx.QueryRow(ctx, `
			SELECT key_json FROM keyserver_one_time_keys
			WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4`,
			d.UserID, d.DeviceID, k.algorithm, k.keyID).Scan(&existing)
		if err == nil {
			if existing != string(k.json) {
				return mxerr.New(mxerr.InvalidParam, "one-time key %s:%s already exists with different content", k.algorithm, k.keyID)
			}
			continue
		}
		if !storage.IsNoRows(err) {
			return err
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO keyserver_one_time_keys (user_id, device_id, algorithm, key_id, key_json, created_ts)
			VALUES ($1, $2, $3, $4, $5, $6)`, d.UserID, d.DeviceID, k.algorithm, k.keyID, string(k.json), now); err != nil {
			return err
		}
		added++
	}
	if stored+added > maxOneTimeKeysStored {
		return mxerr.New(mxerr.InvalidParam, "a device may hold at most %d unclaimed one-time keys", maxOneTimeKeysStored)
	}
	return nil
}

// storeFallbackKeys replaces the device's fallback key per algorithm. The
// same key uploaded again keeps its used flag; a new key starts unused.
func storeFallbackKeys(ctx context.Context, tx storage.Tx, d *authn.Device, keys []otk) error {
	for _, k := range keys {
		if _, err := tx.Exec(ctx, `
			INSERT INTO keyserver_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
			VALUES ($1, $2, $3, $4, $5, FALSE)
			ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET
				key_id = excluded.key_id, key_json = excluded.key_json,
				used = CASE WHEN keyserver_fallback_keys.key_id = excluded.key_id
					AND keyserver_fallback_keys.key_json = excluded.key_json
					THEN keyserver_fallback_keys.used ELSE FALSE END`,
			d.UserID, d.DeviceID, k.algorithm, k.keyID, string(k.json)); err != nil {
			return err
		}
	}
	return nil
}

// oneTimeKeyCounts counts unclaimed one-time keys per algorithm.
func oneTimeKeyCounts(ctx context.Context, q storage.Querier, userID, deviceID string) (map[string]int, error) {
	rows, err := q.Query(ctx, `
		SELECT algorithm, COUNT(*) FROM keyserver_one_time_keys
		WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm`, userID, deviceID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	counts := map[string]int{}
	for rows.Next() {
		var alg string
		var n int
		if err := rows.Scan(&alg, &n); err != nil {
			return nil, err
		}
		counts[alg] = n
	}
	return counts, rows.Err()
}

// OneTimeKeyCounts implements API.
func (s *Server) OneTimeKeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, error) {
	return oneTimeKeyCounts(ctx, s.db.Reader(), userID, deviceID)
}

// KeyCounts implements API: both answers from one statement (a /sync
// response reads them for every request, so one query instead of two),
// or from the CountMemo.
func (s *Server) KeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, []string, error) {
	d := DeviceRef{UserID: userID, DeviceID: deviceID}
	if c, ok := s.counts.get(d); ok {
		return c.OneTimeKeys, c.UnusedFallback, nil
	}
	gen := s.counts.begin()
	counts, fallback, err := s.readKeyCounts(ctx, userID, deviceID)
	if err != nil {
		return nil, nil, err
	}
	s.counts.put(gen, []DeviceRef{d}, []DeviceKeyCounts{{OneTimeKeys: counts, UnusedFallback: fallback}})
	return counts, fallback, nil
}

// readKeyCounts is KeyCounts read from the database.
func (s *Server) readKeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, []string, error) {
	rows, err := s.db.Reader().Query(ctx, `
		SELECT algorithm, COUNT(*), 0 FROM keyserver_one_time_keys
		WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm
		UNION ALL
		SELECT algorithm, 0, 1 FROM keyserver_fallback_keys
		WHERE user_id = $1 AND device_id = $2 AND NOT used`, userID, deviceID)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	counts := map[string]int{}
	fallback := []string{}
	for rows.Next() {
		var alg string
		var n, isFallback int
		if err := rows.Scan(&alg, &n, &isFallback); err != nil {
			return nil, nil, err
		}
		if isFallback == 1 {
			fallback = append(fallback, alg)
		} else {
			counts[alg] = n
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	slices.Sort(fallback)
	return counts, fallback, nil
}

// UnusedFallbackKeyTypes implements API.
func (s *Server) UnusedFallbackKeyTypes(ctx context.Context, userID, deviceID string) ([]string, error) {
	rows, err := s.db.Reader().Query(ctx, `
		SELECT algorithm FROM keyserver_fallback_keys
		WHERE user_id = $1 AND device_id = $2 AND NOT used ORDER BY algorithm`, userID, deviceID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var alg string
		if err := rows.Scan(&alg); err != nil {
			return nil, err
		}
		out = append(out, alg)
	}
	return out, rows.Err()
}

// DeviceRef names one device.
type DeviceRef struct{ UserID, DeviceID string }

// DeviceKeyCounts is KeyCounts' answer for one device.
type DeviceKeyCounts struct {
	OneTimeKeys    map[string]int
	UnusedFallback []string
}

// maxKeyCountsDevices bounds the devices of one KeyCountsOfDevices
// query (two IN lists of at most this many values each).
const maxKeyCountsDevices = 500

// KeyCountsOfDevices is KeyCounts for several devices, in as few reads
// as their number allows (one per maxKeyCountsDevices): out[i] answers
// devices[i], exactly as KeyCounts(devices[i]) would. /sync uses it for
// the long polls woken together by one message. Devices the CountMemo
// holds are answered from it.
func (s *Server) KeyCountsOfDevices(ctx context.Context, devices []DeviceRef) ([]DeviceKeyCounts, error) {
	out := make([]DeviceKeyCounts, len(devices))
	var missing []DeviceRef
	var at []int // at[j]: the index in devices of missing[j]
	for i, d := range devices {
		if c, ok := s.counts.get(d); ok {
			out[i] = c
			continue
		}
		missing = append(missing, d)
		at = append(at, i)
	}
	if len(missing) == 0 {
		return out, nil
	}
	gen := s.counts.begin()
	read, err := s.readKeyCountsOfDevices(ctx, missing)
	if err != nil {
		return nil, err
	}
	s.counts.put(gen, missing, read)
	for j, i := range at {
		out[i] = read[j]
	}
	return out, nil
}

// readKeyCountsOfDevices is KeyCountsOfDevices read from the database.
func (s *Server) readKeyCountsOfDevices(ctx context.Context, devices []DeviceRef) ([]DeviceKeyCounts, error) {
	out := make([]DeviceKeyCounts, len(devices))
	at := make(map[DeviceRef][]int, len(devices))
	for i, d := range devices {
		out[i] = DeviceKeyCounts{OneTimeKeys: map[string]int{}, UnusedFallback: []string{}}
		at[d] = append(at[d], i)
	}
	for start := 0; start < len(devices); start += maxKeyCountsDevices {
		part := devices[start:min(start+maxKeyCountsDevices, len(devices))]
		// The tables' keys start with (user_id, device_id): both lists
		// seek through them; the pairs asked for are picked below.
		var users, devs []any
		seenU, seenD := map[string]bool{}, map[string]bool{}
		for _, d := range part {
			if !seenU[d.UserID] {
				seenU[d.UserID] = true
				users = append(users, d.UserID)
			}
			if !seenD[d.DeviceID] {
				seenD[d.DeviceID] = true
				devs = append(devs, d.DeviceID)
			}
		}
		uIn, dIn := placeholders(1, len(users)), placeholders(1+len(users), len(devs))
		rows, err := s.db.Reader().Query(ctx, `
			SELECT user_id, device_id, algorithm, COUNT(*), 0 FROM keyserver_one_time_keys
			WHERE user_id IN `+uIn+` AND device_id IN `+dIn+` GROUP BY user_id, device_id, algorithm
			UNION ALL
			SELECT user_id, device_id, algorithm, 0, 1 FROM keyserver_fallback_keys
			WHERE user_id IN `+uIn+` AND device_id IN `+dIn+` AND NOT used`, append(users, devs...)...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var d DeviceRef
			var alg string
			var n, isFallback int
			if err := rows.Scan(&d.UserID, &d.DeviceID, &alg, &n, &isFallback); err != nil {
				rows.Close()
				return nil, err
			}
			for _, i := range at[d] {
				if i < start || i >= start+len(part) {
					continue // answered by its own part's read
				}
				if isFallback == 1 {
					out[i].UnusedFallback = append(out[i].UnusedFallback, alg)
				} else {
					out[i].OneTimeKeys[alg] = n
				}
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
	}
	for i := range out {
		slices.Sort(out[i].UnusedFallback)
	}
	return out, nil
}

// placeholders is "($from, …, $from+n-1)".
func placeholders(from, n int) string {
	var b strings.Builder
	b.WriteByte('(')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("$" + strconv.Itoa(from+i))
	}
	b.WriteByte(')')
	return b.String()
}
