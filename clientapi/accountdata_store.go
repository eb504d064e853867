package clientapi

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// AccountDataStream is the stream name Deps.Notify hears for account data.
const AccountDataStream = "account_data"

// accountDataLock is the PostgreSQL advisory lock that serialises account
// data writers. Positions come from a sequence, and without it a
// transaction holding position 5 could commit after one holding 6: a
// reader that had already seen 6 would never see 5. Holding the lock from
// before the position is drawn until commit makes positions commit in
// order. SQLite has a single writer and needs nothing.
const accountDataLock = 4242101

// AccountData is one account data entry as the sync component reads it.
type AccountData struct {
	// RoomID is the room the entry belongs to, or "" for global account data.
	RoomID string
	// Type is the account data type, such as m.direct or m.tag.
	Type string
	// Content is the JSON object the client stored.
	Content json.RawMessage
	// Position is the entry's stream position: it changes on every write.
	Position int64
}

// AccountDataSince returns userID's account data entries (global and
// per-room) whose latest change has a stream position in (since, latest],
// in position order, and latest, the account data stream head when read.
// A consumer stores latest in its token and passes it as since next time.
// Only the newest value of each (room, type) exists, so a burst of writes
// to one type yields one entry.
func (s *Server) AccountDataSince(ctx context.Context, userID string, since int64) (entries []AccountData, latest int64, err error) {
	local := s.localpart(userID)
	if local == "" {
		return nil, 0, mxerr.New(mxerr.NotFound, "%q is not a local user", userID)
	}
	err = s.db.Read(ctx, func(q storage.Querier) error {
		if err := q.QueryRow(ctx, `SELECT COALESCE(MAX(position), 0) FROM account_data`).Scan(&latest); err != nil {
			return err
		}
		rows, err := q.Query(ctx, `
			SELECT room_id, type, content, position FROM account_data
			WHERE localpart = $1 AND position > $2 AND position <= $3
			ORDER BY position`, local, since, latest)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e AccountData
			var content string
			if err := rows.Scan(&e.RoomID, &e.Type, &content, &e.Position); err != nil {
				return err
			}
			e.Content = json.RawMessage(content)
			if since == 0 && isDeletedAccountData(e.Content) {
				// MSC3391: a deleted entry is reported to incremental
				// syncs (as {}) and left out of initial ones.
				continue
			}
			entries = append(entries, e)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, 0, err
	}
	return entries, latest, nil
}

// AccountDataHead returns the account data stream head.
func (s *Server) AccountDataHead(ctx context.Context) (int64, error) {
	var latest int64
	err := s.db.Reader().QueryRow(ctx, `SELECT COALESCE(MAX(position), 0) FROM account_data`).Scan(&latest)
	return latest, err
}

// GlobalAccountData returns the content of one of userID's global
// account data entries, or nil if it is not set.
func (s *Server) GlobalAccountData(ctx context.Context, userID, dataType string) (json.RawMessage, error) {
	local := s.localpart(userID)
	if local == "" {
		return nil, mxerr.New(mxerr.NotFound, "%q is not a local user", userID)
	}
	content, err := s.loadAccountData(ctx, local, "", dataType)
	if err != nil || isDeletedAccountData(content) {
		return nil, err
	}
	return content, nil
}

// loadAccountData returns the content of one entry, or nil if it is not
// set. A deleted entry (MSC3391) is returned as its empty object.
func (s *Server) loadAccountData(ctx context.Context, local, roomID, dataType string) (json.RawMessage, error) {
	var content string
	err := s.db.Reader().QueryRow(ctx, `
		SELECT content FROM account_data WHERE localpart = $1 AND room_id = $2 AND type = $3`,
		local, roomID, dataType).Scan(&content)
	if storage.IsNoRows(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return json.RawMessage(content), nil
}

// storeAccountData writes one entry at a new stream position and returns
// the position. The stream is told after commit.
func (s *Server) storeAccountData(ctx context.Context, local, roomID, dataType string, content json.RawMessage) (int64, error) {
	var position int64
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		var err error
		position, err = s.storeAccountDataTx(ctx, tx, local, roomID, dataType, content)
		return err
	})
	return position, err
}

