package clientapi

import (
	"context"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// InsertTestUser creates an account with one device and a session directly
// in the database and returns the session's access token. Tests on this
// branch use it because registration is built elsewhere.
func InsertTestUser(t testing.TB, db *storage.DB, localpart string, guest bool) string {
	t.Helper()
	ctx := context.Background()
	token := newToken(accessTokenPrefix)
	now := time.Now().UnixMilli()
	err := db.Write(ctx, func(tx storage.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO accounts (localpart, created_ts, is_guest) VALUES ($1, $2, $3)`,
			localpart, now, guest); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO devices (localpart, device_id, created_ts) VALUES ($1, $2, $3)`,
			localpart, "TESTDEVICE", now); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO sessions (localpart, device_id, access_token_hash, created_ts) VALUES ($1, $2, $3, $4)`,
			localpart, "TESTDEVICE", hashToken(token), now)
		return err
	})
	if err != nil {
		t.Fatalf("inserting test user %s: %v", localpart, err)
	}
	return token
}
