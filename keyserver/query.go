package keyserver

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// remoteFailure is what failures holds for a server whose users were
// asked for: federation is not wired into the key server yet, so every
// remote server is reported unreachable rather than silently omitted.
var remoteFailure = map[string]any{"status": http.StatusServiceUnavailable, "message": "federation key queries are not available yet"}

// queryKeys answers POST /keys/query: device keys and cross-signing keys
// with the signatures the caller may see.
//
// Spec: client-server-api, "POST /_matrix/client/v3/keys/query" and
// "Key and signature security": a user sees signatures made by their own
// keys and by the key owner's own keys, never another user's
// user-signing signatures, and only their own user-signing key.
func (s *Server) queryKeys(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	ctx := r.Context()
	var req struct {
		DeviceKeys map[string][]string `json:"device_keys"`
		// Timeout bounds waiting on remote servers; with federation not
		// yet wired there is nothing to wait for.
		Timeout *int64 `json:"timeout"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	resp := map[string]any{}
	deviceKeys := map[string]map[string]json.RawMessage{}
	masters := map[string]json.RawMessage{}
	selfSigning := map[string]json.RawMessage{}
	userSigning := map[string]json.RawMessage{}
	failures := map[string]any{}
	for userID, wanted := range req.DeviceKeys {
		if !s.isLocal(userID) {
			if server := serverOf(userID); server != "" {
				failures[server] = remoteFailure
			}
			continue
		}
		devices, err := s.queryUserDevices(ctx, d.UserID, userID, wanted)
		if err != nil {
			return err
		}
		deviceKeys[userID] = devices
		keys, err := loadCrossSigningKeys(ctx, s.db.Reader(), userID)
		if err != nil {
			return err
		}
		for keyType, out := range map[string]map[string]json.RawMessage{
			keyTypeMaster: masters, keyTypeSelfSigning: selfSigning, keyTypeUserSigning: userSigning,
		} {
			k := keys[keyType]
			if k == nil || (keyType == keyTypeUserSigning && userID != d.UserID) {
				continue
			}
			obj, err := s.withVisibleSignatures(ctx, d.UserID, userID, k.publicKey, k.canonical, nil)
			if err != nil {
				return err
			}
			out[userID] = obj
		}
	}
	resp["device_keys"] = deviceKeys
	resp["master_keys"] = masters
	resp["self_signing_keys"] = selfSigning
	resp["user_signing_keys"] = userSigning
	resp["failures"] = failures
	return httpx.OK(w, resp)
}

// queryUserDevices returns userID's device keys (all devices, or those in
// wanted), for devices that still exist, with display names.
func (s *Server) queryUserDevices(ctx context.Context, requester, userID string, wanted []string) (map[string]json.RawMessage, error) {
	names, err := s.userDevices(ctx, userID)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.Reader().Query(ctx, `SELECT device_id, key_json FROM keyserver_device_keys WHERE user_id = $1`, userID)
	if err != nil {
		return nil, err
	}
	type stored struct{ deviceID, keyJSON string }
	var all []stored
	for rows.Next() {
		var st stored
		if err := rows.Scan(&st.deviceID, &st.keyJSON); err != nil {
			rows.Close()
			return nil, err
		}
		all = append(all, st)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, id := range wanted {
		want[id] = true
	}
	out := map[string]json.RawMessage{}
	for _, st := range all {
		name, exists := names[st.deviceID]
		if !exists || (len(want) > 0 && !want[st.deviceID]) {
			continue
		}
		var unsigned map[string]any
		if name != "" {
			unsigned = map[string]any{"device_display_name": name}
		}
		obj, err := s.withVisibleSignatures(ctx, requester, userID, st.deviceID, []byte(st.keyJSON), unsigned)
		if err != nil {
			return nil, err
		}
		out[st.deviceID] = obj
	}
	return out, nil
}

// withVisibleSignatures returns a stored key with the signatures the
// requester may see attached: those made by the requester and those made
// by the key's owner (with any of the owner's keys except user-signing
// keys, which only sign other users).
func (s *Server) withVisibleSignatures(ctx context.Context, requester, targetUser, targetKey string, canonical []byte, unsigned map[string]any) (json.RawMessage, error) {
	rows, err := s.db.Reader().Query(ctx, `
		SELECT signer_user_id, signer_key_id, signature FROM keyserver_signatures
		WHERE target_user_id = $1 AND target_key_id = $2 AND (signer_user_id = $1 OR signer_user_id = $3)`,
		targetUser, targetKey, requester)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	sigs := map[string]map[string]string{}
	for rows.Next() {
		var user, keyID, sig string
		if err := rows.Scan(&user, &keyID, &sig); err != nil {
			return nil, err
		}
		if sigs[user] == nil {
			sigs[user] = map[string]string{}
		}
		sigs[user][keyID] = sig
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return withSignatures(canonical, sigs, unsigned)
}

// claimKeys answers POST /keys/claim: for each requested device and
// algorithm, one one-time key, deleted as it is handed out, or the
// device's fallback key (kept, marked used) when none is left. Unknown
// devices and algorithms yield nothing, not an error.
//
// Spec: client-server-api, "POST /_matrix/client/v3/keys/claim" and
// "One-time and fallback keys".
func (s *Server) claimKeys(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	var req struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
		Timeout     *int64                       `json:"timeout"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.OneTimeKeys == nil {
		return mxerr.New(mxerr.MissingParam, "one_time_keys is required")
	}
	type claim struct{ userID, deviceID, algorithm string }
	var claims []claim
	failures := map[string]any{}
	for userID, devices := range req.OneTimeKeys {
		if !s.isLocal(userID) {
			if server := serverOf(userID); server != "" {
				failures[server] = remoteFailure
			}
			continue
		}
		for deviceID, alg := range devices {
			claims = append(claims, claim{userID, deviceID, alg})
		}
	}
	// A stable order keeps concurrent PostgreSQL claimers from locking
	// rows in opposite orders.
	sort.Slice(claims, func(i, j int) bool {
		a, b := claims[i], claims[j]
		if a.userID != b.userID {
			return a.userID < b.userID
		}
		return a.deviceID < b.deviceID
	})
	result := map[string]map[string]map[string]json.RawMessage{}
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		clear(result)
		for _, c := range claims {
			keyID, keyJSON, ok, err := s.claimOne(ctx, tx, c.userID, c.deviceID, c.algorithm)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			if result[c.userID] == nil {
				result[c.userID] = map[string]map[string]json.RawMessage{}
			}
			result[c.userID][c.deviceID] = map[string]json.RawMessage{c.algorithm + ":" + keyID: json.RawMessage(keyJSON)}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"one_time_keys": result, "failures": failures})
}