// WriteServerAccountData stores global account data of a type the server
// manages (m.push_rules) inside the caller's transaction, so the caller's
// own writes and the account data stream advance together. Clients cannot
// set these types (putAccountData refuses them), so this is their only
// writer.
func (s *Server) WriteServerAccountData(ctx context.Context, tx storage.Tx, userID, dataType string, content json.RawMessage) error {
	if !serverManagedAccountData[dataType] {
		return fmt.Errorf("clientapi: %s is not server-managed account data", dataType)
	}
	local := s.localpart(userID)
	if local == "" {
		return mxerr.New(mxerr.NotFound, "%q is not a local user", userID)
	}
	_, err := s.storeAccountDataTx(ctx, tx, local, "", dataType, content)
	return err
}

func (s *Server) storeAccountDataTx(ctx context.Context, tx storage.Tx, local, roomID, dataType string, content json.RawMessage) (int64, error) {
	return storeAccountData(ctx, s.db, tx, s.notify, local, roomID, dataType, content)
}

// lockAccountData takes the account data writers' lock inside tx (on
// PostgreSQL; SQLite's single writer needs none), held until tx ends. A
// read-modify-write of an entry (room tags) takes it before its read, so
// that two such writes cannot both read the old value; taking it again in
// the same transaction is harmless.
func lockAccountData(ctx context.Context, db *storage.DB, tx storage.Tx) error {
	if db.Engine() != storage.Postgres {
		return nil
	}
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, accountDataLock)
	return err
}

// storeAccountData writes one entry inside tx and tells notify (nil: no
// one) the new position after commit. The Server and the Accounts store
// (device deletions, also run by the admin commands) both write through it.
func storeAccountData(ctx context.Context, db *storage.DB, tx storage.Tx, notify func(string, int64), local, roomID, dataType string, content json.RawMessage) (int64, error) {
	if err := lockAccountData(ctx, db, tx); err != nil {
		return 0, err
	}
	// Delete and insert rather than update: the new row draws a new
	// position, and the old position leaves the stream.
	if _, err := tx.Exec(ctx, `
		DELETE FROM account_data WHERE localpart = $1 AND room_id = $2 AND type = $3`,
		local, roomID, dataType); err != nil {
		return 0, err
	}
	var position int64
	if err := tx.QueryRow(ctx, `
		INSERT INTO account_data (localpart, room_id, type, content) VALUES ($1, $2, $3, $4)
		RETURNING position`, local, roomID, dataType, string(content)).Scan(&position); err != nil {
		return 0, err
	}
	if notify != nil {
		tx.AfterCommit(func() { notify(AccountDataStream, position) })
	}
	return position, nil
}

// streamAdvanced tells Deps.Notify, if set, that stream reached pos.
func (s *Server) streamAdvanced(stream string, pos int64) {
	if s.notify != nil {
		s.notify(stream, pos)
	}
}

// isDeletedAccountData reports whether content is the empty object that
// marks a deleted entry. MSC3391: setting an entry to {} deletes it, and
// a deletion is stored as {} so that incremental syncs carry it.
func isDeletedAccountData(content json.RawMessage) bool {
	return string(content) == "{}"
}

// deleteAccountDataTx deletes one entry inside tx: an existing entry is
// replaced by {} at a new stream position; an unset one stays unset.
func (s *Server) deleteAccountDataTx(ctx context.Context, tx storage.Tx, local, roomID, dataType string) error {
	return deleteAccountData(ctx, s.db, tx, s.notify, local, roomID, dataType)
}

// deleteAccountData is deleteAccountDataTx for storeAccountData's callers.
func deleteAccountData(ctx context.Context, db *storage.DB, tx storage.Tx, notify func(string, int64), local, roomID, dataType string) error {
	var content string
	err := tx.QueryRow(ctx, `
		SELECT content FROM account_data WHERE localpart = $1 AND room_id = $2 AND type = $3`,
		local, roomID, dataType).Scan(&content)
	if storage.IsNoRows(err) || (err == nil && isDeletedAccountData(json.RawMessage(content))) {
		return nil
	}
	if err != nil {
		return err
	}
	_, err = storeAccountData(ctx, db, tx, notify, local, roomID, dataType, json.RawMessage("{}"))
	return err
}
