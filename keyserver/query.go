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

// queryKeys answers POST /keys/query: device keys and cross-signing keys
// with the signatures the caller may see. Users of other servers are
// answered from the cache of their keys when it is fresh, else asked
// from their servers in parallel, each for at most timeout (default 10
// s); a server that fails or does not answer in time is in failures.
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
		Timeout    *int64              `json:"timeout"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	out := newKeysResult()
	remote := map[string]map[string][]string{}
	for userID, wanted := range req.DeviceKeys {
		if !s.isLocal(userID) {
			if server := serverOf(userID); server != "" {
				if remote[server] == nil {
					remote[server] = map[string][]string{}
				}
				remote[server][userID] = wanted
			}
			continue
		}
		if err := s.localKeys(ctx, d.UserID, userID, wanted, out); err != nil {
			return err
		}
	}
	if err := s.queryRemote(ctx, remote, requestTimeout(req.Timeout), out); err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{
		"device_keys": out.DeviceKeys, "master_keys": out.MasterKeys, "self_signing_keys": out.SelfSigningKeys,
		"user_signing_keys": out.UserSigningKeys, "failures": out.Failures,
	})
}

// keysResult is a /keys/query answer being built.
type keysResult struct {
	DeviceKeys      map[string]map[string]json.RawMessage
	MasterKeys      map[string]json.RawMessage
	SelfSigningKeys map[string]json.RawMessage
	UserSigningKeys map[string]json.RawMessage
	Failures        map[string]any
}

func newKeysResult() *keysResult {
	return &keysResult{DeviceKeys: map[string]map[string]json.RawMessage{}, MasterKeys: map[string]json.RawMessage{},
		SelfSigningKeys: map[string]json.RawMessage{}, UserSigningKeys: map[string]json.RawMessage{}, Failures: map[string]any{}}
}

// localKeys adds a local user's keys to out as requester may see them
// (requester "" is another server: the owner's signatures only, and no
// user-signing key).
func (s *Server) localKeys(ctx context.Context, requester, userID string, wanted []string, out *keysResult) error {
	devices, err := s.queryUserDevices(ctx, requester, userID, wanted)
	if err != nil {
		return err
	}
	out.DeviceKeys[userID] = devices
	keys, err := loadCrossSigningKeys(ctx, s.db.Reader(), userID)
	if err != nil {
		return err
	}
	for keyType, dst := range map[string]map[string]json.RawMessage{
		keyTypeMaster: out.MasterKeys, keyTypeSelfSigning: out.SelfSigningKeys, keyTypeUserSigning: out.UserSigningKeys,
	} {
		k := keys[keyType]
		if k == nil || (keyType == keyTypeUserSigning && userID != requester) {
			continue
		}
		obj, err := s.withVisibleSignatures(ctx, requester, userID, k.publicKey, k.canonical, nil)
		if err != nil {
			return err
		}
		dst[userID] = obj
	}
	return nil
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
	local := map[string]map[string]string{}
	remote := map[string]map[string]map[string]string{}
	for userID, devices := range req.OneTimeKeys {
		if s.isLocal(userID) {
			local[userID] = devices
		} else if server := serverOf(userID); server != "" {
			if remote[server] == nil {
				remote[server] = map[string]map[string]string{}
			}
			remote[server][userID] = devices
		}
	}
	result, err := s.claimLocal(ctx, local)
	if err != nil {
		return err
	}
	failures := s.claimRemote(ctx, remote, requestTimeout(req.Timeout), result)
	return httpx.OK(w, map[string]any{"one_time_keys": result, "failures": failures})
}

// claimLocal claims one key per requested device of local users.
func (s *Server) claimLocal(ctx context.Context, req map[string]map[string]string) (map[string]map[string]map[string]json.RawMessage, error) {
	type claim struct{ userID, deviceID, algorithm string }
	var claims []claim
	for userID, devices := range req {
		if !s.isLocal(userID) {
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
		// A claim of a watched device raises the key-count stream head
		// (keyCountsChanged): take its row lock before any key row, as
		// uploads do, so that no two claimers wait on each other.
		for _, c := range claims {
			if s.watchKeyCounts != nil && s.watchKeyCounts(c.userID) {
				if err := s.lockKeyCountHead(ctx, tx); err != nil {
					return err
				}
				break
			}
		}
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
	return result, err
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
		if err := s.keyCountsChanged(ctx, tx, userID, deviceID); err != nil {
			return "", "", false, err
		}
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
	// A fallback key claimed for the first time stops being unused.
	if err := s.keyCountsChanged(ctx, tx, userID, deviceID); err != nil {
		return "", "", false, err
	}
	return keyID, keyJSON, true, nil
}