// claimOneTimeKey deletes and returns one of the device's one-time keys
// in one statement. On PostgreSQL, FOR UPDATE SKIP LOCKED makes a
// concurrent claimer take a different row instead of both picking the
// same one (and one of them coming back empty); SQLite has one writer.
const (
	claimOneTimeKeySQLite = `
		DELETE FROM keyserver_one_time_keys
		WHERE (user_id, device_id, algorithm, key_id) IN (
			SELECT user_id, device_id, algorithm, key_id FROM keyserver_one_time_keys
			WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
			ORDER BY created_ts, key_id LIMIT 1)
		RETURNING key_id, key_json`
	claimOneTimeKeyPostgres = `
		DELETE FROM keyserver_one_time_keys
		WHERE (user_id, device_id, algorithm, key_id) IN (
			SELECT user_id, device_id, algorithm, key_id FROM keyserver_one_time_keys
			WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
			ORDER BY created_ts, key_id LIMIT 1 FOR UPDATE SKIP LOCKED)
		RETURNING key_id, key_json`
)

// claimOne claims one key of algorithm from the device: a one-time key,
// else the fallback key. ok is false when the device has neither.
func (s *Server) claimOne(ctx context.Context, tx storage.Tx, userID, deviceID, algorithm string) (keyID, keyJSON string, ok bool, err error) {
	query := claimOneTimeKeySQLite
	if s.db.Engine() == storage.Postgres {
		query = claimOneTimeKeyPostgres
	}
	err = tx.QueryRow(ctx, query, userID, deviceID, algorithm).Scan(&keyID, &keyJSON)
	if err == nil {
		return keyID, keyJSON, true, nil
	}
	if !storage.IsNoRows(err) {
		return "", "", false, err
	}
	err = tx.QueryRow(ctx, `
		UPDATE keyserver_fallback_keys SET used = TRUE
		WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
		RETURNING key_id, key_json`, userID, deviceID, algorithm).Scan(&keyID, &keyJSON)
	if storage.IsNoRows(err) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, err
	}
	return keyID, keyJSON, true, nil
}
