package clientapi

import (
	"context"
	"database/sql"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// The administration API: what `myelin user ...` and `myelin token ...`
// call. It works on the database alone, with or without a running server.

// User describes an account for administrators.
type User struct {
	UserID      string
	Admin       bool
	Guest       bool
	Deactivated bool
	Created     time.Time
}

// CreateUser creates an account with a password. The username is mapped
// to a localpart as registration does (lower-cased, then checked against
// the user ID grammar); the new user ID is returned.
func (a *Accounts) CreateUser(ctx context.Context, username, password string, admin bool) (string, error) {
	localpart, err := a.mapUsername(username)
	if err != nil {
		return "", err
	}
	if err := a.checkPasswordStrength(password); err != nil {
		return "", err
	}
	hash, err := hashPassword(password)
	if err != nil {
		return "", err
	}
	err = a.db.Write(ctx, func(tx storage.Tx) error {
		return insertAccount(ctx, tx, localpart, hash, false, admin, time.Now())
	})
	if err != nil {
		return "", err
	}
	return a.userID(localpart), nil
}

// SetPassword replaces a user's password and logs out all their devices.
func (a *Accounts) SetPassword(ctx context.Context, localpart, password string) error {
	if err := a.checkPasswordStrength(password); err != nil {
		return err
	}
	hash, err := hashPassword(password)
	if err != nil {
		return err
	}
	return a.writeSessions(ctx, func(tx storage.Tx) error {
		return a.setPassword(ctx, tx, localpart, hash, true, "")
	})
}

// Deactivate deactivates an account and revokes all its tokens.
func (a *Accounts) Deactivate(ctx context.Context, localpart string) error {
	return a.writeSessions(ctx, func(tx storage.Tx) error {
		return a.deactivateAccount(ctx, tx, localpart, false)
	})
}

// Users lists every account, ordered by localpart.
func (a *Accounts) Users(ctx context.Context) ([]User, error) {
	rows, err := a.db.Reader().Query(ctx, `SELECT `+accountColumns+` FROM accounts ORDER BY localpart`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		acct, err := scanAccount(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, User{
			UserID: a.userID(acct.localpart), Admin: acct.isAdmin, Guest: acct.isGuest,
			Deactivated: acct.deactivated, Created: time.UnixMilli(acct.createdTS),
		})
	}
	return out, rows.Err()
}

// RegistrationToken is a token for token-authenticated registration.
// Spec: client-server-api, "Token-authenticated registration".
type RegistrationToken struct {
	Token string
	// UsesAllowed is nil for unlimited uses.
	UsesAllowed *int64
	// Pending counts registrations in progress that hold a use.
	Pending   int64
	Completed int64
	// Expires is zero for a token that never expires.
	Expires time.Time
	Created time.Time
}

// Valid reports whether the token can still be used at now.
func (t RegistrationToken) Valid(now time.Time) bool {
	if !t.Expires.IsZero() && !now.Before(t.Expires) {
		return false
	}
	return t.UsesAllowed == nil || t.Pending+t.Completed < *t.UsesAllowed
}

// tokenAlphabet is the opaque identifier grammar of registration tokens
// (spec appendices, "Opaque Identifiers"), used to generate and check them.
const tokenAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-"

// CreateRegistrationToken stores a token. An empty token is generated
// (16 characters); usesAllowed nil means unlimited; a zero expires means
// never.
func (a *Accounts) CreateRegistrationToken(ctx context.Context, token string, usesAllowed *int64, expires time.Time) (RegistrationToken, error) {
	if token == "" {
		token = randomString(16, tokenAlphabet[:62])
	}
	if len(token) > 64 {
		return RegistrationToken{}, mxerr.New(mxerr.InvalidParam, "a registration token is at most 64 characters")
	}
	for i := 0; i < len(token); i++ {
		if !containsByte(tokenAlphabet, token[i]) {
			return RegistrationToken{}, mxerr.New(mxerr.InvalidParam, "a registration token may only contain A-Z a-z 0-9 . _ ~ -")
		}
	}
	if usesAllowed != nil && *usesAllowed < 0 {
		return RegistrationToken{}, mxerr.New(mxerr.InvalidParam, "uses must not be negative")
	}
	now := time.Now()
	var expiry *int64
	if !expires.IsZero() {
		ms := expires.UnixMilli()
		expiry = &ms
	}
	err := a.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO registration_tokens (token, uses_allowed, expiry_ts, created_ts)
			VALUES ($1, $2, $3, $4)`, token, usesAllowed, expiry, now.UnixMilli())
		if storage.IsUniqueViolation(err) {
			return mxerr.New(mxerr.InvalidParam, "that registration token already exists")
		}
		return err
	})
	if err != nil {
		return RegistrationToken{}, err
	}
	return RegistrationToken{Token: token, UsesAllowed: usesAllowed, Expires: expires, Created: time.UnixMilli(now.UnixMilli())}, nil
}

// RegistrationTokens lists every token, oldest first.
func (a *Accounts) RegistrationTokens(ctx context.Context) ([]RegistrationToken, error) {
	rows, err := a.db.Reader().Query(ctx, `
		SELECT token, uses_allowed, pending, completed, expiry_ts, created_ts
		FROM registration_tokens ORDER BY created_ts, token`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []RegistrationToken
	for rows.Next() {
		var (
			t       RegistrationToken
			uses    sql.NullInt64
			expiry  sql.NullInt64
			created int64
		)
		if err := rows.Scan(&t.Token, &uses, &t.Pending, &t.Completed, &expiry, &created); err != nil {
			return nil, err
		}
		if uses.Valid {
			t.UsesAllowed = &uses.Int64
		}
		if expiry.Valid {
			t.Expires = time.UnixMilli(expiry.Int64)
		}
		t.Created = time.UnixMilli(created)
		out = append(out, t)
	}
	return out, rows.Err()
}

// RevokeRegistrationToken deletes a token. Registrations that had passed
// the token stage but not finished are refused.
func (a *Accounts) RevokeRegistrationToken(ctx context.Context, token string) error {
	return a.db.Write(ctx, func(tx storage.Tx) error {
		res, err := tx.Exec(ctx, `DELETE FROM registration_tokens WHERE token = $1`, token)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return mxerr.New(mxerr.NotFound, "no such registration token")
		}
		return nil
	})
}

func containsByte(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}
