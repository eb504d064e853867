package clientapi

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

func TestSweepForgetsOldIPsAndExpiredSessions(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		cfg := config.Defaults()
		cfg.ClientAPI.IPRetention = config.Duration(24 * time.Hour)
		accounts, err := OpenAccounts(ctx, &cfg, db)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		one := int64(1)
		if _, err := accounts.CreateRegistrationToken(ctx, "tok", &one, time.Time{}); err != nil {
			t.Fatal(err)
		}
		err = db.Write(ctx, func(tx storage.Tx) error {
			if err := insertAccount(ctx, tx, "ann", "", false, false, now); err != nil {
				return err
			}
			for _, d := range []struct {
				id string
				ts time.Time
			}{{"OLD", now.Add(-48 * time.Hour)}, {"NEW", now.Add(-time.Hour)}} {
				if _, err := tx.Exec(ctx, `INSERT INTO devices (localpart, device_id, created_ts, last_seen_ts, last_seen_ip, last_seen_user_agent)
					VALUES ('ann', $1, $2, $2, '192.0.2.1', 'agent')`, d.id, d.ts.UnixMilli()); err != nil {
					return err
				}
			}
			// A stale UIA session holding the token's only use.
			if _, err := tx.Exec(ctx, `INSERT INTO uia_sessions (session_id, purpose, completed, registration_token, created_ts)
				VALUES ('stale', 'register', '["m.login.registration_token"]', 'tok', $1)`, now.Add(-2*uiaSessionLifetime).UnixMilli()); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `UPDATE registration_tokens SET pending = 1 WHERE token = 'tok'`)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := accounts.sweep(ctx, now); err != nil {
			t.Fatal(err)
		}
		ip := func(id string) (sql.NullString, sql.NullString) {
			var addr, ua sql.NullString
			if err := db.Reader().QueryRow(ctx, `SELECT last_seen_ip, last_seen_user_agent FROM devices WHERE device_id = $1`, id).Scan(&addr, &ua); err != nil {
				t.Fatal(err)
			}
			return addr, ua
		}
		if addr, ua := ip("OLD"); addr.Valid || ua.Valid {
			t.Errorf("old device keeps IP %v / UA %v past retention", addr, ua)
		}
		if addr, _ := ip("NEW"); addr.String != "192.0.2.1" {
			t.Errorf("recent device lost its IP: %v", addr)
		}
		tokens, err := accounts.RegistrationTokens(ctx)
		if err != nil || tokens[0].Pending != 0 || !tokens[0].Valid(now) {
			t.Errorf("token after the stale session expired: %+v %v", tokens, err)
		}
		var n int
		if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM uia_sessions`).Scan(&n); err != nil || n != 0 {
			t.Errorf("uia sessions left: %d %v", n, err)
		}
	})
}

func TestPasswordHashing(t *testing.T) {
	long := string(make([]byte, 100)) + "x"
	for _, pw := range []string{"hunter2hunter2", long} {
		h, err := hashPassword(pw)
		if err != nil {
			t.Fatal(err)
		}
		if !checkPassword(h, pw) || checkPassword(h, pw+"!") {
			t.Errorf("checkPassword wrong for a %d-byte password", len(pw))
		}
	}
	// Passwords sharing the first 72 bytes must not match each other.
	a, b := string(make([]byte, 72))+"a", string(make([]byte, 72))+"b"
	h, _ := hashPassword(a)
	if checkPassword(h, b) {
		t.Error("long passwords were truncated")
	}
	if checkPassword("", "anything") {
		t.Error("an empty hash must never match")
	}
}
