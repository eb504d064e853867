package keyserver

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Server-side key backups. Spec: client-server-api, "Server-side key
// backups", and the key_backup API. Session keys arrive encrypted by the
// client (session_data); the server stores and compares only metadata.

// backupAlgorithm is the one backup algorithm the spec defines.
// Spec: "Backup algorithm: m.megolm_backup.v1.curve25519-aes-sha2".
const backupAlgorithm = "m.megolm_backup.v1.curve25519-aes-sha2"

// backupVersion is a keyserver_backup_versions row.
type backupVersion struct {
	version   int64
	algorithm string
	authData  string
	etag      int64
}

// backupVersionBody is the body of POST and PUT /room_keys/version.
type backupVersionBody struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Version   *string         `json:"version"`
}

// validate checks the algorithm and its auth_data: a curve25519
// public_key and optional signatures.
func (b *backupVersionBody) validate() error {
	if b.Algorithm == "" || len(b.AuthData) == 0 {
		return mxerr.New(mxerr.MissingParam, "algorithm and auth_data are required")
	}
	if b.Algorithm != backupAlgorithm {
		return mxerr.New(mxerr.InvalidParam, "unsupported backup algorithm %q", b.Algorithm)
	}
	var authData struct {
		PublicKey  *string                      `json:"public_key"`
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(b.AuthData, &authData); err != nil || b.AuthData[0] != '{' {
		return mxerr.New(mxerr.BadJSON, "auth_data must be an object with a public_key string and signatures")
	}
	if authData.PublicKey == nil {
		return mxerr.New(mxerr.MissingParam, "auth_data.public_key is required")
	}
	if err := decodeCurve25519(*authData.PublicKey); err != nil {
		return mxerr.New(mxerr.InvalidParam, "auth_data.public_key: %v", err)
	}
	return nil
}

// currentBackup returns the user's latest version that is not deleted.
func currentBackup(ctx context.Context, q storage.Querier, userID string) (*backupVersion, error) {
	return scanBackup(q.QueryRow(ctx, `
		SELECT version, algorithm, auth_data, etag FROM keyserver_backup_versions
		WHERE user_id = $1 AND NOT deleted ORDER BY version DESC LIMIT 1`, userID))
}

// backupByVersion returns one version unless it does not exist or was deleted.
func backupByVersion(ctx context.Context, q storage.Querier, userID, version string) (*backupVersion, error) {
	v, err := strconv.ParseInt(version, 10, 64)
	if err != nil {
		return nil, nil
	}
	return scanBackup(q.QueryRow(ctx, `
		SELECT version, algorithm, auth_data, etag FROM keyserver_backup_versions
		WHERE user_id = $1 AND version = $2 AND NOT deleted`, userID, v))
}

// knownBackup is backupByVersion with M_NOT_FOUND for a version that does
// not exist or was deleted.
func knownBackup(ctx context.Context, q storage.Querier, userID, version string) (*backupVersion, error) {
	b, err := backupByVersion(ctx, q, userID, version)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, mxerr.New(mxerr.NotFound, "unknown backup version")
	}
	return b, nil
}

func scanBackup(row interface{ Scan(...any) error }) (*backupVersion, error) {
	var b backupVersion
	err := row.Scan(&b.version, &b.algorithm, &b.authData, &b.etag)
	if storage.IsNoRows(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &b, nil
}

func backupCount(ctx context.Context, q storage.Querier, userID string, version int64) (int64, error) {
	var n int64
	err := q.QueryRow(ctx, `SELECT COUNT(*) FROM keyserver_backup_keys WHERE user_id = $1 AND version = $2`, userID, version).Scan(&n)
	return n, err
}

// createBackupVersion answers POST /room_keys/version.
func (s *Server) createBackupVersion(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	ctx := r.Context()
	var body backupVersionBody
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	if err := body.validate(); err != nil {
		return err
	}
	var version int64
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		// Deleted versions keep their rows, so a number is never reused.
		if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) + 1 FROM keyserver_backup_versions WHERE user_id = $1`,
			d.UserID).Scan(&version); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
			INSERT INTO keyserver_backup_versions (user_id, version, algorithm, auth_data, created_ts)
			VALUES ($1, $2, $3, $4, $5)`, d.UserID, version, body.Algorithm, string(body.AuthData), time.Now().UnixMilli())
		if storage.IsUniqueViolation(err) {
			return mxerr.New(mxerr.LimitExceeded, "another backup version was created at the same time; retry").With("retry_after_ms", int64(100))
		}
		return err
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"version": strconv.FormatInt(version, 10)})
}

