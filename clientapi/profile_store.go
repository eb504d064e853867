package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Profile returns every field of a local user's profile, keyed by field
// name, each value its JSON encoding. A user who never set a field has an
// empty profile. Unknown local users and remote users are M_NOT_FOUND.
//
// The room component reads displayname and avatar_url from it to fill
// m.room.member events.
func (s *Server) Profile(ctx context.Context, userID string) (map[string]json.RawMessage, error) {
	local, err := s.localProfileOwner(userID)
	if err != nil {
		return nil, err
	}
	// One row per field, or one row with NULLs when the account exists
	// but has no fields; no row at all when there is no such account.
	rows, err := s.db.Reader().Query(ctx, `
		SELECT f.field, f.value
		FROM accounts a LEFT JOIN profile_fields f ON f.localpart = a.localpart
		WHERE a.localpart = $1`, local)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	fields := map[string]json.RawMessage{}
	exists := false
	for rows.Next() {
		exists = true
		var field, value *string
		if err := rows.Scan(&field, &value); err != nil {
			return nil, err
		}
		if field != nil && value != nil {
			fields[*field] = json.RawMessage(*value)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if !exists {
		return nil, mxerr.New(mxerr.NotFound, "no such user")
	}
	return fields, nil
}

// loadProfileField returns one field of a local user's profile. found is
// false when the field is not set; an unknown user is M_NOT_FOUND.
func (s *Server) loadProfileField(ctx context.Context, local, key string) (value json.RawMessage, found bool, err error) {
	var v *string
	err = s.db.Reader().QueryRow(ctx, `
		SELECT f.value
		FROM accounts a LEFT JOIN profile_fields f ON f.localpart = a.localpart AND f.field = $2
		WHERE a.localpart = $1`, local, key).Scan(&v)
	if storage.IsNoRows(err) {
		return nil, false, mxerr.New(mxerr.NotFound, "no such user")
	}
	if err != nil {
		return nil, false, err
	}
	if v == nil {
		return nil, false, nil
	}
	return json.RawMessage(*v), true, nil
}

// storeProfileField sets a field, refusing with M_PROFILE_TOO_LARGE a value
// that would make the whole profile 64 KiB or more. changed reports
// whether the stored value differs from the previous one.
func (s *Server) storeProfileField(ctx context.Context, local, key string, value json.RawMessage) (changed bool, err error) {
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		// Upserting the profiles row locks it on PostgreSQL: concurrent
		// writers to one profile take turns, so the size check holds.
		if _, err := tx.Exec(ctx, `
			INSERT INTO profiles (localpart, updated_ts) VALUES ($1, $2)
			ON CONFLICT (localpart) DO UPDATE SET updated_ts = excluded.updated_ts`,
			local, time.Now().UnixMilli()); err != nil {
			return err
		}
		fields, err := profileFieldsTx(ctx, tx, local)
		if err != nil {
			return err
		}
		old, had := fields[key]
		if had && bytes.Equal(old, value) {
			changed = false
			return nil
		}
		fields[key] = value
		encoded, err := json.Marshal(fields)
		if err != nil {
			return err
		}
		// Spec: "the total profile MUST be under 64 KiB".
		if len(encoded) >= maxProfileSize {
			return mxerr.New(errProfileTooLarge, "the profile would be %d bytes; it must stay under %d", len(encoded), maxProfileSize)
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO profile_fields (localpart, field, value) VALUES ($1, $2, $3)
			ON CONFLICT (localpart, field) DO UPDATE SET value = excluded.value`,
			local, key, string(value)); err != nil {
			return err
		}
		changed = true
		return nil
	})
	return changed, err
}

// deleteProfileFieldRow removes a field; changed reports whether it existed.
func (s *Server) deleteProfileFieldRow(ctx context.Context, local, key string) (changed bool, err error) {
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		res, err := tx.Exec(ctx, `DELETE FROM profile_fields WHERE localpart = $1 AND field = $2`, local, key)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		changed = n > 0
		return err
	})
	return changed, err
}

// profileFieldsTx reads a profile inside a write transaction.
func profileFieldsTx(ctx context.Context, tx storage.Tx, local string) (map[string]json.RawMessage, error) {
	rows, err := tx.Query(ctx, `SELECT field, value FROM profile_fields WHERE localpart = $1`, local)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	fields := map[string]json.RawMessage{}
	for rows.Next() {
		var field, value string
		if err := rows.Scan(&field, &value); err != nil {
			return nil, err
		}
		fields[field] = json.RawMessage(value)
	}
	return fields, rows.Err()
}