// getBackupVersion answers GET /room_keys/version[/{version}].
func (s *Server) getBackupVersion(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	ctx := r.Context()
	var b *backupVersion
	var count int64
	err := s.db.Read(ctx, func(q storage.Querier) error {
		var err error
		if v := chi.URLParam(r, "version"); v != "" {
			b, err = backupByVersion(ctx, q, d.UserID, v)
		} else {
			b, err = currentBackup(ctx, q, d.UserID)
		}
		if err != nil || b == nil {
			return err
		}
		count, err = backupCount(ctx, q, d.UserID, b.version)
		return err
	})
	if err != nil {
		return err
	}
	if b == nil {
		return mxerr.New(mxerr.NotFound, "unknown backup version")
	}
	return httpx.OK(w, map[string]any{
		"algorithm": b.algorithm,
		"auth_data": json.RawMessage(b.authData),
		"count":     count,
		"etag":      strconv.FormatInt(b.etag, 10),
		"version":   strconv.FormatInt(b.version, 10),
	})
}

// updateBackupVersion answers PUT /room_keys/version/{version}: only
// auth_data may change.
func (s *Server) updateBackupVersion(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	ctx := r.Context()
	version := chi.URLParam(r, "version")
	var body backupVersionBody
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.Version != nil && *body.Version != version {
		return mxerr.New(mxerr.InvalidParam, "the version in the body does not match the path")
	}
	if err := body.validate(); err != nil {
		return err
	}
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		b, err := knownBackup(ctx, tx, d.UserID, version)
		if err != nil {
			return err
		}
		if b.algorithm != body.Algorithm {
			return mxerr.New(mxerr.InvalidParam, "the algorithm does not match the backup's")
		}
		_, err = tx.Exec(ctx, `UPDATE keyserver_backup_versions SET auth_data = $1 WHERE user_id = $2 AND version = $3`,
			string(body.AuthData), d.UserID, b.version)
		return err
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// deleteBackupVersion answers DELETE /room_keys/version/{version}: the
// version and all its keys go; the number stays taken.
func (s *Server) deleteBackupVersion(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	ctx := r.Context()
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		b, err := knownBackup(ctx, tx, d.UserID, chi.URLParam(r, "version"))
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM keyserver_backup_keys WHERE user_id = $1 AND version = $2`, d.UserID, b.version); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE keyserver_backup_versions SET deleted = TRUE, auth_data = '{}' WHERE user_id = $1 AND version = $2`,
			d.UserID, b.version)
		return err
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// keyBackupData is one backed-up session key.
// Spec: the KeyBackupData schema.
type keyBackupData struct {
	FirstMessageIndex *int64          `json:"first_message_index"`
	ForwardedCount    *int64          `json:"forwarded_count"`
	IsVerified        *bool           `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

func (k *keyBackupData) validate(roomID, sessionID string) error {
	if k.FirstMessageIndex == nil || k.ForwardedCount == nil || k.IsVerified == nil || len(k.SessionData) == 0 {
		return mxerr.New(mxerr.MissingParam, "key %s/%s needs first_message_index, forwarded_count, is_verified and session_data", roomID, sessionID)
	}
	if *k.FirstMessageIndex < 0 || *k.ForwardedCount < 0 {
		return mxerr.New(mxerr.InvalidParam, "key %s/%s: counts must not be negative", roomID, sessionID)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(k.SessionData, &obj); err != nil || obj == nil {
		return mxerr.New(mxerr.BadJSON, "key %s/%s: session_data must be an object", roomID, sessionID)
	}
	return nil
}

// better reports whether k should replace old.
// Spec: "Server-side key backups": verified beats unverified; then the
// lower first_message_index; then the lower forwarded_count.
func (k *keyBackupData) better(old *keyBackupData) bool {
	if *k.IsVerified != *old.IsVerified {
		return *k.IsVerified
	}
	if *k.FirstMessageIndex != *old.FirstMessageIndex {
		return *k.FirstMessageIndex < *old.FirstMessageIndex
	}
	return *k.ForwardedCount < *old.ForwardedCount
}

// backupKeysBody is the all-rooms body; a room body is its inner map.
type roomSessions struct {
	Sessions map[string]*keyBackupData `json:"sessions"`
}

// putBackupKeys answers PUT /room_keys/keys[/{roomId}[/{sessionId}]].
func (s *Server) putBackupKeys(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	ctx := r.Context()
	roomID, sessionID := chi.URLParam(r, "roomId"), chi.URLParam(r, "sessionId")
	rooms := map[string]roomSessions{}
	switch {
	case sessionID != "":
		var k keyBackupData
		if err := httpx.DecodeJSON(r, &k); err != nil {
			return err
		}
		rooms[roomID] = roomSessions{Sessions: map[string]*keyBackupData{sessionID: &k}}
	case roomID != "":
		var room roomSessions
		if err := httpx.DecodeJSON(r, &room); err != nil {
			return err
		}
		rooms[roomID] = room
	default:
		var all struct {
			Rooms map[string]roomSessions `json:"rooms"`
		}
		if err := httpx.DecodeJSON(r, &all); err != nil {
			return err
		}
		rooms = all.Rooms
	}
	for room, rs := range rooms {
		for session, k := range rs.Sessions {
			if k == nil {
				return mxerr.New(mxerr.BadJSON, "key %s/%s must be an object", room, session)
			}
			if err := k.validate(room, session); err != nil {
				return err
			}
		}
	}
	version := r.URL.Query().Get("version")
	var etag, count int64
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		b, err := writableBackup(ctx, tx, d.UserID, version)
		if err != nil {
			return err
		}
		changed := false
		for room, rs := range rooms {
			for session, k := range rs.Sessions {
				stored, err := storeBackupKey(ctx, tx, d.UserID, b.version, room, session, k)
				if err != nil {
					return err
				}
				changed = changed || stored
			}
		}
		etag, count, err = bumpEtag(ctx, tx, d.UserID, b, changed)
		return err
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"etag": strconv.FormatInt(etag, 10), "count": count})
}

// writableBackup returns the version keys may be written to: only the
// current one. Spec: a different version is 403 M_WRONG_ROOM_KEYS_VERSION
// carrying current_version; no backup at all is 404 M_NOT_FOUND.
func writableBackup(ctx context.Context, tx storage.Tx, userID, version string) (*backupVersion, error) {
	if version == "" {
		return nil, mxerr.New(mxerr.MissingParam, "the version query parameter is required")
	}
	b, err := currentBackup(ctx, tx, userID)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, mxerr.New(mxerr.NotFound, "no backup exists")
	}
	if strconv.FormatInt(b.version, 10) != version {
		return nil, mxerr.New(mxerr.WrongRoomKeysVersion, "wrong backup version").
			WithStatus(http.StatusForbidden).With("current_version", strconv.FormatInt(b.version, 10))
	}
	return b, nil
}

// storeBackupKey stores k unless the stored key for the session is better.
func storeBackupKey(ctx context.Context, tx storage.Tx, userID string, version int64, roomID, sessionID string, k *keyBackupData) (bool, error) {
	var old keyBackupData
	var fmi, fc int64
	var verified bool
	err := tx.QueryRow(ctx, `
		SELECT first_message_index, forwarded_count, is_verified FROM keyserver_backup_keys
		WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4`,
		userID, version, roomID, sessionID).Scan(&fmi, &fc, &verified)
	if err == nil {
		old = keyBackupData{FirstMessageIndex: &fmi, ForwardedCount: &fc, IsVerified: &verified}
		if !k.better(&old) {
			return false, nil
		}
	} else if !storage.IsNoRows(err) {
		return false, err
	}
	_, err = tx.Exec(ctx, `
		INSERT INTO keyserver_backup_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET
			first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count,
			is_verified = excluded.is_verified, session_data = excluded.session_data`,
		userID, version, roomID, sessionID, *k.FirstMessageIndex, *k.ForwardedCount, *k.IsVerified, string(k.SessionData))
	return err == nil, err
}

// bumpEtag advances the version's etag if its keys changed and returns
// the etag and key count.
func bumpEtag(ctx context.Context, tx storage.Tx, userID string, b *backupVersion, changed bool) (etag, count int64, err error) {
	etag = b.etag
	if changed {
		if err := tx.QueryRow(ctx, `
			UPDATE keyserver_backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2
			RETURNING etag`, userID, b.version).Scan(&etag); err != nil {
			return 0, 0, err
		}
	}
	count, err = backupCount(ctx, tx, userID, b.version)
	return etag, count, err
}

// getBackupKeys answers GET /room_keys/keys[/{roomId}[/{sessionId}]].
func (s *Server) getBackupKeys(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	ctx := r.Context()
	roomID, sessionID := chi.URLParam(r, "roomId"), chi.URLParam(r, "sessionId")
	version := r.URL.Query().Get("version")
	if version == "" {
		return mxerr.New(mxerr.MissingParam, "the version query parameter is required")
	}
	rooms := map[string]roomSessions{}
	err := s.db.Read(ctx, func(q storage.Querier) error {
		b, err := knownBackup(ctx, q, d.UserID, version)
		if err != nil {
			return err
		}
		rows, err := q.Query(ctx, `
			SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
			FROM keyserver_backup_keys
			WHERE user_id = $1 AND version = $2 AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4)`,
			d.UserID, b.version, roomID, sessionID)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var room, session, data string
			var fmi, fc int64
			var verified bool
			if err := rows.Scan(&room, &session, &fmi, &fc, &verified, &data); err != nil {
				return err
			}
			if rooms[room].Sessions == nil {
				rooms[room] = roomSessions{Sessions: map[string]*keyBackupData{}}
			}
			rooms[room].Sessions[session] = &keyBackupData{FirstMessageIndex: &fmi, ForwardedCount: &fc, IsVerified: &verified, SessionData: json.RawMessage(data)}
		}
		return rows.Err()
	})
	if err != nil {
		return err
	}
	switch {
	case sessionID != "":
		k := rooms[roomID].Sessions[sessionID]
		if k == nil {
			return mxerr.New(mxerr.NotFound, "no key for this session")
		}
		return httpx.OK(w, k)
	case roomID != "":
		room := rooms[roomID]
		if room.Sessions == nil {
			room.Sessions = map[string]*keyBackupData{}
		}
		return httpx.OK(w, room)
	default:
		return httpx.OK(w, map[string]any{"rooms": rooms})
	}
}

// deleteBackupKeys answers DELETE /room_keys/keys[/{roomId}[/{sessionId}]].
func (s *Server) deleteBackupKeys(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	ctx := r.Context()
	roomID, sessionID := chi.URLParam(r, "roomId"), chi.URLParam(r, "sessionId")
	version := r.URL.Query().Get("version")
	if version == "" {
		return mxerr.New(mxerr.MissingParam, "the version query parameter is required")
	}
	var etag, count int64
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		b, err := knownBackup(ctx, tx, d.UserID, version)
		if err != nil {
			return err
		}
		res, err := tx.Exec(ctx, `
			DELETE FROM keyserver_backup_keys
			WHERE user_id = $1 AND version = $2 AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4)`,
			d.UserID, b.version, roomID, sessionID)
		if err != nil {
			return err
		}
		n, _ := res.RowsAffected()
		etag, count, err = bumpEtag(ctx, tx, d.UserID, b, n > 0)
		return err
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"etag": strconv.FormatInt(etag, 10), "count": count})
}
